//! Turning a guest's pages into events with the formats from its Hello.
//!
//! Decoding is in place: an [`EventPage`] holds the page's `Bytes` and the
//! connection's [`GuestFormats`], and its events borrow from both, so no
//! event costs an allocation.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;

use super::ConnId;
use crate::{
    tracefs::{Event, EventFormat, FormatSet, LostEvents, Page, PageError, PageLayout},
    wire::Hello,
};

/// What a connection's pages are decoded with, built from its Hello.
#[derive(Debug)]
pub struct GuestFormats {
    layout: PageLayout,
    formats: Arc<FormatSet>,
}

impl GuestFormats {
    /// Parses the Hello's page header and event formats; the error is the
    /// reason to refuse the Hello.
    pub fn from_hello(hello: &Hello) -> Result<Self, String> {
        let layout = PageLayout::parse(&hello.header_page)
            .map_err(|e| format!("cannot use header_page: {e}"))?;
        let mut formats = FormatSet::new();
        for event in &hello.events {
            let what = format!("{}:{}", event.system, event.name);
            let id = formats
                .insert_text(&event.system, &event.format)
                .map_err(|e| format!("cannot use the format of {what}: {e}"))?;
            if u32::from(id) != event.id {
                return Err(format!(
                    "{what}: Hello says id {}, its format says {id}",
                    event.id
                ));
            }
        }
        Ok(Self {
            layout,
            formats: Arc::new(formats),
        })
    }

    /// The event formats.
    pub fn formats(&self) -> &FormatSet {
        &self.formats
    }

    /// The event formats, shared (a source's formats are these, not a copy).
    pub fn shared_formats(&self) -> Arc<FormatSet> {
        self.formats.clone()
    }

    /// The ring-buffer page layout.
    pub fn layout(&self) -> &PageLayout {
        &self.layout
    }
}

/// PID to command name, from the guest's `saved_cmdlines`.
pub type Cmdlines = HashMap<i32, String>;

/// One guest page whose records all decoded cleanly.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// Connection.
    pub conn: ConnId,
    /// Guest CPU.
    pub cpu: u32,
    /// Events the kernel lost just before this page.
    pub lost: LostEvents,
    /// Number of events in the page.
    pub count: usize,
    data: Bytes,
    guest: Arc<GuestFormats>,
    comms: Arc<Cmdlines>,
}

/// One guest event, borrowed from its [`EventPage`].
#[derive(Debug, Clone, Copy)]
pub struct GuestEvent<'a> {
    /// Connection.
    pub conn: ConnId,
    /// Guest CPU.
    pub cpu: u32,
    /// Guest TSC when it happened (the `x86-tsc` trace clock).
    pub tsc: u64,
    /// Its format, `None` when its id is not in the Hello.
    pub format: Option<&'a EventFormat>,
    /// The raw record payload (starts at `common_type`).
    pub data: &'a [u8],
    /// `common_pid`, when the event has a format.
    pub pid: Option<i32>,
    /// The command name of `pid`, when the guest's `saved_cmdlines` knows it.
    pub comm: Option<&'a str>,
}

impl<'a> GuestEvent<'a> {
    /// `system:name`, or `None` for an event of unknown id.
    pub fn name(&self) -> Option<(&'a str, &'a str)> {
        self.format.map(|f| (f.system.as_str(), f.name.as_str()))
    }

    /// The event's fields, read in place.
    pub fn fields(&self) -> Option<Event<'a>> {
        self.format.map(|format| Event {
            format,
            data: self.data,
        })
    }
}

impl EventPage {
    /// Checks every record of `data`, a page of guest CPU `cpu` of
    /// connection `conn`; `Err` when any is malformed.
    pub fn new(
        conn: ConnId,
        cpu: u32,
        data: Bytes,
        guest: Arc<GuestFormats>,
        comms: Arc<Cmdlines>,
    ) -> Result<Self, PageError> {
        let page = Page::parse(&guest.layout, &data)?;
        let lost = page.lost_events();
        let mut count = 0;
        for event in page.events() {
            event?;
            count += 1;
        }
        Ok(Self {
            conn,
            cpu,
            lost,
            count,
            data,
            guest,
            comms,
        })
    }

    /// The page as received: events' `data` borrow from it, so
    /// `Bytes::slice_ref` keeps one alive without a copy.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// The connection's formats.
    pub fn guest(&self) -> &GuestFormats {
        &self.guest
    }

    /// The page's events, in order.
    pub fn events(&self) -> impl Iterator<Item = GuestEvent<'_>> {
        // Checked in `new`: the page and every record decode.
        let page = Page::parse(&self.guest.layout, &self.data).ok();
        // A page's events mostly come from one task: its comm is looked up
        // when the pid changes, not per event.
        let mut last: Option<(i32, Option<&str>)> = None;
        page.into_iter()
            .flat_map(|p| p.events())
            .filter_map(Result::ok)
            .map(move |raw| {
                let event = self.guest.formats.event(raw.data).ok();
                let pid = event.as_ref().and_then(Event::pid);
                let comm = match (pid, last) {
                    (None, _) => None,
                    (Some(p), Some((q, comm))) if p == q => comm,
                    (Some(p), _) => {
                        let comm = self.comms.get(&p).map(String::as_str);
                        last = Some((p, comm));
                        comm
                    }
                };
                GuestEvent {
                    conn: self.conn,
                    cpu: self.cpu,
                    tsc: raw.ts,
                    format: event.map(|e| e.format),
                    data: raw.data,
                    pid,
                    comm,
                }
            })
    }
}
