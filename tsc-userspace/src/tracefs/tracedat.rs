//! Writing raw pages as a trace-cmd `trace.dat` (file version 6, as
//! documented in trace-cmd.dat.v6(5)), so that `trace-cmd report` and
//! KernelShark can open what this tool recorded.
//!
//! The file holds the page and event headers, the event formats, the pid ->
//! comm map and, per CPU, the pages exactly as `trace_pipe_raw` returned
//! them (each padded to a whole page). Only little-endian, 64-bit `long`.

use std::io::{self, Write};

use bytes::Bytes;

/// Everything a v6 file holds.
#[derive(Debug, Clone, Default)]
pub struct TraceDat {
    /// Page size (the sub-buffer size of the recording).
    pub page_size: usize,
    /// Text of `events/header_page`.
    pub header_page: String,
    /// Text of `events/header_event`.
    pub header_event: String,
    /// Format files of the `ftrace` system (e.g. `ftrace/print`).
    pub ftrace_formats: Vec<String>,
    /// Other systems: name and the format files of its events.
    pub systems: Vec<(String, Vec<String>)>,
    /// `PID COMM` lines, as in `saved_cmdlines`.
    pub cmdlines: String,
    /// For each CPU in order, its pages.
    pub cpus: Vec<Vec<Bytes>>,
}

const MAGIC: &[u8] = b"\x17\x08\x44tracing6\0";

impl TraceDat {
    /// Writes the file.
    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        let mut head = Vec::new();
        self.write_headers(&mut head)?;
        let cpus = u32::try_from(self.cpus.len()).map_err(io::Error::other)?;
        head.extend_from_slice(&cpus.to_le_bytes());
        head.extend_from_slice(b"flyrecord\0");
        // Offsets follow the table: header, table, padding to a page, data.
        let table_len = 16 * self.cpus.len();
        let page = self.page_size.max(1);
        let mut offset = (head.len() + table_len).div_ceil(page) * page;
        let mut table = Vec::with_capacity(table_len);
        for pages in &self.cpus {
            let size = pages.len() * page;
            table.extend_from_slice(&(offset as u64).to_le_bytes());
            table.extend_from_slice(&(size as u64).to_le_bytes());
            offset += size;
        }
        let data_start = (head.len() + table_len).div_ceil(page) * page;
        out.write_all(&head)?;
        out.write_all(&table)?;
        out.write_all(&vec![0; data_start - head.len() - table_len])?;
        let zeros = vec![0u8; page];
        for bytes in self.cpus.iter().flatten() {
            let len = bytes.len().min(page);
            out.write_all(&bytes[..len])?;
            out.write_all(&zeros[..page - len])?;
        }
        out.flush()
    }

    fn write_headers(&self, h: &mut Vec<u8>) -> io::Result<()> {
        h.extend_from_slice(MAGIC);
        h.push(0); // little endian
        h.push(8); // long size
        let page = u32::try_from(self.page_size).map_err(io::Error::other)?;
        h.extend_from_slice(&page.to_le_bytes());
        h.extend_from_slice(b"header_page\0");
        sized64(h, self.header_page.as_bytes());
        h.extend_from_slice(b"header_event\0");
        sized64(h, self.header_event.as_bytes());
        count32(h, self.ftrace_formats.len())?;
        for f in &self.ftrace_formats {
            sized64(h, f.as_bytes());
        }
        count32(h, self.systems.len())?;
        for (system, formats) in &self.systems {
            h.extend_from_slice(system.as_bytes());
            h.push(0);
            count32(h, formats.len())?;
            for f in formats {
                sized64(h, f.as_bytes());
            }
        }
        count32(h, 0)?; // kallsyms
        count32(h, 0)?; // printk formats
        sized64(h, self.cmdlines.as_bytes());
        Ok(())
    }
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
