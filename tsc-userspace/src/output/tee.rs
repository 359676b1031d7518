//! The live output and a recording's copy of it, from the same events.

use std::io;

use super::{EventWriter, WriteContext};
use crate::merge::MergeItem;

/// Writes every item to the live writer and to a recording's writer. The
/// recording is a copy: when it fails (a full disk, a vanished directory)
/// it is dropped with one message and the live output goes on.
pub struct Tee {
    live: Box<dyn EventWriter + Send>,
    copy: Option<(String, Box<dyn EventWriter + Send>)>,
}

impl Tee {
    /// `live`, and `copy` (named `what` in the message should it fail).
    pub fn new(
        live: Box<dyn EventWriter + Send>,
        what: impl Into<String>,
        copy: Box<dyn EventWriter + Send>,
    ) -> Self {
        Self {
            live,
            copy: Some((what.into(), copy)),
        }
    }

    /// Whether the copy is still being written.
    pub fn copying(&self) -> bool {
        self.copy.is_some()
    }

    fn on_copy(&mut self, op: impl FnOnce(&mut dyn EventWriter) -> io::Result<()>) {
        if let Some((what, copy)) = &mut self.copy
            && let Err(err) = op(copy.as_mut())
        {
            tracing::error!("{what}: {err}; it stops here, the live output goes on");
            self.copy = None;
        }
    }
}

impl EventWriter for Tee {
    fn write(&mut self, ctx: &WriteContext<'_>, item: &MergeItem) -> io::Result<()> {
        self.on_copy(|copy| copy.write(ctx, item));
        self.live.write(ctx, item)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.on_copy(|copy| copy.flush());
        self.live.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::{
        merge::{EventData, SourceInfo, SourceKind, Sources},
        tracefs::FormatSet,
    };

    /// Counts writes; fails from the `fail_at`-th on.
    struct Counting {
        writes: Arc<std::sync::Mutex<u32>>,
        fail_at: u32,
    }

    impl EventWriter for Counting {
        fn write(&mut self, _: &WriteContext<'_>, _: &MergeItem) -> io::Result<()> {
            let mut n = self.writes.lock().unwrap();
            *n += 1;
            if *n >= self.fail_at {
                return Err(io::Error::other("disk full"));
            }
            Ok(())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_copy_stops_alone_and_the_live_output_gets_everything() {
        let mut sources = Sources::new();
        let host = sources
            .add(SourceInfo {
                kind: SourceKind::Host,
                name: "host".into(),
                formats: Arc::new(FormatSet::new()),
                kernel_release: None,
            })
            .unwrap();
        let (live_n, copy_n) = Default::default();
        let mut tee = Tee::new(
            Box::new(Counting {
                writes: Arc::clone(&live_n),
                fail_at: u32::MAX,
            }),
            "the recording",
            Box::new(Counting {
                writes: Arc::clone(&copy_n),
                fail_at: 3,
            }),
        );
        let to_ns = |t: u64| t;
        let ctx = WriteContext {
            sources: &sources,
            clock: &to_ns,
            boottime: None,
        };
        let item = MergeItem::host(
            host,
            0,
            1,
            EventData::from_bytes(Bytes::from_static(&[0; 8])),
        );
        for _ in 0..5 {
            tee.write(&ctx, &item).unwrap();
        }
        tee.flush().unwrap();
        assert_eq!(*live_n.lock().unwrap(), 5);
        assert_eq!(
            *copy_n.lock().unwrap(),
            3,
            "the copy is not written after it failed"
        );
        assert!(!tee.copying());
    }
}
