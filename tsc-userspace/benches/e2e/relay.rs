//! A loopback TCP relay between the agent and the session that keeps a
//! copy of everything the agent sent and when each piece was handed to the
//! session's socket. That gives, per event, its arrival time at the session
//! and the exact pages the session received (for the peer's guest.dat).

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use crate::measure::{mono_ns, thread_cpu_seconds};

/// What the agent sent, as the session received it.
#[derive(Debug, Default)]
pub struct Capture {
    /// Every byte, in order.
    pub bytes: Vec<u8>,
    /// After each write to the session's socket returned: bytes handed
    /// over so far and the CLOCK_MONOTONIC time.
    pub writes: Vec<(u64, u64)>,
    /// CPU seconds the relay's two threads used.
    pub cpu_seconds: f64,
}

impl Capture {
    /// When the byte at `offset` reached the session's socket.
    pub fn arrival(&self, offset: u64) -> Option<u64> {
        let i = self.writes.partition_point(|&(end, _)| end <= offset);
        self.writes.get(i).map(|&(_, t)| t)
    }
}

/// A relay accepting one agent.
pub struct Relay {
    /// Where the agent connects.
    pub port: u16,
    /// Set once the session has answered (HelloAck): the agent is bound.
    pub acked: Arc<AtomicBool>,
    thread: JoinHandle<Capture>,
}

impl Relay {
    /// Listens on loopback and relays the first connection to `session`.
    pub fn start(session: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
        let port = listener.local_addr().expect("relay address").port();
        let acked = Arc::new(AtomicBool::new(false));
        let flag = acked.clone();
        let thread = std::thread::Builder::new()
            .name("e2e-relay".into())
            .spawn(move || serve(&listener, session, &flag))
            .expect("spawning the relay");
        Relay {
            port,
            acked,
            thread,
        }
    }

    /// Waits for both directions to close and returns the capture.
    pub fn finish(self) -> Capture {
        self.thread.join().expect("the relay panicked")
    }
}

fn serve(listener: &TcpListener, session: SocketAddr, acked: &Arc<AtomicBool>) -> Capture {
    let (mut agent, _) = listener.accept().expect("accepting the agent");
    let mut upstream = TcpStream::connect(session).expect("connecting to the session");
    for s in [&agent, &upstream] {
        s.set_nodelay(true).expect("TCP_NODELAY");
    }
    let back = {
        let (mut from, mut to) = (
            upstream.try_clone().expect("clone"),
            agent.try_clone().expect("clone"),
        );
        let acked = acked.clone();
        std::thread::Builder::new()
            .name("e2e-relay".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    acked.store(true, Ordering::Release);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
                thread_cpu_seconds()
            })
            .expect("spawning the relay")
    };
    let mut capture = Capture::default();
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n @ 1..) = agent.read(&mut buf) {
        if upstream.write_all(&buf[..n]).is_err() {
            break;
        }
        let now = mono_ns();
        capture.bytes.extend_from_slice(&buf[..n]);
        capture.writes.push((capture.bytes.len() as u64, now));
    }
    let _ = upstream.shutdown(Shutdown::Write);
    capture.cpu_seconds = thread_cpu_seconds() + back.join().unwrap_or(0.0);
    capture
}
