//! Building the Hello from the agent's trace instance.

use crate::{
    tracefs::{EventFormat as ParsedFormat, EventName, Instance},
    wire::{EventFormat, Hello, TRACE_CLOCK, TscSample, VERSION},
};

use super::{AgentError, sysinfo};

/// Samples the Hello carries, and how many are taken to pick them from.
const HELLO_SAMPLES: usize = 4;
const HELLO_SAMPLE_TRIES: usize = 32;

/// Everything in the Hello except the TSC samples, which are fresh on
/// every connection.
pub(super) fn hello(instance: &Instance, name: Option<&str>) -> Result<Hello, AgentError> {
    let hostname = sysinfo::hostname()?;
    let cpus = sysinfo::cpu_apic_ids(&instance.cpus()?)?;
    let print = EventName::new("ftrace", "print");
    let mut events = Vec::new();
    for event in instance.events().iter().chain([&print]) {
        let format = instance.event_format(event)?;
        // Only the id is needed; the host parses formats for real.
        let id = ParsedFormat::parse(&event.system, &format)?.id;
        events.push(EventFormat {
            system: event.system.clone(),
            name: event.name.clone(),
            id: id.into(),
            format,
        });
    }
    Ok(Hello {
        version: VERSION,
        agent_name: name.map_or_else(|| hostname.clone(), str::to_owned),
        hostname,
        kernel_release: sysinfo::kernel_release()?,
        trace_clock: TRACE_CLOCK.to_owned(),
        page_size: u32::try_from(instance.page_size()?).unwrap_or(u32::MAX),
        cpus,
        header_page: instance.header_page()?,
        header_event: instance.header_event()?,
        events,
        samples: Vec::new(),
    })
}

/// The Hello with fresh TSC samples.
pub(super) fn with_samples(hello: &Hello) -> Hello {
    Hello {
        samples: TscSample::take_best(HELLO_SAMPLES, HELLO_SAMPLE_TRIES),
        ..hello.clone()
    }
}
