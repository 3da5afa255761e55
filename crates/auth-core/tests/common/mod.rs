//! What the log-capturing tests share. Each of them is alone in its test
//! binary (see `auth_core::testing::SecretWatch` for why).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

/// Everything a subscriber wrote, as text.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    /// All of it.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines that carry both texts (a level and a message, say).
    pub(crate) fn count(&self, a: &str, b: &str) -> usize {
        self.text()
            .lines()
            .filter(|l| l.contains(a) && l.contains(b))
            .count()
    }
}
