//! A hostile peer connects to the session every so often, by turns: garbage
//! bytes, a Hello frame whose body is garbage, a half-open connection (a
//! partial frame header, then silence, held past the session's handshake
//! limit). Each must end only its own connection.

use std::{
    collections::VecDeque,
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tsc_userspace::wire::{MAGIC, VERSION};

/// How long a half-open connection is held: longer than the session's
/// handshake limit (10 s), so the session is the one to end it.
const HOLD: Duration = Duration::from_secs(12);
/// How long a peer waits for the session to close its connection.
const ANSWER: Duration = Duration::from_secs(5);
/// The Hello frame type (`wire::FrameType::Hello`).
const HELLO: u16 = 1;

/// What the hostile peers did.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostileCounts {
    pub connections: u64,
    /// Connections the session closed (EOF seen) in time.
    pub closed_by_session: u64,
    /// Half-open connections still held (not yet due) when it stopped.
    pub held_at_end: u64,
    /// Connections that could not even be made.
    pub refused: u64,
}

#[derive(Default)]
struct Shared {
    connections: AtomicU64,
    closed: AtomicU64,
    held: AtomicU64,
    refused: AtomicU64,
}

/// The hostile peers' thread.
pub struct Hostile {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Hostile {
    /// One hostile connection to `port` every `every`.
    pub fn start(port: u16, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let (s, sh) = (stop.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("soak-hostile".into())
            .spawn(move || run(port, every, &s, &sh))
            .expect("spawning the hostile peer");
        Self {
            stop,
            shared,
            thread: Some(thread),
        }
    }

    /// Stops (closing the half-open connections still held).
    pub fn finish(mut self) -> HostileCounts {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().expect("the hostile peer panicked");
        }
        HostileCounts {
            connections: self.shared.connections.load(Ordering::Acquire),
            closed_by_session: self.shared.closed.load(Ordering::Acquire),
            held_at_end: self.shared.held.load(Ordering::Acquire),
            refused: self.shared.refused.load(Ordering::Acquire),
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(port: u16, every: Duration, stop: &AtomicBool, shared: &Arc<Shared>) {
    let mut held: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    let mut peers: Vec<JoinHandle<()>> = Vec::new();
    let mut turn = 0u64;
    while !stop.load(Ordering::Acquire) {
        let next = Instant::now() + every;
        turn += 1;
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(_) => {
                shared.refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(stream) => {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                match turn % 3 {
                    0 => {
                        let mut s = stream;
                        let _ = s.write_all(&[0, 0, 0]);
                        held.push_back((Instant::now(), s));
                    }
                    kind => {
                        let bytes = if kind == 1 {
                            garbage(turn)
                        } else {
                            bad_hello(turn)
                        };
                        let sh = shared.clone();
                        peers.push(std::thread::spawn(move || {
                            send_and_wait(stream, &bytes, &sh)
                        }));
                    }
                }
            }
        }
        while held.front().is_some_and(|(at, _)| at.elapsed() >= HOLD) {
            if let Some((_, s)) = held.pop_front() {
                expect_closed(s, shared);
            }
        }
        peers.retain(|p| !p.is_finished());
        while !stop.load(Ordering::Acquire) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    shared.held.store(held.len() as u64, Ordering::Release);
    drop(held);
    for p in peers {
        let _ = p.join();
    }
}

/// Bytes that are no frame: a header claiming an absurd length and type.
fn garbage(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A Hello frame whose body starts right (the magic and this version)
/// and goes on with garbage.
fn bad_hello(seed: u64) -> Vec<u8> {
    let mut body = MAGIC.to_vec();
    body.extend_from_slice(&VERSION.to_le_bytes());
    body.extend(std::iter::repeat_n(0xff_u8, 32 + (seed % 7) as usize));
    let mut b = Vec::with_capacity(8 + body.len());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(&HELLO.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&body);
    b
}

fn send_and_wait(mut s: TcpStream, bytes: &[u8], shared: &Shared) {
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    expect_closed(s, shared);
}

/// Reads until the session closes the connection (counted) or `ANSWER`.
fn expect_closed(mut s: TcpStream, shared: &Shared) {
    let _ = s.set_read_timeout(Some(ANSWER));
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                shared.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                shared.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => return,
        }
    }
}
