//! The demo agent: a client of the real wire protocol that sends the toy
//! guest's readings as ring-buffer pages it builds itself.

use std::{collections::HashMap, time::Duration};

use futures::{SinkExt, StreamExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::{GUEST_COMM, GUEST_PID, Reading};
use crate::{
    agent::transport::{self, ConnectError, Transport},
    tracefs::{PageBuildError, PageBuilder, PageError, PageLayout},
    wire::{Endpoint, Frame, FrameCodec, Hello, Page, WireError},
};

/// Time the host has to answer the Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the demo agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoAgentError {
    /// The host could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A frame could not be sent or received.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The Hello's `header_page` does not parse.
    #[error("the Hello's header_page: {0}")]
    Layout(#[from] PageError),
    /// A reading could not be written into a page.
    #[error(transparent)]
    Page(#[from] PageBuildError),
    /// The host did not answer the Hello in time.
    #[error("the host did not answer the Hello within {0:?}")]
    HandshakeTimeout(Duration),
    /// The host refused the Hello.
    #[error("the host refused the demo agent: {0}")]
    Rejected(String),
    /// The host answered with something else than HelloAck or Reject.
    #[error("the host answered the Hello with {0}")]
    Unexpected(String),
    /// A reading names a vCPU the Hello does not map.
    #[error("reading {seq} comes from vCPU {vcpu}, which no guest CPU of the Hello runs on")]
    UnknownVcpu {
        /// The reading.
        seq: u32,
        /// Its vCPU.
        vcpu: u32,
    },
}

/// What the demo agent sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DemoReport {
    /// Readings sent as events.
    pub events: u64,
    /// Pages sent.
    pub pages: u64,
}

type Reader = FramedRead<ReadHalf<Box<dyn Transport>>, FrameCodec>;
type Writer = FramedWrite<WriteHalf<Box<dyn Transport>>, FrameCodec>;

/// A connected demo agent.
pub struct DemoAgent {
    reader: Reader,
    writer: Writer,
    /// vCPU id -> guest CPU.
    cpu_of: HashMap<u32, u32>,
    layout: PageLayout,
    connection_id: u64,
    report: DemoReport,
}

impl DemoAgent {
    /// Connects to `endpoint` (the agent's own transport), sends `hello`,
    /// waits for the host's answer, then sends the guest's command names.
    pub async fn connect(endpoint: &Endpoint, hello: Hello) -> Result<Self, DemoAgentError> {
        let layout = PageLayout::parse(&hello.header_page)?;
        let cpu_of = hello.cpus.iter().map(|c| (c.apic_id, c.cpu)).collect();
        let stream = transport::connect(endpoint).await?;
        let (rd, wr) = tokio::io::split(stream);
        let mut reader = FramedRead::new(rd, FrameCodec::default());
        let mut writer = FramedWrite::new(wr, FrameCodec::default());
        writer.send(Frame::Hello(Box::new(hello))).await?;
        let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next())
            .await
            .map_err(|_| DemoAgentError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?;
        let ack = match answer {
            Some(Ok(Frame::HelloAck(ack))) => ack,
            Some(Ok(Frame::Reject(reason))) => return Err(DemoAgentError::Rejected(reason)),
            Some(Ok(other)) => {
                return Err(DemoAgentError::Unexpected(
                    other.frame_type().name().to_owned(),
                ));
            }
            Some(Err(err)) => return Err(err.into()),
            None => return Err(DemoAgentError::Unexpected("a closed connection".into())),
        };
        *writer.encoder_mut() = FrameCodec::new(ack.max_body);
        writer
            .send(Frame::Cmdlines(format!("{GUEST_PID} {GUEST_COMM}\n")))
            .await?;
        Ok(Self {
            reader,
            writer,
            cpu_of,
            layout,
            connection_id: ack.connection_id,
            report: DemoReport::default(),
        })
    }

    /// The id the host gave this connection.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// Sends `readings` (in the order each vCPU took them) as events: one
    /// or more pages per guest CPU, each reading stamped with its own value.
    pub async fn send(&mut self, readings: &[Reading]) -> Result<(), DemoAgentError> {
        let mut builders: HashMap<u32, PageBuilder> = HashMap::new();
        let mut pages = Vec::new();
        for reading in readings {
            let cpu = *self
                .cpu_of
                .get(&reading.vcpu)
                .ok_or(DemoAgentError::UnknownVcpu {
                    seq: reading.seq,
                    vcpu: reading.vcpu,
                })?;
            let builder = builders
                .entry(cpu)
                .or_insert_with(|| PageBuilder::new(self.layout));
            let payload = reading.payload();
            if !builder.push(reading.guest_tsc, &payload)? {
                pages.push(page(cpu, 0, builder));
                builder.push(reading.guest_tsc, &payload)?;
            }
        }
        for (cpu, builder) in &mut builders {
            pages.push(page(*cpu, Page::FLAG_PARTIAL, builder));
        }
        for page in pages {
            self.writer.feed(Frame::Page(page)).await?;
            self.report.pages += 1;
        }
        SinkExt::<Frame>::flush(&mut self.writer).await?;
        self.report.events += readings.len() as u64;
        Ok(())
    }

    /// Says Bye and closes the connection.
    pub async fn bye(mut self) -> Result<DemoReport, DemoAgentError> {
        self.writer.send(Frame::Bye("demo done".into())).await?;
        SinkExt::<Frame>::close(&mut self.writer).await?;
        // The host closes its side once it has read the Bye.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, self.reader.next()).await
        {}
        Ok(self.report)
    }
}

fn page(cpu: u32, flags: u32, builder: &mut PageBuilder) -> Page {
    Page {
        cpu,
        flags,
        data: builder.finish(),
    }
}
