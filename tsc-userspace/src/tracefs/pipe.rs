//! Reading `per_cpu/cpuN/trace_pipe_raw`: whole ring-buffer pages.
//!
//! Each read of a page's size returns one page and consumes it. The kernel
//! hands out partly filled pages too (the page header's `commit` says how
//! much is there), so reading until the pipe is empty is also how the last
//! events are flushed at the end. The file is opened non-blocking: an empty
//! buffer reads as EAGAIN, and poll/epoll report it readable once the
//! instance's `buffer_percent` is reached (0: any data), which is what
//! [`AsyncRawPipe`] waits for.
//!
//! Above 0 the kernel wakes a waiter once per arming: `rb_wake_up_waiters()`
//! (kernel/trace/ring_buffer.c, Linux 6.x) clears `full_waiters_pending`,
//! and only `ring_buffer_poll_wait()` sets it again, when it is called while
//! the buffer is below the mark. epoll (edge-triggered, as tokio registers
//! descriptors) calls it only right after a wake-up, when the buffer is at
//! the mark; so after the first wake-up nobody re-arms it and the waiter
//! sleeps forever (seen on 6.18: one wake-up in 3 s of 45k events/s).
//! [`AsyncRawPipe::rearm`] calls it once more with a zero-timeout poll(2)
//! after each read-until-empty (81 wake-ups in the same 3 s, no loss).

use std::{
    fs::File,
    io::{self, Read},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::PathBuf,
    sync::Arc,
};

use bytes::{Bytes, BytesMut};
use tokio::io::{Interest, unix::AsyncFd};

use super::{TracefsError, instance::InstanceDir};

/// Pages allocated at once; each read page is split off as its own `Bytes`.
const ARENA_PAGES: usize = 16;

/// Reads one page into `buf`'s spare room; `None` when there is none ready.
fn read_page(file: &mut File, buf: &mut BytesMut, page_size: usize) -> io::Result<Option<Bytes>> {
    if buf.capacity() < page_size {
        buf.reserve(page_size * ARENA_PAGES);
    }
    buf.resize(page_size, 0);
    let read = loop {
        match file.read(&mut buf[..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match read {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(buf.split_to(n).freeze())),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// A CPU's `trace_pipe_raw`, read without blocking. Keeps its instance alive.
#[derive(Debug)]
pub struct RawPipe {
    file: File,
    cpu: u32,
    page_size: usize,
    path: PathBuf,
    buf: BytesMut,
    _instance: Arc<InstanceDir>,
}

impl RawPipe {
    pub(crate) fn open(
        instance: Arc<InstanceDir>,
        cpu: u32,
        page_size: usize,
    ) -> Result<Self, TracefsError> {
        let path = instance
            .path
            .join(format!("per_cpu/cpu{cpu}/trace_pipe_raw"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| TracefsError::io(&path, e))?;
        Ok(Self {
            file,
            cpu,
            page_size,
            path,
            buf: BytesMut::new(),
            _instance: instance,
        })
    }

    /// The CPU this pipe reads.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Bytes per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The next page, or `None` when the CPU's buffer is empty right now.
    pub fn read_page(&mut self) -> Result<Option<Bytes>, TracefsError> {
        read_page(&mut self.file, &mut self.buf, self.page_size)
            .map_err(|e| TracefsError::io(&self.path, e))
    }

    /// Makes it awaitable. Must be called inside a tokio runtime.
    pub fn into_async(self) -> Result<AsyncRawPipe, TracefsError> {
        if tokio::runtime::Handle::try_current().is_err() {
            let e = io::Error::other("AsyncRawPipe needs a tokio runtime");
            return Err(TracefsError::io(self.path, e));
        }
        let Self {
            file,
            cpu,
            page_size,
            path,
            buf,
            _instance,
        } = self;
        // SAFETY: `file` owns its descriptor and moves into the AsyncFd,
        // which keeps it open and unchanged until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }
            .map_err(|e| TracefsError::io(&path, e.into()))?;
        Ok(AsyncRawPipe {
            fd,
            cpu,
            page_size,
            path,
            buf,
            _instance,
        })
    }
}

/// A CPU's `trace_pipe_raw` registered with tokio: waits for pages without
/// polling in a loop. Keeps its instance alive.
#[derive(Debug)]
pub struct AsyncRawPipe {
    fd: AsyncFd<File>,
    cpu: u32,
    page_size: usize,
    path: PathBuf,
    buf: BytesMut,
    _instance: Arc<InstanceDir>,
}

impl AsyncRawPipe {
    /// The CPU this pipe reads.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Bytes per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Waits for the next page. Cancel-safe: a page is only consumed when it
    /// is returned.
    pub async fn next_page(&mut self) -> Result<Bytes, TracefsError> {
        loop {
            let mut guard = self
                .fd
                .readable_mut()
                .await
                .map_err(|e| TracefsError::io(&self.path, e))?;
            let (buf, size) = (&mut self.buf, self.page_size);
            match read_page(guard.get_inner_mut(), buf, size) {
                Ok(Some(page)) => return Ok(page),
                Ok(None) => guard.clear_ready(),
                Err(e) => return Err(TracefsError::io(&self.path, e)),
            }
        }
    }

    /// Waits until the kernel signals the buffer reached the instance's
    /// `buffer_percent`, and takes the signal: read until empty, then
    /// [`AsyncRawPipe::rearm`]. Cancel-safe.
    pub async fn ready(&self) -> Result<(), TracefsError> {
        let mut guard = self
            .fd
            .readable()
            .await
            .map_err(|e| TracefsError::io(&self.path, e))?;
        guard.clear_ready();
        Ok(())
    }

    /// Asks the kernel to wake [`AsyncRawPipe::ready`] at the next crossing
    /// of `buffer_percent` (see the module doc); `true` when the buffer is
    /// already there, so the caller reads again.
    pub fn rearm(&self) -> Result<bool, TracefsError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid, initialised pollfd, count 1, zero timeout; the
        // descriptor stays open for the call (owned by `self.fd`).
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n < 0 {
            return Err(TracefsError::io(&self.path, io::Error::last_os_error()));
        }
        Ok(n > 0 && pfd.revents & libc::POLLIN != 0)
    }

    /// The next page if one is ready now, else `None`: for draining on a
    /// timer (a quiet CPU below `buffer_percent` never wakes a waiter) and
    /// for flushing at the end.
    pub fn try_read_page(&mut self) -> Result<Option<Bytes>, TracefsError> {
        read_page(self.fd.get_mut(), &mut self.buf, self.page_size)
            .map_err(|e| TracefsError::io(&self.path, e))
    }
}
