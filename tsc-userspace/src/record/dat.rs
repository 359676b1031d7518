//! The trace.dat version 7 writer, uncompressed (compression `none`).
//!
//! Layout, as trace-cmd 3.1.6 writes it (lib/trace-cmd/trace-output.c) and
//! reads it (lib/trace-cmd/trace-input.c):
//! - `output_write_init()` / `tracecmd_alloc_fd()`: `\x17\x08D`, `tracing`,
//!   `"7\0"`, endianness (0), long size (8), page size (u32), compression
//!   name and version (`"none\0"`, `"\0"`), the offset of the first options
//!   section (u64);
//! - then nothing but sections, back to back: `read_metadata_strings()`
//!   walks them all from there by their sizes. A section is `u16 id, u16
//!   flags, i32 description (offset in the strings section), u64 size`
//!   (`out_write_section_header()`, `read_section_header()`);
//! - the metadata sections (`handle_section()`): HEADER_INFO, FTRACE_EVENTS,
//!   EVENT_FORMATS, KALLSYMS, PRINTK, CMDLINES, with the v6 contents, each
//!   found through an option holding its offset;
//! - the BUFFER section: each CPU's pages at an offset aligned to the page
//!   size (`out_write_cpu_data()`; `get_page()` rejects an unaligned one),
//!   found through the BUFFER option (`handle_buffer_option()`);
//! - the options section (id DONE): options, then DONE with next offset 0
//!   (`write_options()`, `handle_options()`, `handle_option_done()`);
//! - the strings section.
//!
//! Everything is sized up front, so the file is written in one pass.

use std::{
    fs::File,
    io::{self, Read, Write},
    path::PathBuf,
};

use bytes::Bytes;

use super::options::{DatOption, id};

/// `TRACECMD_MAGIC` and `tracing`.
const MAGIC: &[u8] = b"\x17\x08Dtracing";
/// The file version written.
pub const FILE_VERSION: &str = "7";
/// Section header bytes.
const SECTION_HEADER: u64 = 16;

/// Header texts and event formats, as tracefs gives them.
#[derive(Clone, Debug, Default)]
pub struct Formats {
    /// `events/header_page`.
    pub header_page: String,
    /// `events/header_event`.
    pub header_event: String,
    /// Formats of the `ftrace` system's events present.
    pub ftrace: Vec<String>,
    /// Other systems and their formats.
    pub systems: Vec<(String, Vec<String>)>,
}

/// One CPU's data: whole pages, each `page_size` bytes.
#[derive(Clone, Debug)]
pub enum CpuData {
    /// Pages in memory (each padded to the page size when written).
    Pages(Vec<Bytes>),
    /// A spill file of pages already padded to the page size.
    File {
        /// Where.
        path: PathBuf,
        /// Bytes to copy (a multiple of the page size).
        len: u64,
    },
}

impl CpuData {
    fn len(&self, page: u64) -> u64 {
        match self {
            Self::Pages(p) => p.len() as u64 * page,
            Self::File { len, .. } => *len,
        }
    }

    fn write(&self, page: usize, out: &mut impl Write) -> io::Result<()> {
        match self {
            Self::Pages(pages) => {
                let zeros = vec![0u8; page];
                for p in pages {
                    let n = p.len().min(page);
                    out.write_all(&p[..n])?;
                    out.write_all(&zeros[..page - n])?;
                }
                Ok(())
            }
            Self::File { len: 0, .. } => Ok(()),
            Self::File { path, len } => {
                let copied = io::copy(&mut File::open(path)?.take(*len), out)?;
                if copied != *len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} is shorter than {len} bytes", path.display()),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Everything one trace.dat holds.
#[derive(Clone, Debug)]
pub struct DatFile {
    /// Ring-buffer page size.
    pub page_size: u32,
    /// Headers and formats.
    pub formats: Formats,
    /// `PID COMM` lines.
    pub cmdlines: String,
    /// The trace clock, written in the BUFFER option (e.g. `x86-tsc`).
    pub clock: String,
    /// Options besides the section and buffer ones, in order. Put
    /// TSC2NSEC before TRACECLOCK: `extract_trace_clock()` keeps seconds
    /// for `x86-tsc` only when the multiplier is already known.
    pub options: Vec<DatOption>,
    /// Per CPU, in CPU order.
    pub cpus: Vec<CpuData>,
}

/// Section descriptions, as trace-cmd names them.
#[derive(Default)]
struct Strings(Vec<u8>);

impl Strings {
    fn add(&mut self, s: &str) -> i32 {
        let at = self.0.len() as i32;
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        at
    }
}

struct Section {
    id: u16,
    desc: i32,
    body: Vec<u8>,
}

impl Section {
    fn header(id: u16, desc: i32, size: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0..2].copy_from_slice(&id.to_le_bytes());
        // flags 0: not compressed.
        h[4..8].copy_from_slice(&desc.to_le_bytes());
        h[8..16].copy_from_slice(&size.to_le_bytes());
        h
    }
}

impl DatFile {
    /// Writes the file; returns the bytes written.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<u64> {
        let page = u64::from(self.page_size.max(1));
        let mut strings = Strings::default();
        let metadata = self.metadata(&mut strings)?;
        let header = self.file_header();
        let mut pos = header.len() as u64 + 8;
        let mut options = Vec::new();
        for s in &metadata {
            push_option(&mut options, s.id, &pos.to_le_bytes());
            pos += SECTION_HEADER + s.body.len() as u64;
        }
        // The BUFFER section: its CPU data page-aligned inside it.
        let buffer_at = pos;
        let buffer_desc = strings.add("buffer flyrecord ");
        let mut cpu_at = Vec::with_capacity(self.cpus.len());
        let mut end = buffer_at + SECTION_HEADER;
        for cpu in &self.cpus {
            let at = end.div_ceil(page) * page;
            cpu_at.push(at);
            end = at + cpu.len(page);
        }
        push_option(
            &mut options,
            id::BUFFER,
            &self.buffer_option(buffer_at, &cpu_at, page),
        );
        for o in &self.options {
            push_option(&mut options, o.id(), &o.data());
        }
        // DONE: no further options section.
        push_option(&mut options, id::DONE, &0u64.to_le_bytes());
        let options_at = end;
        let options_desc = strings.add("options");
        let strings_desc = strings.add("strings");

        out.write_all(&header)?;
        out.write_all(&options_at.to_le_bytes())?;
        for s in &metadata {
            out.write_all(&Section::header(s.id, s.desc, s.body.len() as u64))?;
            out.write_all(&s.body)?;
        }
        out.write_all(&Section::header(
            id::BUFFER,
            buffer_desc,
            end - buffer_at - SECTION_HEADER,
        ))?;
        let mut written = buffer_at + SECTION_HEADER;
        for (cpu, at) in self.cpus.iter().zip(&cpu_at) {
            out.write_all(&vec![0u8; (at - written) as usize])?;
            cpu.write(page as usize, out)?;
            written = at + cpu.len(page);
        }
        out.write_all(&Section::header(
            id::DONE,
            options_desc,
            options.len() as u64,
        ))?;
        out.write_all(&options)?;
        out.write_all(&Section::header(
            id::STRINGS,
            strings_desc,
            strings.0.len() as u64,
        ))?;
        out.write_all(&strings.0)?;
        out.flush()?;
        Ok(options_at + 2 * SECTION_HEADER + options.len() as u64 + strings.0.len() as u64)
    }

    fn file_header(&self) -> Vec<u8> {
        let mut h = Vec::from(MAGIC);
        h.extend_from_slice(FILE_VERSION.as_bytes());
        h.push(0);
        h.push(0); // little endian
        h.push(8); // sizeof(long)
        h.extend_from_slice(&self.page_size.to_le_bytes());
        h.extend_from_slice(b"none\0\0");
        h
    }

    /// The metadata sections with v6 contents (`read_header_files()`,
    /// `read_ftrace_files()`, `read_event_files()`, `read_proc_kallsyms()`,
    /// `read_ftrace_printk()`, `read_and_parse_cmdlines()`).
    fn metadata(&self, strings: &mut Strings) -> io::Result<Vec<Section>> {
        let f = &self.formats;
        let mut headers = Vec::new();
        headers.extend_from_slice(b"header_page\0");
        sized64(&mut headers, f.header_page.as_bytes());
        headers.extend_from_slice(b"header_event\0");
        sized64(&mut headers, f.header_event.as_bytes());
        let mut ftrace = Vec::new();
        count32(&mut ftrace, f.ftrace.len())?;
        f.ftrace
            .iter()
            .for_each(|t| sized64(&mut ftrace, t.as_bytes()));
        let mut events = Vec::new();
        count32(&mut events, f.systems.len())?;
        for (system, formats) in &f.systems {
            events.extend_from_slice(system.as_bytes());
            events.push(0);
            count32(&mut events, formats.len())?;
            formats
                .iter()
                .for_each(|t| sized64(&mut events, t.as_bytes()));
        }
        let mut cmdlines = Vec::new();
        sized64(&mut cmdlines, self.cmdlines.as_bytes());
        Ok([
            (id::HEADER_INFO, "headers", headers),
            (id::FTRACE_EVENTS, "ftrace events", ftrace),
            (id::EVENT_FORMATS, "events format", events),
            (id::KALLSYMS, "kallsyms", 0u32.to_le_bytes().to_vec()),
            (id::PRINTK, "printk", 0u32.to_le_bytes().to_vec()),
            (id::CMDLINES, "command lines", cmdlines),
        ]
        .into_iter()
        .map(|(id, desc, body)| Section {
            id,
            desc: strings.add(desc),
            body,
        })
        .collect())
    }

    /// `out_add_buffer_option()`: section offset, name (top: ""), clock,
    /// page size, CPU count, per CPU id, data offset and size. Every CPU is
    /// listed, empty ones with size 0, so the ids are the indexes.
    fn buffer_option(&self, at: u64, cpu_at: &[u64], page: u64) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&at.to_le_bytes());
        d.push(0);
        d.extend_from_slice(self.clock.as_bytes());
        d.push(0);
        d.extend_from_slice(&self.page_size.to_le_bytes());
        d.extend_from_slice(&(self.cpus.len() as u32).to_le_bytes());
        for (i, (cpu, off)) in self.cpus.iter().zip(cpu_at).enumerate() {
            d.extend_from_slice(&(i as u32).to_le_bytes());
            d.extend_from_slice(&off.to_le_bytes());
            d.extend_from_slice(&cpu.len(page).to_le_bytes());
        }
        d
    }
}

fn push_option(out: &mut Vec<u8>, id: u16, data: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

fn sized64(h: &mut Vec<u8>, data: &[u8]) {
    h.extend_from_slice(&(data.len() as u64).to_le_bytes());
    h.extend_from_slice(data);
}

fn count32(h: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let n = u32::try_from(n).map_err(io::Error::other)?;
    h.extend_from_slice(&n.to_le_bytes());
    Ok(())
}
