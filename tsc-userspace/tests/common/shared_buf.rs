//! An `io::Write` whose bytes a test reads while, or after, a writer owns
//! it. The one definition for the integration tests (`tests/common`) and
//! the library's unit tests (`src/output/tests.rs` includes this file).

use std::{
    io::{self, Write},
    sync::{Arc, Mutex, PoisonError},
};

use serde_json::Value;

/// Clones share the bytes: give one to the writer, read through another.
#[derive(Clone, Default)]
pub struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8(bytes).expect("the output is UTF-8")
    }

    /// Every line written, each parsed as JSON (for a finished writer).
    pub fn json_lines(&self) -> Vec<Value> {
        self.text().lines().map(parse).collect()
    }

    /// The lines written completely so far, each parsed as JSON: a writer
    /// still at work may have written part of the next line.
    pub fn complete_json_lines(&self) -> Vec<Value> {
        let text = self.text();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(parse).collect()
    }
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"))
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("a reader panicked holding the buffer"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
