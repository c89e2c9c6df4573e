//! Batched log output. Each formatted line is appended to one in-memory buffer, which is written
//! to stdout when it reaches [`BATCH_BYTES`], every [`FLUSH_EVERY`] by a small thread, and when
//! the [`LogGuard`] is dropped at exit. One `write` per batch instead of one per line: the
//! per-line write was 8 % of the server's CPU on a cached read, and a channel to a writer
//! thread cost more in wake-ups than it saved. Order is kept (lines are appended and written
//! under one lock); a crash loses at most the last [`FLUSH_EVERY`] of lines.

use std::{
    io::{self, Write},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// A batch is written once it holds this many bytes.
pub const BATCH_BYTES: usize = 64 * 1024;
/// A partial batch is written at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct LogSink {
    buf: Arc<Mutex<Vec<u8>>>,
    out: fn(&[u8]),
}

impl Default for LogSink {
    fn default() -> Self {
        Self::to(stdout)
    }
}

fn stdout(batch: &[u8]) {
    let mut out = io::stdout().lock();
    // Nowhere to report a failing stdout: drop the batch rather than grow without bound.
    let _ = out.write_all(batch).and_then(|()| out.flush());
}

impl LogSink {
    /// A sink writing its batches with `out`.
    pub fn to(out: fn(&[u8])) -> Self {
        Self {
            buf: Arc::default(),
            out,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while appending leaves at worst a partial line: keep logging.
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        let mut buf = self.lock();
        self.write_out(&mut buf);
    }

    fn write_out(&self, buf: &mut Vec<u8>) {
        if !buf.is_empty() {
            (self.out)(buf);
            buf.clear();
        }
    }

    /// Starts the thread that writes partial batches; it stops with the process.
    pub fn start_flusher(&self) -> LogGuard {
        let sink = self.clone();
        let spawned = std::thread::Builder::new()
            .name("hakikisha-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    sink.flush();
                }
            });
        if let Err(e) = spawned {
            // Lines are still written, in full batches and at exit.
            eprintln!("cannot start the log flusher thread: {e}");
        }
        LogGuard(self.clone())
    }
}

/// One line being written (the formatter writes a whole line per `write_all`).
pub struct LogLine<'a>(&'a LogSink);

impl Write for LogLine<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut buf = self.0.lock();
        buf.extend_from_slice(line);
        if buf.len() >= BATCH_BYTES {
            self.0.write_out(&mut buf);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine(self)
    }
}

/// Writes out the buffered lines when dropped: hold it until the process exits.
pub struct LogGuard(LogSink);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static WRITTEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn capture(batch: &[u8]) {
        WRITTEN.lock().unwrap().extend_from_slice(batch);
    }

    #[test]
    fn lines_are_written_in_order_when_a_batch_fills_or_on_flush() {
        let sink = LogSink::to(capture);
        sink.make_writer().write_all(b"one\n").unwrap();
        sink.make_writer().write_all(b"two\n").unwrap();
        assert!(
            WRITTEN.lock().unwrap().is_empty(),
            "held until the batch fills"
        );
        let big = vec![b'x'; BATCH_BYTES];
        sink.make_writer().write_all(&big).unwrap();
        {
            let written = WRITTEN.lock().unwrap();
            assert_eq!(written.len(), 8 + BATCH_BYTES);
            assert!(written.starts_with(b"one\ntwo\nxxx"));
        }
        sink.make_writer().write_all(b"three\n").unwrap();
        drop(LogGuard(sink.clone()));
        assert!(
            WRITTEN.lock().unwrap().ends_with(b"xthree\n"),
            "the guard writes the rest"
        );
        assert!(sink.lock().is_empty());
    }
}
