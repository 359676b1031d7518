//! A live session in a task of the test's runtime, writing JSON lines into
//! a buffer the test reads: how the session tests drive `Session`.

use std::time::Duration;

use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};
use tsc_userspace::{
    ebpf::LoadOptions,
    ingest::SockAddr,
    output::{self, ClockMode, FlushPolicy, OutputFormat},
    session::{Session, SessionOptions, Summary, VmSpec},
    wire::Endpoint,
};

use super::SharedBuf;

/// Options for a test session: the given VMs, a loopback listener on a
/// port the kernel picks, a 300 ms window, no pinned map (tests run beside
/// a `tsc-tracer offsets --follow`), no offset journal.
pub fn options(vms: Vec<VmSpec>) -> SessionOptions {
    SessionOptions {
        listen: vec!["tcp:127.0.0.1:0".parse().expect("an endpoint")],
        vms,
        window: Duration::from_millis(300),
        status_line: false,
        load: LoadOptions {
            pin_path: None,
            ..Default::default()
        },
        // Never the system's journal (/var/lib/tsc-tracer) from a test; a
        // test about the journal sets its own temporary path.
        journal: None,
        ..SessionOptions::default()
    }
}

/// A session running in a task, stopped by [`Running::finish`].
pub struct Running {
    /// Where its agents connect.
    pub endpoint: Endpoint,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Summary>,
    out: SharedBuf,
}

/// Runs `session` (JSON lines, host TSC timestamps) until finished.
pub fn run(session: Session) -> Running {
    let SockAddr::Tcp(addr) = session.local_addrs()[0] else {
        panic!("tcp listener")
    };
    let endpoint = Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: addr.port(),
    };
    let out = SharedBuf::default();
    let writer_out = out.clone();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut writer = output::writer(
            OutputFormat::Json,
            ClockMode::Tsc,
            FlushPolicy::Batch,
            writer_out,
        );
        session
            .run(writer.as_mut(), async {
                let _ = stopped.await;
            })
            .await
            .expect("session runs")
    });
    Running {
        endpoint,
        stop,
        task,
        out,
    }
}

impl Running {
    /// Stops the session; its summary and every event it wrote.
    pub async fn finish(self) -> (Summary, Vec<Value>) {
        let _ = self.stop.send(());
        let summary = self.task.await.expect("session task");
        (summary, self.out.json_lines())
    }

    /// Waits until the events written so far satisfy `done`; fails saying
    /// `what` never happened.
    pub async fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&[Value]) -> bool) {
        let out = self.out.clone();
        super::wait_for(what, within, || {
            done(&out.complete_json_lines()).then_some(())
        })
        .await;
    }
}
