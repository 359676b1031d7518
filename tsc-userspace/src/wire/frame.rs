//! The frames of protocol versions 1 to 3 and their body layouts.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    HEADER_LEN, MAGIC, MIN_VERSION, VERSION, WireError,
    auth::{AuthChallenge, AuthResponse},
    read::Reader,
    sample::{SAMPLE_LEN, TscSample},
};

/// Frame type codes (the header's `u16` type field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameType {
    /// Agent to host, first frame: who the agent is and how to decode it.
    Hello = 1,
    /// Host to agent: the Hello was accepted.
    HelloAck = 2,
    /// Host to agent: the Hello was refused (reason text); the host closes.
    Reject = 3,
    /// Agent to host: one raw ring-buffer page of one CPU.
    Page = 4,
    /// Agent to host: the kernel's running count of lost events on a CPU.
    Lost = 5,
    /// Agent to host: liveness plus a fresh TSC sample.
    KeepAlive = 6,
    /// Agent to host: the text of the guest's `saved_cmdlines`.
    Cmdlines = 7,
    /// Either way: orderly end of the connection (reason text).
    Bye = 8,
    /// Agent to host, version 2: per CPU, the guest TSC up to which its
    /// buffer has been read empty (an exact watermark).
    Drained = 9,
    /// Host to agent, version 3: prove the shared key (a fresh nonce).
    AuthChallenge = 10,
    /// Agent to host, version 3: the agent's nonce and proof.
    AuthResponse = 11,
    /// Host to agent, version 3: the host's proof back.
    AuthConfirm = 12,
}

impl FrameType {
    /// The type for a header code, or `None` for a code this version lacks.
    pub fn from_code(code: u16) -> Option<Self> {
        use FrameType::*;
        Some(match code {
            1 => Hello,
            2 => HelloAck,
            3 => Reject,
            4 => Page,
            5 => Lost,
            6 => KeepAlive,
            7 => Cmdlines,
            8 => Bye,
            9 => Drained,
            10 => AuthChallenge,
            11 => AuthResponse,
            12 => AuthConfirm,
            _ => return None,
        })
    }

    /// The frame's name, as errors and logs spell it.
    pub fn name(self) -> &'static str {
        use FrameType::*;
        match self {
            Hello => "Hello",
            HelloAck => "HelloAck",
            Reject => "Reject",
            Page => "Page",
            Lost => "Lost",
            KeepAlive => "KeepAlive",
            Cmdlines => "Cmdlines",
            Bye => "Bye",
            Drained => "Drained",
            AuthChallenge => "AuthChallenge",
            AuthResponse => "AuthResponse",
            AuthConfirm => "AuthConfirm",
        }
    }
}

/// The format of one enabled event, as the guest kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFormat {
    /// Event system (`sched`).
    pub system: String,
    /// Event name (`sched_switch`).
    pub name: String,
    /// The event's id in the guest kernel (the record's `common_type`).
    pub id: u32,
    /// Verbatim text of `events/SYSTEM/NAME/format`.
    pub format: String,
}

/// A guest CPU and the APIC id of the vCPU it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuApic {
    /// Guest CPU number (as in `per_cpu/cpuN`).
    pub cpu: u32,
    /// Its initial APIC id (`/proc/cpuinfo` `apicid`).
    pub apic_id: u32,
}

/// The agent's first frame: everything the host needs to decode its pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the agent speaks on this connection
    /// ([`MIN_VERSION`]..=[`VERSION`]).
    pub version: u16,
    /// Agent name (`--name`, default the hostname).
    pub agent_name: String,
    /// The guest's hostname.
    pub hostname: String,
    /// The guest kernel's release (`uname -r`).
    pub kernel_release: String,
    /// The trace clock the pages' timestamps use (always `x86-tsc`).
    pub trace_clock: String,
    /// Size in bytes of one ring-buffer page (sub-buffer).
    pub page_size: u32,
    /// Every traced guest CPU with its APIC id.
    pub cpus: Vec<CpuApic>,
    /// Verbatim text of `events/header_page`.
    pub header_page: String,
    /// Verbatim text of `events/header_event`.
    pub header_event: String,
    /// Formats of the enabled events.
    pub events: Vec<EventFormat>,
    /// A few TSC samples, best first.
    pub samples: Vec<TscSample>,
}

/// The host's acceptance of a Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloAck {
    /// The id the host gave this connection (for both sides' logs).
    pub connection_id: u64,
    /// Largest frame body the host accepts.
    pub max_body: u32,
}

/// One raw ring-buffer page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Guest CPU whose buffer the page comes from.
    pub cpu: u32,
    /// `PAGE_FLAG_*` bits.
    pub flags: u32,
    /// The page as `trace_pipe_raw` returned it (maybe cut after its data).
    pub data: Bytes,
}

impl Page {
    /// The page was read before it filled up (a flush).
    pub const FLAG_PARTIAL: u32 = 1;
    /// Every flag bit this version defines.
    pub const KNOWN_FLAGS: u32 = Self::FLAG_PARTIAL;
}

/// The kernel's running count of events lost on one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    /// Guest CPU.
    pub cpu: u32,
    /// Events lost on it since the agent's instance was created.
    pub total: u64,
}

/// One CPU's watermark in a [`Frame::Drained`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainedCpu {
    /// Guest CPU whose buffer was read empty.
    pub cpu: u32,
    /// Guest CPU `guest_tsc` was read on (the agent's, not necessarily `cpu`).
    pub tsc_cpu: u32,
    /// TSC read just before the read that found `cpu`'s buffer empty: no
    /// later Page of `cpu` holds an event committed before it.
    pub guest_tsc: u64,
}

/// Encoded size of a [`DrainedCpu`].
const DRAINED_CPU_LEN: usize = 16;

/// One protocol frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// See [`FrameType::Hello`].
    Hello(Box<Hello>),
    /// See [`FrameType::HelloAck`].
    HelloAck(HelloAck),
    /// See [`FrameType::Reject`].
    Reject(String),
    /// See [`FrameType::Page`].
    Page(Page),
    /// See [`FrameType::Lost`].
    Lost(Lost),
    /// See [`FrameType::KeepAlive`].
    KeepAlive(TscSample),
    /// See [`FrameType::Cmdlines`].
    Cmdlines(String),
    /// See [`FrameType::Bye`].
    Bye(String),
    /// See [`FrameType::Drained`] (version 2).
    Drained(Vec<DrainedCpu>),
    /// See [`FrameType::AuthChallenge`] (version 3).
    AuthChallenge(AuthChallenge),
    /// See [`FrameType::AuthResponse`] (version 3).
    AuthResponse(AuthResponse),
    /// See [`FrameType::AuthConfirm`] (version 3): the host's proof.
    AuthConfirm(crate::auth::Proof),
}

impl Frame {
    /// This frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::HelloAck(_) => FrameType::HelloAck,
            Frame::Reject(_) => FrameType::Reject,
            Frame::Page(_) => FrameType::Page,
            Frame::Lost(_) => FrameType::Lost,
            Frame::KeepAlive(_) => FrameType::KeepAlive,
            Frame::Cmdlines(_) => FrameType::Cmdlines,
            Frame::Bye(_) => FrameType::Bye,
            Frame::Drained(_) => FrameType::Drained,
            Frame::AuthChallenge(_) => FrameType::AuthChallenge,
            Frame::AuthResponse(_) => FrameType::AuthResponse,
            Frame::AuthConfirm(_) => FrameType::AuthConfirm,
        }
    }

    /// Encodes the frame as (header and body, page payload). Only a Page
    /// has a payload: it is shared, not copied, so a sender can write both
    /// parts with one vectored write.
    pub fn encode_parts(&self, max_body: u32) -> Result<(Bytes, Bytes), WireError> {
        let mut head = BytesMut::new();
        let payload = self.encode_head(&mut head, max_body)?;
        Ok((head.freeze(), payload))
    }

    /// Appends the whole encoded frame to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut, max_body: u32) -> Result<(), WireError> {
        let payload = self.encode_head(dst, max_body)?;
        dst.extend_from_slice(&payload);
        Ok(())
    }

    /// Writes header and body into `dst`, except a Page's data, returned.
    fn encode_head(&self, dst: &mut BytesMut, max_body: u32) -> Result<Bytes, WireError> {
        let start = dst.len();
        dst.put_bytes(0, HEADER_LEN);
        let payload = self.put_body(dst)?;
        let body_len = (dst.len() - start - HEADER_LEN) as u64 + payload.len() as u64;
        if body_len > u64::from(max_body) {
            dst.truncate(start);
            return Err(WireError::Encode {
                frame: self.frame_type().name(),
                reason: format!("body of {body_len} bytes exceeds the limit of {max_body}"),
            });
        }
        let header = &mut dst[start..start + HEADER_LEN];
        header[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
        header[4..6].copy_from_slice(&(self.frame_type() as u16).to_le_bytes());
        Ok(payload)
    }

    fn put_body(&self, dst: &mut BytesMut) -> Result<Bytes, WireError> {
        let name = self.frame_type().name();
        match self {
            Frame::Hello(h) => put_hello(dst, h)?,
            Frame::HelloAck(a) => {
                dst.put_u64_le(a.connection_id);
                dst.put_u32_le(a.max_body);
                dst.put_u32_le(0);
            }
            Frame::Reject(text) | Frame::Cmdlines(text) | Frame::Bye(text) => {
                put_str(dst, name, text)?
            }
            Frame::Page(p) => {
                dst.put_u32_le(p.cpu);
                dst.put_u32_le(p.flags);
                return Ok(p.data.clone());
            }
            Frame::Lost(l) => {
                dst.put_u32_le(l.cpu);
                dst.put_u32_le(0);
                dst.put_u64_le(l.total);
            }
            Frame::KeepAlive(s) => s.put(dst),
            Frame::Drained(cpus) => {
                put_count(dst, name, cpus.len())?;
                for d in cpus {
                    dst.put_u32_le(d.cpu);
                    dst.put_u32_le(d.tsc_cpu);
                    dst.put_u64_le(d.guest_tsc);
                }
            }
            Frame::AuthChallenge(c) => c.put(dst),
            Frame::AuthResponse(r) => r.put(dst),
            Frame::AuthConfirm(proof) => dst.put_slice(proof),
        }
        Ok(Bytes::new())
    }

    /// Decodes one frame body of type `ty`.
    pub(crate) fn decode_body(ty: FrameType, body: Bytes) -> Result<Frame, WireError> {
        let mut r = Reader::new(ty.name(), body);
        let frame = match ty {
            FrameType::Hello => Frame::Hello(Box::new(get_hello(&mut r)?)),
            FrameType::HelloAck => {
                let connection_id = r.u64("connection_id")?;
                let max_body = r.u32("max_body")?;
                r.reserved_u32("reserved")?;
                Frame::HelloAck(HelloAck {
                    connection_id,
                    max_body,
                })
            }
            FrameType::Reject => Frame::Reject(r.string("reason")?),
            FrameType::Cmdlines => Frame::Cmdlines(r.string("cmdlines")?),
            FrameType::Bye => Frame::Bye(r.string("reason")?),
            FrameType::Page => Frame::Page(get_page(&mut r)?),
            FrameType::Lost => {
                let cpu = r.u32("cpu")?;
                r.reserved_u32("reserved")?;
                let total = r.u64("total")?;
                Frame::Lost(Lost { cpu, total })
            }
            FrameType::KeepAlive => Frame::KeepAlive(TscSample::get(&mut r)?),
            FrameType::Drained => Frame::Drained(get_drained(&mut r)?),
            FrameType::AuthChallenge => Frame::AuthChallenge(AuthChallenge::get(&mut r)?),
            FrameType::AuthResponse => Frame::AuthResponse(AuthResponse::get(&mut r)?),
            FrameType::AuthConfirm => Frame::AuthConfirm(r.array("proof")?),
        };
        r.finish()?;
        Ok(frame)
    }
}

fn get_drained(r: &mut Reader) -> Result<Vec<DrainedCpu>, WireError> {
    let n = r.count(DRAINED_CPU_LEN, "cpu count")?;
    if n == 0 {
        return Err(WireError::malformed("Drained", "no CPUs"));
    }
    let mut cpus: Vec<DrainedCpu> = Vec::with_capacity(n);
    for _ in 0..n {
        let cpu = r.u32("cpu")?;
        let tsc_cpu = r.u32("tsc_cpu")?;
        let guest_tsc = r.u64("guest_tsc")?;
        if cpus.iter().any(|d| d.cpu == cpu) {
            return Err(WireError::malformed("Drained", format!("CPU {cpu} twice")));
        }
        cpus.push(DrainedCpu {
            cpu,
            tsc_cpu,
            guest_tsc,
        });
    }
    Ok(cpus)
}

fn get_page(r: &mut Reader) -> Result<Page, WireError> {
    let cpu = r.u32("cpu")?;
    let flags = r.u32("flags")?;
    let unknown = flags & !Page::KNOWN_FLAGS;
    if unknown != 0 {
        return Err(WireError::Reserved {
            frame: "Page",
            field: "flags",
            value: unknown.into(),
        });
    }
    let data = r.rest();
    if data.is_empty() {
        return Err(WireError::malformed("Page", "no page data"));
    }
    Ok(Page { cpu, flags, data })
}

fn put_str(dst: &mut BytesMut, frame: &'static str, s: &str) -> Result<(), WireError> {
    let len = u32::try_from(s.len()).map_err(|_| WireError::Encode {
        frame,
        reason: format!("string of {} bytes", s.len()),
    })?;
    dst.put_u32_le(len);
    dst.put_slice(s.as_bytes());
    Ok(())
}

fn put_count(dst: &mut BytesMut, frame: &'static str, n: usize) -> Result<(), WireError> {
    let n = u32::try_from(n).map_err(|_| WireError::Encode {
        frame,
        reason: format!("{n} elements"),
    })?;
    dst.put_u32_le(n);
    Ok(())
}

impl Hello {
    /// The Hello's frame body as sent (what the authentication digests).
    pub fn encode_body(&self) -> Result<BytesMut, WireError> {
        let mut body = BytesMut::new();
        put_hello(&mut body, self)?;
        Ok(body)
    }
}

fn put_hello(dst: &mut BytesMut, h: &Hello) -> Result<(), WireError> {
    const F: &str = "Hello";
    if !(MIN_VERSION..=VERSION).contains(&h.version) {
        return Err(WireError::Encode {
            frame: F,
            reason: format!("version {} is not one this build speaks", h.version),
        });
    }
    dst.put_slice(&MAGIC);
    dst.put_u16_le(h.version);
    dst.put_u16_le(0);
    for s in [
        &h.agent_name,
        &h.hostname,
        &h.kernel_release,
        &h.trace_clock,
    ] {
        put_str(dst, F, s)?;
    }
    dst.put_u32_le(h.page_size);
    put_count(dst, F, h.cpus.len())?;
    for c in &h.cpus {
        dst.put_u32_le(c.cpu);
        dst.put_u32_le(c.apic_id);
    }
    put_str(dst, F, &h.header_page)?;
    put_str(dst, F, &h.header_event)?;
    put_count(dst, F, h.events.len())?;
    for e in &h.events {
        put_str(dst, F, &e.system)?;
        put_str(dst, F, &e.name)?;
        dst.put_u32_le(e.id);
        put_str(dst, F, &e.format)?;
    }
    put_count(dst, F, h.samples.len())?;
    for s in &h.samples {
        s.put(dst);
    }
    Ok(())
}

/// Smallest encoded event format: three empty strings and an id.
const MIN_EVENT_LEN: usize = 16;

fn get_hello(r: &mut Reader) -> Result<Hello, WireError> {
    let magic = r.bytes(4, "magic")?;
    let magic: [u8; 4] = [magic[0], magic[1], magic[2], magic[3]];
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = r.u16("version")?;
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(WireError::UnsupportedVersion {
            got: version,
            ours: VERSION,
        });
    }
    match r.u16("reserved")? {
        0 => {}
        v => {
            return Err(WireError::Reserved {
                frame: "Hello",
                field: "reserved",
                value: v.into(),
            });
        }
    }
    let agent_name = r.string("agent_name")?;
    let hostname = r.string("hostname")?;
    let kernel_release = r.string("kernel_release")?;
    let trace_clock = r.string("trace_clock")?;
    let page_size = r.u32("page_size")?;
    let n = r.count(8, "cpu count")?;
    let mut cpus = Vec::with_capacity(n);
    for _ in 0..n {
        let cpu = r.u32("cpu")?;
        let apic_id = r.u32("apic_id")?;
        cpus.push(CpuApic { cpu, apic_id });
    }
    let header_page = r.string("header_page")?;
    let header_event = r.string("header_event")?;
    let n = r.count(MIN_EVENT_LEN, "event count")?;
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        let system = r.string("event system")?;
        let name = r.string("event name")?;
        let id = r.u32("event id")?;
        let format = r.string("event format")?;
        events.push(EventFormat {
            system,
            name,
            id,
            format,
        });
    }
    let n = r.count(SAMPLE_LEN, "sample count")?;
    let samples = (0..n)
        .map(|_| TscSample::get(r))
        .collect::<Result<_, _>>()?;
    Ok(Hello {
        version,
        agent_name,
        hostname,
        kernel_release,
        trace_clock,
        page_size,
        cpus,
        header_page,
        header_event,
        events,
        samples,
    })
}
