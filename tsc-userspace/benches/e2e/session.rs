//! The session under test, in this process on threads of its own (all
//! named [`THREAD`], so their CPU time can be told from the bench's).

use std::{net::SocketAddr, path::Path, sync::mpsc, thread::JoinHandle, time::Duration};

use tokio::sync::oneshot;
use tsc_userspace::{
    ingest::SockAddr,
    output::{self, ClockMode, FlushPolicy, OutputFormat},
    session::{Session, SessionOptions, Summary, VmSpec},
    tracefs::EventName,
    wire::Endpoint,
};

use crate::{
    measure::cpu_seconds,
    output::{TimedFile, Writes},
};

/// Name of every thread the session runs on.
pub const THREAD: &str = "e2e-session";

/// A running session.
pub struct Running {
    /// Where agents connect.
    pub addr: SocketAddr,
    /// Host TSC frequency, as the session calibrated it.
    pub tsc_hz: u64,
    /// When each write to the output file returned.
    pub writes: Writes,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<(Summary, f64)>,
}

/// How the session ended.
pub struct Ended {
    pub summary: Summary,
    /// CPU seconds of the session's threads, since it started.
    pub cpu_seconds: f64,
}

/// Starts a session like `tsc-tracer host --listen tcp:127.0.0.1:0 --vm
/// VM=vm1 --host-events EVENTS --window-ms W --format F -o OUT` (batch
/// flush).
pub fn start(
    vm: u32,
    host_events: &[EventName],
    window: Duration,
    format: OutputFormat,
    out: &Path,
) -> Running {
    let options = SessionOptions {
        listen: vec!["tcp:127.0.0.1:0".parse::<Endpoint>().expect("endpoint")],
        vms: vec![format!("{vm}=vm1").parse::<VmSpec>().expect("vm spec")],
        host_events: Some(host_events.to_vec()),
        window,
        host_flush: crate::flush_ms().map_or(
            tsc_userspace::session::host::DEFAULT_FLUSH,
            Duration::from_millis,
        ),
        ..SessionOptions::default()
    };
    let (file, writes) = TimedFile::create(out);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(THREAD.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(THREAD)
                .enable_all()
                .build()
                .expect("session runtime");
            runtime.block_on(async move {
                let mut session = Session::start(options).await.expect("starting the session");
                // E2E_RECORD=DIR: also `--record DIR/runN` (the recording's cost).
                if let Ok(dir) = std::env::var("E2E_RECORD") {
                    use std::sync::atomic::{AtomicUsize, Ordering};
                    static RUN: AtomicUsize = AtomicUsize::new(0);
                    let dir =
                        Path::new(&dir).join(format!("run{}", RUN.fetch_add(1, Ordering::Relaxed)));
                    let recorder = tsc_userspace::record::Recorder::create(&dir, false)
                        .expect("E2E_RECORD: a new or empty directory");
                    session.record_into(recorder);
                }
                let SockAddr::Tcp(addr) = session.local_addrs()[0] else {
                    unreachable!("a TCP listener")
                };
                let tsc_hz = session.clock().tsc_khz() * 1000;
                ready_tx.send((addr, tsc_hz)).expect("bench waiting");
                let mut writer = output::writer(format, ClockMode::Ns, FlushPolicy::Batch, file);
                let summary = session
                    .run(writer.as_mut(), async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("the session failed");
                (summary, cpu_seconds(std::process::id(), Some(THREAD)))
            })
        })
        .expect("spawning the session");
    let (addr, tsc_hz) = ready_rx.recv().expect("the session did not start");
    Running {
        addr,
        tsc_hz,
        writes,
        stop,
        thread,
    }
}

impl Running {
    /// CPU seconds of the session's threads so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(std::process::id(), Some(THREAD))
    }

    /// Stops it (flushing everything held) and waits for it.
    pub fn stop(self) -> Ended {
        let _ = self.stop.send(());
        let (summary, cpu_seconds) = self.thread.join().expect("the session panicked");
        Ended {
            summary,
            cpu_seconds,
        }
    }
}
