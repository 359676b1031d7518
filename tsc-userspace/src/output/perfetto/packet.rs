//! Packets on the wire, and the per-machine, per-CPU bundles events wait in
//! until the next flush.

use std::collections::HashMap;

use super::proto::{
    BUNDLE_EVENT_FIELD, Data, FtraceEvent, FtraceEventBundle, TRACE_PACKET_FIELD, TracePacket,
};
use crate::merge::SourceId;

/// A packet of machine `machine_id` (`None`: the host) holding `data`.
/// Each machine is its own packet sequence (id `1 + machine_id`): packets
/// of one machine share no state with another's.
pub(super) fn packet(machine_id: Option<u32>, data: Data) -> TracePacket {
    TracePacket {
        timestamp: None,
        trusted_packet_sequence_id: Some(1 + machine_id.unwrap_or(0)),
        machine_id,
        data: Some(data),
    }
}

/// Appends `packet` as one `Trace.packet` field: key, length, message. A
/// file of these is a `Trace`, and so is any prefix ending at one's end.
pub(super) fn encode(out: &mut Vec<u8>, packet: &TracePacket) {
    prost::encoding::message::encode(TRACE_PACKET_FIELD, packet, out);
}

/// One open bundle: the events of one CPU of one source since the last
/// flush.
#[derive(Debug)]
struct Open {
    machine_id: Option<u32>,
    cpu: u32,
    events: Vec<FtraceEvent>,
}

/// The open bundles. Their vectors are kept across flushes (emptied, not
/// freed), so a steady stream of events reuses them.
#[derive(Debug, Default)]
pub(super) struct Bundles {
    index: HashMap<(SourceId, u32), usize>,
    open: Vec<Open>,
    held: usize,
    /// The held events' encoded bytes (each as a repeated field, without
    /// the bundles' and packets' own few bytes of framing).
    held_bytes: usize,
}

impl Bundles {
    /// Adds `event` to the bundle of `source`'s `cpu`.
    pub(super) fn push(
        &mut self,
        source: SourceId,
        machine_id: Option<u32>,
        cpu: u32,
        event: FtraceEvent,
    ) {
        let open = &mut self.open;
        let i = *self.index.entry((source, cpu)).or_insert_with(|| {
            open.push(Open {
                machine_id,
                cpu,
                events: Vec::new(),
            });
            open.len() - 1
        });
        self.held_bytes += prost::encoding::message::encoded_len(BUNDLE_EVENT_FIELD, &event);
        self.open[i].events.push(event);
        self.held += 1;
    }

    /// Events held.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// The held events' encoded size: what a drain would add, less a few
    /// bytes of framing per bundle.
    pub(super) fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Every non-empty bundle as a packet to `out`; all are empty after.
    pub(super) fn drain(&mut self, out: &mut Vec<u8>) {
        for open in &mut self.open {
            if open.events.is_empty() {
                continue;
            }
            let bundle = FtraceEventBundle {
                cpu: Some(open.cpu),
                event: std::mem::take(&mut open.events),
            };
            let mut p = packet(open.machine_id, Data::FtraceEvents(bundle));
            encode(out, &p);
            // Hand the vector back for reuse.
            if let Some(Data::FtraceEvents(b)) = p.data.take() {
                open.events = b.event;
                open.events.clear();
            }
        }
        self.held = 0;
        self.held_bytes = 0;
    }
}
