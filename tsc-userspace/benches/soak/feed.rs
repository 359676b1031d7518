//! A paced marker writer that can be detached from one agent's
//! `trace_marker` and attached to the next one's: markers not written while
//! detached are skipped, not caught up (they were never sent).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{load, measure::mono_ns};

struct Shared {
    file: Mutex<Option<File>>,
    /// The next sequence number to write.
    next: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// A writer thread with its own range of sequence numbers.
pub struct Feed {
    /// The first sequence number.
    pub base: u64,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Feed {
    /// Starts writing `rate` markers/s numbered from `base`, once attached.
    pub fn start(name: &str, base: u64, rate: u64) -> Self {
        let shared = Arc::new(Shared {
            file: Mutex::new(None),
            next: AtomicU64::new(base),
            failed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_loop(&s, rate))
            .expect("spawning a feed");
        Self {
            base,
            shared,
            thread: Some(thread),
        }
    }

    /// Writes into `marker` from now on.
    pub fn attach(&self, marker: &Path) {
        let file = OpenOptions::new()
            .write(true)
            .open(marker)
            .expect("opening trace_marker");
        *self.shared.file.lock().expect("feed lock") = Some(file);
    }

    /// Stops writing and closes the marker file (so that its instance can
    /// be removed).
    pub fn detach(&self) {
        self.shared.file.lock().expect("feed lock").take();
    }

    /// The next number to be written: everything below was sent.
    pub fn next(&self) -> u64 {
        self.shared.next.load(Ordering::Acquire)
    }

    /// Markers sent so far.
    pub fn sent(&self) -> u64 {
        self.next() - self.base
    }

    /// Writes that failed (those markers were not sent).
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Stops the thread.
    pub fn stop(&mut self) {
        self.detach();
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("a feed panicked");
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bursts every millisecond, up to `rate` per second since the start less
/// what was skipped while detached.
fn write_loop(s: &Shared, rate: u64) {
    let start = Instant::now();
    let (mut written, mut skipped) = (0u64, 0u64);
    let mut line = Vec::with_capacity(64);
    while !s.stop.load(Ordering::Acquire) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        {
            let mut file = s.file.lock().expect("feed lock");
            let mut broken = false;
            match file.as_mut() {
                None => skipped = due.saturating_sub(written),
                Some(f) => {
                    while written + skipped < due {
                        let seq = s.next.load(Ordering::Relaxed);
                        load::marker_text(&mut line, seq, mono_ns());
                        if let Err(e) = f.write_all(&line) {
                            eprintln!("soak: writing marker {seq}: {e}; detached");
                            s.failed.fetch_add(1, Ordering::Relaxed);
                            broken = true;
                            skipped = due - written;
                            break;
                        }
                        written += 1;
                        s.next.store(seq + 1, Ordering::Release);
                    }
                }
            }
            if broken {
                file.take();
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
