//! What the test binaries share: the key service's test double
//! ([`double`]) and a capture of this thread's logs.
// Each test binary uses part of it.
#![allow(dead_code)]

pub(crate) mod double;

use std::sync::Arc;

use parking_lot::Mutex;

/// Everything logged on this thread while it lives.
pub(crate) struct Captured {
    logs: Arc<Mutex<Vec<u8>>>,
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Starts capturing, at TRACE.
    pub(crate) fn start() -> Self {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(logs.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        Self {
            logs,
            _default: tracing::subscriber::set_default(subscriber),
            // With one dispatcher, tracing caches a callsite's interest from
            // the default of whichever thread reaches it first (another
            // test's, with none); a second one makes it ask every dispatcher.
            _second: tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()),
        }
    }

    /// Everything captured.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock()).into_owned()
    }

    /// Lines at `level` containing `text`.
    pub(crate) fn count(&self, level: &str, text: &str) -> usize {
        self.text()
            .lines()
            .filter(|l| l.contains(level) && l.contains(text))
            .count()
    }
}
