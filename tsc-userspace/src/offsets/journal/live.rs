//! The journal as a live session uses it: restore what a previous session
//! wrote, then record every batch of offset events.

use super::{
    JournalError, JournalOptions, JournalRecord, JournalWriter, Restore, reader, record::Boundary,
};
use crate::{clock::Clock, offsets::OffsetEvent, process::ProcessId};

/// Reads the journal and keeps the records of the VMs that still run
/// (same pid and start time), logging what was damaged and how much
/// comes back.
pub fn restore(options: &JournalOptions) -> Result<Restore, JournalError> {
    let contents = reader::read(
        &options.path,
        options.max_file_bytes.max(super::MIN_FILE_BYTES),
    )?;
    contents.report();
    let restore = Restore::of(contents.records(), |id: ProcessId| id.is_alive());
    let (records, ..) = contents.counts();
    if records > 0 {
        tracing::info!(
            "offset journal {}: restored {} records ({} vCPUs) of {} VM(s) still running; dropped {} VM(s) that are gone",
            options.path.display(),
            restore.records.len(),
            restore.vcpus(),
            restore.alive.len(),
            restore.gone
        );
    }
    Ok(restore)
}

/// Appends each batch of offset events at the boundaries a session
/// places them at. A write that fails is said once and journaling stops:
/// the session itself goes on.
pub struct LiveJournal {
    writer: Option<JournalWriter>,
    batch: Vec<JournalRecord>,
}

impl LiveJournal {
    /// Opens the journal (`None`: journaling is off).
    pub fn open(options: Option<JournalOptions>) -> Result<Self, JournalError> {
        let writer = match options {
            Some(options) => {
                let (writer, torn) = match JournalWriter::open(options) {
                    Err(err @ JournalError::Locked(_)) => {
                        tracing::warn!("{err}; this one does not journal offsets");
                        return Ok(Self {
                            writer: None,
                            batch: Vec::new(),
                        });
                    }
                    other => other?,
                };
                if let Some(t) = torn {
                    tracing::warn!(
                        "offset journal {}: cut a torn tail of {} bytes (a writer stopped mid-record)",
                        writer.path().display(),
                        t.bytes
                    );
                }
                tracing::info!("journaling offsets to {}", writer.path().display());
                Some(writer)
            }
            None => None,
        };
        Ok(Self {
            writer,
            batch: Vec::new(),
        })
    }

    /// True while records are written.
    pub fn is_on(&self) -> bool {
        self.writer.is_some()
    }

    /// Records `events`, received at host TSC `now`.
    pub fn record(&mut self, events: &[OffsetEvent], clock: &Clock, now: u64) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        self.batch.clear();
        self.batch.extend(events.iter().map(|e| JournalRecord {
            event: e.clone(),
            boundary: Boundary::of(e, clock, now),
        }));
        if let Err(err) = writer.append(&self.batch) {
            tracing::warn!("{err}; offsets are no longer journaled");
            self.writer = None;
        }
    }
}
