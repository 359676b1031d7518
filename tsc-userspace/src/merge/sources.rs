//! The registry of sources (the host, each guest agent): what they are
//! called, how to decode their events, and their pid -> command name table.

use std::{collections::HashMap, sync::Arc};

use super::{MergeError, MergeItem, SourceId};
use crate::tracefs::{Event, FormatSet};

/// The host, or which VM a guest source belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// The host's own tracefs instance.
    Host,
    /// A guest agent bound to a VM.
    Guest {
        /// The VM's name as output shows it (`--vm PID=NAME`, or one the
        /// session made up, e.g. `vm<PID>`).
        vm_name: String,
        /// The VMM process (tgid).
        vm_pid: u32,
    },
}

/// What the session says about a source when it adds it.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Host or guest.
    pub kind: SourceKind,
    /// How logs and status lines call it (e.g. the agent's address or
    /// host name); output uses `host` or the VM name instead.
    pub name: String,
    /// The formats its event records decode with.
    pub formats: Arc<FormatSet>,
    /// Its kernel's release (`uname -r`), when known: a guest's from its
    /// agent's Hello. `None` for the host (read where needed).
    pub kernel_release: Option<String>,
}

/// pid -> command name. Looked up for every event written, so hashed with
/// foldhash (a fraction of SipHash's cost, still seeded per map: pids come
/// from guests, which must not be able to choose colliding ones).
type Comms = HashMap<i32, String, foldhash::fast::RandomState>;

/// One registered source.
#[derive(Debug)]
pub struct Source {
    info: SourceInfo,
    comms: Comms,
}

impl Source {
    /// What the session said about it.
    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// Its event formats.
    pub fn formats(&self) -> &FormatSet {
        &self.info.formats
    }

    /// `host`, or the VM's name: the source column of text output.
    pub fn label(&self) -> &str {
        match &self.info.kind {
            SourceKind::Host => "host",
            SourceKind::Guest { vm_name, .. } => vm_name,
        }
    }

    /// The command name of `pid`, when known. Pid 0 is `<idle>` unless the
    /// table says otherwise (as `trace-cmd report` shows it).
    pub fn comm(&self, pid: i32) -> Option<&str> {
        match self.comms.get(&pid) {
            Some(c) => Some(c),
            None if pid == 0 => Some("<idle>"),
            None => None,
        }
    }

    /// Records `pid`'s command name. Allocates only when the name is new
    /// or changed, so it can be called for every sched event.
    pub fn set_comm(&mut self, pid: i32, comm: &str) {
        set_comm(&mut self.comms, pid, comm);
    }

    /// Learns command names from an event that carries them
    /// ([`Event::named_tasks`]).
    pub fn learn_comms(&mut self, event: &Event<'_>) {
        learn_comms(&mut self.comms, event);
    }
}

fn set_comm(comms: &mut Comms, pid: i32, comm: &str) {
    match comms.get_mut(&pid) {
        Some(known) if known == comm => {}
        Some(known) => {
            known.clear();
            known.push_str(comm);
        }
        None => {
            comms.insert(pid, comm.to_owned());
        }
    }
}

fn learn_comms(comms: &mut Comms, event: &Event<'_>) {
    for (pid, comm) in event.named_tasks() {
        // A non-UTF-8 comm is stored lossily.
        set_comm(comms, pid, &String::from_utf8_lossy(comm));
    }
}

/// Every source of a session, by [`SourceId`].
///
/// Items refer to their source by id, and the writers look the source up
/// when they write an item, so remove a source only after its last item
/// has been written: [`Merger::close_source`](super::Merger::close_source)
/// it, and remove it once [`Merger::held_of`](super::Merger::held_of) says
/// nothing of it is held. (A writer that meets an item of an unknown
/// source still writes it, labelled `?ID`.)
#[derive(Debug, Default)]
pub struct Sources {
    /// Indexed by id; ids are never reused, so removed ones stay `None`.
    entries: Vec<Option<Source>>,
}

impl Sources {
    /// No sources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a source and gives it a new id.
    pub fn add(&mut self, info: SourceInfo) -> Result<SourceId, MergeError> {
        let id = u32::try_from(self.entries.len()).map_err(|_| MergeError::TooManySources)?;
        self.entries.push(Some(Source {
            info,
            comms: Comms::default(),
        }));
        Ok(SourceId(id))
    }

    /// Forgets a source; `None` if it was not there.
    pub fn remove(&mut self, id: SourceId) -> Option<SourceInfo> {
        self.entries
            .get_mut(id.0 as usize)?
            .take()
            .map(|source| source.info)
    }

    /// The source with this id.
    pub fn get(&self, id: SourceId) -> Option<&Source> {
        self.entries.get(id.0 as usize)?.as_ref()
    }

    /// The source with this id, to update its command names.
    pub fn get_mut(&mut self, id: SourceId) -> Option<&mut Source> {
        self.entries.get_mut(id.0 as usize)?.as_mut()
    }

    /// Records `pid`'s command name in `source`'s table; false when there
    /// is no such source.
    pub fn set_comm(&mut self, source: SourceId, pid: i32, comm: &str) -> bool {
        self.get_mut(source)
            .map(|s| s.set_comm(pid, comm))
            .is_some()
    }

    /// Records many command names (e.g. a parsed `saved_cmdlines`).
    pub fn set_comms<'a>(
        &mut self,
        source: SourceId,
        comms: impl IntoIterator<Item = (i32, &'a str)>,
    ) -> bool {
        let Some(s) = self.get_mut(source) else {
            return false;
        };
        for (pid, comm) in comms {
            s.set_comm(pid, comm);
        }
        true
    }

    /// The command name of `pid` in `source`.
    pub fn comm(&self, source: SourceId, pid: i32) -> Option<&str> {
        self.get(source)?.comm(pid)
    }

    /// Learns command names from `item`'s fields (see
    /// [`Source::learn_comms`]). Call it for each item before writing it,
    /// so that a task's first event after a `sched_switch` into it has its
    /// name.
    pub fn learn_comms(&mut self, item: &MergeItem) {
        let Some(entry) = self
            .entries
            .get_mut(item.source.0 as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        if let Ok(event) = entry.info.formats.event(item.data.payload()) {
            learn_comms(&mut entry.comms, &event);
        }
    }

    /// Every source with its id.
    pub fn iter(&self) -> impl Iterator<Item = (SourceId, &Source)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((SourceId(i as u32), s.as_ref()?)))
    }
}
