//! The log line formats (`LOG_FORMAT=text` and `json`), written straight into the line buffer.
//!
//! tracing-subscriber's own formatters went through `core::fmt` for every part of a line (the
//! timestamp, the level's styling, each field through `Debug`): with one line per request that
//! was about a fifth of the instructions the service spent on `GET /api/health`. These write
//! the same lines with plain string appends: the timestamp's date and time of day are formatted
//! once a second per thread, integers with `itoa`, floats with `ryu`, strings copied with the
//! escaping their format needs. Only values that are neither (an error, a `Debug` value) still go
//! through `core::fmt`.
//!
//! Text: `2026-12-01T08:36:00.123456Z  INFO target: message key=value key="a string"` (the
//! shape of tracing-subscriber's compact format; string values are quoted when they hold a
//! space, `=`, a quote or a backslash, and control characters are escaped everywhere, so a value
//! cannot forge a line). JSON: one object per line with
//! `timestamp`, `level`, the fields (the message as `message`) and `target`.

use std::{
    cell::RefCell,
    fmt::{self, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// A [`FormatEvent`] for the service's two log formats.
#[derive(Debug, Clone, Copy)]
pub struct LineFormat {
    json: bool,
}

impl LineFormat {
    pub fn text() -> Self {
        Self { json: false }
    }

    pub fn json() -> Self {
        Self { json: true }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The line is put together in a buffer of this thread's (plain appends the compiler
        // sees through), then handed over in one write.
        let ansi = w.has_ansi_escapes();
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                self.line(&mut line, event, ansi)?;
                w.write_str(&line)?;
                if line.capacity() > MAX_KEPT {
                    *line = String::new();
                }
                Ok(())
            }
            // An event logged while formatting another (from a `Debug` impl) gets its own.
            Err(_) => {
                let mut line = String::new();
                self.line(&mut line, event, ansi)?;
                w.write_str(&line)
            }
        })
    }
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A line buffer grown past this by one huge event is not kept.
const MAX_KEPT: usize = 64 * 1024;

impl LineFormat {
    fn line(&self, w: &mut String, event: &Event<'_>, ansi: bool) -> fmt::Result {
        let level = *event.metadata().level();
        let target = event.metadata().target();
        if self.json {
            w.push_str("{\"timestamp\":\"");
            timestamp(w)?;
            w.push_str("\",\"level\":\"");
            w.push_str(level.as_str());
            w.push('"');
            let mut fields = Fields::<Json>::new(w);
            event.record(&mut fields);
            fields.result?;
            w.push_str(",\"target\":");
            json_str(w, target)?;
            w.push_str("}\n");
        } else {
            timestamp(w)?;
            w.push_str(if ansi { colored(level) } else { padded(level) });
            w.push(' ');
            w.push_str(target);
            w.push(':');
            let mut fields = Fields::<Text>::new(w);
            event.record(&mut fields);
            fields.result?;
            w.push('\n');
        }
        Ok(())
    }
}

/// The level right-aligned in six columns after the timestamp (two spaces before `INFO`).
fn padded(level: Level) -> &'static str {
    match level {
        Level::TRACE => " TRACE",
        Level::DEBUG => " DEBUG",
        Level::INFO => "  INFO",
        Level::WARN => "  WARN",
        Level::ERROR => " ERROR",
    }
}

fn colored(level: Level) -> &'static str {
    match level {
        Level::TRACE => " \x1b[35mTRACE\x1b[0m",
        Level::DEBUG => " \x1b[34mDEBUG\x1b[0m",
        Level::INFO => "  \x1b[32mINFO\x1b[0m",
        Level::WARN => "  \x1b[33mWARN\x1b[0m",
        Level::ERROR => " \x1b[31mERROR\x1b[0m",
    }
}

thread_local! {
    /// The second last formatted on this thread and its `YYYY-MM-DDTHH:MM:SS` text.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-12-01T08:36:00.123456Z`: UTC, microseconds.
fn timestamp(w: &mut impl Write) -> fmt::Result {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, micros) = (now.as_secs(), now.subsec_micros());
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            *second = secs;
            text.clear();
            let at = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
            write!(text, "{}", at.format("%Y-%m-%dT%H:%M:%S"))?;
        }
        w.write_str(text)
    })?;
    let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut rest = micros;
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    w.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// How a format writes a field: the text format's ` key=value`, JSON's `,"key":value`.
trait Style {
    /// What comes before the value.
    fn key(w: &mut String, field: &Field);
    fn string(w: &mut String, field: &Field, value: &str) -> fmt::Result;
    fn float(w: &mut String, value: f64) -> fmt::Result;
    /// A value only `core::fmt` can write (an error, a `Debug` value).
    fn formatted(w: &mut String, value: fmt::Arguments<'_>) -> fmt::Result;
}

/// `key=value` pairs after the message, as tracing-subscriber's compact format writes them.
struct Text;

impl Style for Text {
    fn key(w: &mut String, field: &Field) {
        w.push(' ');
        if field.name() != "message" {
            w.push_str(field.name());
            w.push('=');
        }
    }

    fn string(w: &mut String, field: &Field, value: &str) -> fmt::Result {
        // Quoted only when it has to be (logfmt): `route=/api/health`, `job="a b"`. Most values
        // (ids, routes, names) need neither quotes nor escapes: one pass tells.
        if !needs_quotes(value) {
            w.push_str(value);
            Ok(())
        } else if field.name() == "message" {
            text_escaped(w, value)
        } else {
            text_quoted(w, value)
        }
    }

    fn float(w: &mut String, value: f64) -> fmt::Result {
        if !thousandths(w, value) {
            w.push_str(ryu::Buffer::new().format(value));
        }
        Ok(())
    }

    fn formatted(w: &mut String, value: fmt::Arguments<'_>) -> fmt::Result {
        Escaping(w, text_escaped).write_fmt(value)
    }
}

/// `,"key":value` members of the line's object.
struct Json;

impl Style for Json {
    fn key(w: &mut String, field: &Field) {
        w.push(',');
        // Field names are Rust identifiers: nothing to escape.
        w.push('"');
        w.push_str(field.name());
        w.push_str("\":");
    }

    fn string(w: &mut String, _field: &Field, value: &str) -> fmt::Result {
        json_str(w, value)
    }

    fn float(w: &mut String, value: f64) -> fmt::Result {
        if thousandths(w, value) {
            return Ok(());
        }
        if value.is_finite() {
            w.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            w.push_str("null");
        }
        Ok(())
    }

    fn formatted(w: &mut String, value: fmt::Arguments<'_>) -> fmt::Result {
        w.push('"');
        Escaping(&mut *w, json_escaped).write_fmt(value)?;
        w.push('"');
        Ok(())
    }
}

/// Writes `value` when it is a whole number of thousandths under a billion (the request
/// latency in milliseconds, to the microsecond), exactly as ryu writes it (`1.471`, `12.5`,
/// `3.0`), but with integer arithmetic: that is the shortest text that reads back as `value`,
/// because every other number of as few digits is at least 0.001 away, far more than the
/// rounding of a float under a billion. Anything else is left to ryu (`false`).
fn thousandths(w: &mut String, value: f64) -> bool {
    if value.is_sign_negative() || value >= 1e9 {
        return false;
    }
    let scaled = (value * 1000.0).round();
    if scaled / 1000.0 != value {
        return false;
    }
    let n = scaled as u64;
    w.push_str(itoa::Buffer::new().format(n / 1000));
    let fraction = n % 1000;
    let digits = [
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ];
    // `.0` for a whole number, else the fraction without its trailing zeros.
    let len = match fraction {
        f if f % 100 == 0 => 2,
        f if f % 10 == 0 => 3,
        _ => 4,
    };
    // ASCII digits and a dot.
    w.push_str(std::str::from_utf8(&digits[..len]).unwrap_or("."));
    true
}

/// The event's fields in a [`Style`]; the first error stops the line.
struct Fields<'a, S> {
    w: &'a mut String,
    result: fmt::Result,
    style: std::marker::PhantomData<S>,
}

impl<'a, S: Style> Fields<'a, S> {
    fn new(w: &'a mut String) -> Self {
        Self {
            w,
            result: Ok(()),
            style: std::marker::PhantomData,
        }
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_ok() {
            S::key(self.w, field);
            self.result = value(self.w);
        }
    }
}

impl<S: Style> Visit for Fields<'_, S> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |w| S::string(w, field, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |w| {
            w.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |w| {
            w.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, |w| S::float(w, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |w| {
            w.push_str(if value { "true" } else { "false" });
            Ok(())
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, |w| S::formatted(w, format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |w| S::formatted(w, format_args!("{value:?}")));
    }
}

/// A `fmt::Write` that escapes what is written through it.
struct Escaping<'a, W>(&'a mut W, fn(&mut W, &str) -> fmt::Result);

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        (self.1)(self.0, s)
    }
}

/// Writes `s` with control characters escaped (`\n`, `\x1b`, ...), so one event stays one line
/// and cannot carry terminal escape sequences.
fn text_escaped(w: &mut impl Write, s: &str) -> fmt::Result {
    escape(w, s, |b| match b {
        b'\n' => Some(Escape::Text("\\n")),
        b'\r' => Some(Escape::Text("\\r")),
        b'\t' => Some(Escape::Text("\\t")),
        0..=0x1f | 0x7f => Some(Escape::Hex),
        _ => None,
    })
}

/// Whether a text value must be quoted to read back as one value. (A fold rather than `any`:
/// without the early exit the compiler checks many bytes at once.)
fn needs_quotes(s: &str) -> bool {
    s.is_empty() || s.bytes().fold(false, |found, b| found | needs_care(b))
}

fn is_control(b: u8) -> bool {
    (b < 0x20) | (b == 0x7f)
}

/// A byte that makes a text value need quotes or escapes.
fn needs_care(b: u8) -> bool {
    is_control(b) | (b == b' ') | (b == b'"') | (b == b'=') | (b == b'\\')
}

/// [`text_escaped`] inside double quotes, which also escapes `"` and `\`.
fn text_quoted(w: &mut impl Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    escape(w, s, |b| in_quotes(b, Escape::Hex))?;
    w.write_char('"')
}

/// The escapes inside a quoted string, text or JSON: `"`, `\`, `\n`, `\r`, `\t`, and `other`
/// for the other control characters.
fn in_quotes(b: u8, other: Escape) -> Option<Escape> {
    match b {
        b'"' => Some(Escape::Text("\\\"")),
        b'\\' => Some(Escape::Text("\\\\")),
        b'\n' => Some(Escape::Text("\\n")),
        b'\r' => Some(Escape::Text("\\r")),
        b'\t' => Some(Escape::Text("\\t")),
        0..=0x1f | 0x7f => Some(other),
        _ => None,
    }
}

fn json_str(w: &mut impl Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    json_escaped(w, s)?;
    w.write_char('"')
}

/// Writes `s` as the inside of a JSON string.
fn json_escaped(w: &mut impl Write, s: &str) -> fmt::Result {
    escape(w, s, |b| in_quotes(b, Escape::Unicode))
}

#[derive(Clone, Copy)]
enum Escape {
    Text(&'static str),
    /// `\x1b`
    Hex,
    /// `\u001b`
    Unicode,
}

/// Copies `s`, replacing each ASCII byte `rule` picks with its escape. Only ASCII bytes are
/// escaped, and those never occur inside a multi-byte character, so the slices stay valid.
fn escape(w: &mut impl Write, s: &str, rule: impl Fn(u8) -> Option<Escape>) -> fmt::Result {
    // Almost every value has nothing to escape: check that first, many bytes at a time.
    let special = |b: u8| is_control(b) | (b == b'"') | (b == b'\\');
    if !s.bytes().fold(false, |found, b| found | special(b)) {
        return w.write_str(s);
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let Some(escape) = rule(b) else { continue };
        w.write_str(&s[start..i])?;
        match escape {
            Escape::Text(text) => w.write_str(text)?,
            Escape::Hex => write!(w, "\\x{b:02x}")?,
            Escape::Unicode => write!(w, "\\u{b:04x}")?,
        }
        start = i + 1;
    }
    w.write_str(&s[start..])
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// What `emit` logs, formatted by `format`.
    fn logged(format: LineFormat, emit: impl FnOnce()) -> String {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .event_format(format)
            .with_writer(lines.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(lines.0.lock().unwrap().clone()).unwrap()
    }

    #[derive(Debug)]
    struct Shape {
        #[allow(dead_code)]
        sides: u8,
    }

    fn request_line() {
        let request_id = "0bbd6b73";
        let error = std::io::Error::other("disk \"full\"\nretry");
        tracing::info!(
            %request_id,
            route = "/api/v1/claims/{id}",
            status = 200u16,
            offset = -3i64,
            latency_ms = 1.471,
            ok = true,
            shape = ?Shape { sides: 4 },
            error = &error as &(dyn std::error::Error + 'static),
            "request"
        );
    }

    #[test]
    fn text_lines_have_the_compact_shape_with_typed_values() {
        let line = logged(LineFormat::text(), request_line);
        let (ts, rest) = line.split_once("  INFO ").unwrap();
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(
            rest,
            "hakikisha::telemetry::logfmt::tests: request request_id=0bbd6b73 \
             route=/api/v1/claims/{id} status=200 offset=-3 latency_ms=1.471 ok=true \
             shape=Shape { sides: 4 } error=disk \"full\"\\nretry\n"
        );
    }

    #[test]
    fn json_lines_parse_with_every_field_typed() {
        let line = logged(LineFormat::json(), request_line);
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["request_id"], "0bbd6b73");
        assert_eq!(v["route"], "/api/v1/claims/{id}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["offset"], -3);
        assert_eq!(v["latency_ms"], 1.471);
        assert_eq!(v["ok"], true);
        assert_eq!(v["shape"], "Shape { sides: 4 }");
        assert_eq!(v["error"], "disk \"full\"\nretry");
        assert_eq!(v["target"], "hakikisha::telemetry::logfmt::tests");
        let ts = v["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(ts).is_ok());
    }

    #[test]
    fn text_strings_are_quoted_only_when_they_must_be() {
        let line = logged(LineFormat::text(), || {
            tracing::info!(
                plain = "x-1",
                spaced = "a b",
                empty = "",
                eq = "k=v",
                "two words"
            );
        });
        let (_, rest) = line.split_once(": ").unwrap();
        assert_eq!(
            rest,
            "two words plain=x-1 spaced=\"a b\" empty=\"\" eq=\"k=v\"\n"
        );
    }

    #[test]
    fn values_cannot_break_the_line_or_carry_escape_sequences() {
        let hostile = "a\nfake line\r\t\x1b[31mred\x1b[0m \"q\" \\ \u{7}";
        let text = logged(LineFormat::text(), || {
            tracing::warn!(value = %hostile, quoted = hostile, "x\ny");
        });
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\r') && !text.contains('\u{7}'));
        assert!(
            text.contains("x\\ny value=a\\nfake line\\r\\t\\x1b[31mred"),
            "{text}"
        );

        let json = logged(LineFormat::json(), || {
            tracing::warn!(value = %hostile, quoted = hostile, "x\ny");
        });
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["value"], hostile);
        assert_eq!(v["quoted"], hostile);
        assert_eq!(v["message"], "x\ny");
        assert_eq!(v["level"], "WARN");
    }

    #[test]
    fn thousandths_are_written_as_ryu_writes_them() {
        let check = |value: f64| {
            let mut w = String::new();
            if thousandths(&mut w, value) {
                assert_eq!(w, ryu::Buffer::new().format(value), "{value:e}");
            }
        };
        let thousandth = |n: u64| {
            let value = n as f64 / 1000.0;
            let mut w = String::new();
            assert!(thousandths(&mut w, value), "{n} thousandths");
            assert_eq!(w, ryu::Buffer::new().format(value), "{n} thousandths");
        };
        (0..3_000_000u64).for_each(thousandth);
        // Larger latencies (up to a billion ms), and values that are not thousandths (ryu's,
        // unless the writer takes them, in which case it must write what ryu writes).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            thousandth(x % 1_000_000_000_000);
            check(f64::from_bits(x));
            check((x % 1_000_000) as f64 / 997.0);
        }
        for value in [
            -0.0,
            -1.5,
            0.0005,
            1e9,
            999_999_999.999,
            1e-7,
            f64::MAX,
            f64::NAN,
        ] {
            check(value);
        }
        let mut w = String::new();
        assert!(!thousandths(&mut w, -0.0) && !thousandths(&mut w, 0.0005) && w.is_empty());
    }

    #[test]
    fn a_message_is_written_the_same_with_or_without_arguments() {
        for format in [LineFormat::text(), LineFormat::json()] {
            let plain = logged(format, || tracing::info!("request done"));
            let formatted = logged(format, || tracing::info!("request {}", "done"));
            let field = logged(format, || tracing::info!(message = "request done"));
            let tail = |line: &str| {
                line[line.find(" INFO").or(line.find("\"level\"")).unwrap()..].to_owned()
            };
            assert_eq!(tail(&plain), tail(&formatted));
            assert_eq!(tail(&plain), tail(&field));
            assert!(plain.contains("request done"), "{plain}");
        }
        let escaped = logged(LineFormat::text(), || tracing::info!("a\nb"));
        assert!(escaped.ends_with(": a\\nb\n"), "{escaped}");
    }

    #[test]
    fn non_finite_floats_are_json_null() {
        let json = logged(LineFormat::json(), || tracing::info!(ratio = f64::NAN, "r"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["ratio"].is_null());
    }

    #[test]
    fn the_timestamp_has_microseconds_and_changes_with_the_second() {
        let mut a = String::new();
        timestamp(&mut a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1_010));
        let mut b = String::new();
        timestamp(&mut b).unwrap();
        let (a, b) = (
            chrono::DateTime::parse_from_rfc3339(&a).unwrap(),
            chrono::DateTime::parse_from_rfc3339(&b).unwrap(),
        );
        assert!((b - a).num_milliseconds() >= 1_000, "{a} -> {b}");
    }
}
