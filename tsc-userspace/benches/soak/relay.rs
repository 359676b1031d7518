//! A loopback TCP relay between an agent and the session that can cut
//! every connection through it at once, as a network failure would: the
//! agent reconnects by itself (`--retry`).

use std::{
    io,
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

/// A running relay.
pub struct Relay {
    /// Where the agent connects.
    pub port: u16,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relays connections on a new loopback port to `upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
        let port = listener.local_addr().expect("relay address").port();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, a, s) = (conns.clone(), accepted.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("soak-relay".into())
            .spawn(move || accept_loop(&listener, upstream, &c, &a, &s))
            .expect("spawning the relay");
        Self {
            port,
            conns,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Acquire)
    }

    /// Cuts every open connection (both directions, both sides).
    pub fn cut(&self) {
        for s in self.conns.lock().expect("relay lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.cut();
    }
}

fn accept_loop(
    listener: &TcpListener,
    upstream: u16,
    conns: &Mutex<Vec<TcpStream>>,
    accepted: &AtomicU64,
    stop: &AtomicBool,
) {
    for agent in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(agent) = agent else { continue };
        let Ok(session) = TcpStream::connect(("127.0.0.1", upstream)) else {
            continue;
        };
        if let Err(e) = pipe(agent, session, conns) {
            eprintln!("soak: relay: {e}");
        }
        accepted.fetch_add(1, Ordering::AcqRel);
    }
}

/// Copies both ways on two threads; either side's end ends both.
fn pipe(agent: TcpStream, session: TcpStream, conns: &Mutex<Vec<TcpStream>>) -> io::Result<()> {
    for s in [&agent, &session] {
        s.set_nodelay(true)?;
    }
    {
        let mut conns = conns.lock().expect("relay lock");
        conns.push(agent.try_clone()?);
        conns.push(session.try_clone()?);
    }
    for (mut from, mut to) in [(agent.try_clone()?, session.try_clone()?), (session, agent)] {
        std::thread::Builder::new()
            .name("soak-relay".into())
            .spawn(move || {
                let _ = io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            })?;
    }
    Ok(())
}
