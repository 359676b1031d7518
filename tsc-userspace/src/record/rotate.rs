//! A recording cut into pieces (`--rotate-size`, `--rotate-every` with
//! `--record DIR`): `DIR/0001/`, `DIR/0002/`, ..., each a whole recording
//! directory (its own `host.dat`, guest files, `offsets.jsonl`,
//! `trace.perfetto-trace`, README and `spill/`) that trace-cmd,
//! KernelShark and Perfetto open on their own.
//!
//! A piece ends at a page boundary: before the first page once its spilled
//! bytes reached the size or its age the period. The next piece starts
//! with every stream still open (the host's, each connected guest's) and
//! every vCPU's epochs so far, so its files carry their own headers,
//! formats and offset history; a guest file keeps its name across pieces.
//! A finished piece is assembled on a thread of its own, in order, so the
//! session does not wait for it; the oldest pieces beyond the kept number
//! are deleted after it, in the same order (never one still assembling).

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::Instant,
};

use crate::output::rotate::{PieceKind, PieceSignal, Pieces, RotatePolicy, piece_number};

/// Work on finished pieces, done in order.
enum Job {
    Assemble(PathBuf),
    Delete(u64),
}

/// The rotation state of a recording.
pub(super) struct Rotation {
    pieces: Pieces,
    policy: RotatePolicy,
    /// The piece being written.
    pub(super) n: u64,
    bytes: u64,
    pages: u64,
    opened: Instant,
    signal: PieceSignal,
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl Rotation {
    /// Rotation of `base` from the piece after those already there.
    pub(super) fn new(base: &Path, policy: RotatePolicy) -> std::io::Result<Self> {
        let pieces = Pieces::new(base, PieceKind::Dir);
        let n = pieces.next_number()?;
        let (tx, rx) = mpsc::channel::<Job>();
        let worker_pieces = pieces.clone();
        let worker = std::thread::Builder::new()
            .name("record-pieces".into())
            .spawn(move || {
                for job in rx {
                    run(&worker_pieces, job);
                }
            })?;
        Ok(Self {
            pieces,
            policy,
            n,
            bytes: 0,
            pages: 0,
            opened: Instant::now(),
            signal: PieceSignal::default(),
            jobs: Some(tx),
            worker: Some(worker),
        })
    }

    /// The current piece's directory.
    pub(super) fn dir(&self) -> PathBuf {
        self.pieces.path(self.n)
    }

    /// What writers following the pieces watch.
    pub(super) fn signal(&self) -> PieceSignal {
        self.signal.clone()
    }

    /// The pieces' naming.
    pub(super) fn pieces(&self) -> &Pieces {
        &self.pieces
    }

    /// Whether the current piece is done.
    pub(super) fn due(&self) -> bool {
        self.policy
            .due(self.pages, self.bytes, self.opened.elapsed())
    }

    /// A page of `len` bytes went into the current piece.
    pub(super) fn spilled(&mut self, len: usize) {
        self.pages += 1;
        self.bytes += len as u64;
    }

    /// The current piece is ready: announce it, delete beyond those kept.
    pub(super) fn started(&mut self) {
        self.signal.set(self.n);
        match self.pieces.existing() {
            Ok(existing) => {
                for n in self.policy.to_delete(&existing) {
                    self.send(Job::Delete(n));
                }
            }
            Err(e) => tracing::warn!("listing {}: {e}", self.pieces.base().display()),
        }
    }

    /// The current piece is finished: assemble it (later, in order) and
    /// move on to the next number.
    pub(super) fn next(&mut self) -> PathBuf {
        self.send(Job::Assemble(self.dir()));
        self.n += 1;
        self.bytes = 0;
        self.pages = 0;
        self.opened = Instant::now();
        self.dir()
    }

    /// Waits for every finished piece to be assembled (and the old ones
    /// deleted).
    pub(super) fn wait(&mut self) {
        self.jobs = None;
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            tracing::error!("assembling the recording's pieces panicked");
        }
    }

    fn send(&self, job: Job) {
        let sent = self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            tracing::error!("the recording's pieces are no longer being assembled");
        }
    }
}

fn run(pieces: &Pieces, job: Job) {
    match job {
        Job::Assemble(dir) => match super::assemble(&dir) {
            Ok(summary) => super::readme::log_summary(&summary),
            Err(e) => tracing::error!(
                "assembling the piece {}: {e} (its pages are in its spill/; try `tsc-tracer record-finish {}`)",
                dir.display(),
                dir.display()
            ),
        },
        Job::Delete(n) => match pieces.delete(n) {
            Ok(()) => tracing::info!(
                "deleted {}: beyond the pieces kept",
                pieces.path(n).display()
            ),
            Err(e) => tracing::warn!("deleting {}: {e}", pieces.path(n).display()),
        },
    }
}

/// Whether everything in `base` is a piece (so a new run may continue it).
pub(super) fn only_pieces(base: &Path) -> bool {
    std::fs::read_dir(base).map_or(true, |entries| {
        entries.flatten().all(|e| {
            e.file_name().to_str().and_then(piece_number).is_some()
                && e.file_type().is_ok_and(|t| t.is_dir())
        })
    })
}
