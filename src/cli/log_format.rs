//! `LOG_FORMAT`: what goes to stderr, the log stream. `text` is env_logger's
//! own format, as it always was; `json` is one JSON object a line (`time`,
//! `level`, `target`, `message`, then the record's key-values: `vendor`,
//! `order_id`, `request_id`, `outcome`, …) for log shippers.
//!
//! The rule for call sites: everything a line carries as a key-value is
//! also said in its message, so text mode prints the message alone and reads
//! as before.
//!
//! Must never: write anything to stderr in JSON mode that is not one JSON
//! object on one line (records, the start-up warning, the final error,
//! `track`'s progress and panics all go through here), or build JSON by
//! hand (serde_json encodes every line).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use log::kv::{self, Key, Source, ToValue, Value, VisitSource, VisitValue};
use log::Level;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::config::LogFormat;

/// Set once the format is known (early from the process environment, for
/// a usage error; then from `LOG_FORMAT` after `.env`).
static JSON: AtomicBool = AtomicBool::new(false);

/// Remember `format` for the lines written outside the logger (`note`).
pub(crate) fn assume(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::SeqCst);
}

/// Install the logger with env_logger's `filter`, and in JSON mode a panic
/// hook that writes the panic as one JSON line instead of the default hook's
/// text.
pub(crate) fn init(format: LogFormat, filter: &str) {
    assume(format);
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::new().write_style("RUST_LOG_STYLE"));
    builder.parse_filters(filter);
    if format == LogFormat::Json {
        builder
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| writeln!(buf, "{}", record_line(Utc::now(), record)));
        std::panic::set_hook(Box::new(|info| {
            let line = panic_line(info);
            let _ = std::io::stderr()
                .lock()
                .write_all(format!("{line}\n").as_bytes());
        }));
    }
    builder.init();
}

/// A line on stderr that is not a log record and ignores `RUST_LOG` (the
/// warning about `RUST_LOG` itself, the final error of a command,
/// progress): `{prefix}{message}` in text mode, as these lines always
/// read, or a JSON line in JSON mode.
pub(crate) fn note(level: Level, target: &str, prefix: &str, message: &str, kvs: &dyn Source) {
    let line = if JSON.load(Ordering::SeqCst) {
        json_line(Utc::now(), level, target, message, kvs)
    } else {
        format!("{prefix}{message}")
    };
    // Whole, in one write: a log line from another thread cannot split it.
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{line}\n").as_bytes());
}

/// A log record as its JSON line.
fn record_line(time: DateTime<Utc>, record: &log::Record<'_>) -> String {
    json_line(
        time,
        record.level(),
        record.target(),
        &record.args().to_string(),
        record.key_values(),
    )
}

/// One JSON object, without the newline: `time` (RFC 3339, UTC,
/// milliseconds), `level` (`error` … `trace`), `target`, `message`, then the
/// key-values in order. A key-value whose value is `None` is left out (not
/// known); one whose key is taken gets `_` appended until it is free.
pub(crate) fn json_line(
    time: DateTime<Utc>,
    level: Level,
    target: &str,
    message: &str,
    kvs: &dyn Source,
) -> String {
    let mut fields = Fields(Vec::new());
    // Our visitor never fails; a Source that does keeps what it gave.
    let _ = kvs.visit(&mut fields);
    let line = Line {
        time: time.to_rfc3339_opts(SecondsFormat::Millis, true),
        level: level_name(level),
        target,
        message,
        fields: fields.0,
    };
    serde_json::to_string(&line).unwrap_or_else(|e| {
        // Not reachable with string keys and serde_json values; stay valid.
        serde_json::json!({"level": "error", "message": format!("log line not encoded: {e}")})
            .to_string()
    })
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

const RESERVED: [&str; 4] = ["time", "level", "target", "message"];

struct Line<'a> {
    time: String,
    level: &'static str,
    target: &'a str,
    message: &'a str,
    fields: Vec<(String, serde_json::Value)>,
}

impl Serialize for Line<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(RESERVED.len() + self.fields.len()))?;
        map.serialize_entry("time", &self.time)?;
        map.serialize_entry("level", self.level)?;
        map.serialize_entry("target", self.target)?;
        map.serialize_entry("message", self.message)?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

struct Fields(Vec<(String, serde_json::Value)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let mut json = Json(serde_json::Value::Null);
        value.visit(&mut json)?;
        if json.0.is_null() {
            return Ok(());
        }
        let mut key = key.as_str().to_owned();
        while RESERVED.contains(&key.as_str()) || self.0.iter().any(|(k, _)| *k == key) {
            key.push('_');
        }
        self.0.push((key, json.0));
        Ok(())
    }
}

/// A key-value's value as JSON: numbers and booleans as themselves, text
/// and anything captured with `%`/`?` as a string, `None` as null.
struct Json(serde_json::Value);

impl<'v> VisitValue<'v> for Json {
    fn visit_any(&mut self, value: Value) -> Result<(), kv::Error> {
        self.0 = value.to_string().into();
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), kv::Error> {
        self.0 = serde_json::Value::Null;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), kv::Error> {
        self.0 = match u64::try_from(value) {
            Ok(v) => v.into(),
            Err(_) => value.to_string().into(),
        };
        Ok(())
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), kv::Error> {
        self.0 = match i64::try_from(value) {
            Ok(v) => v.into(),
            Err(_) => value.to_string().into(),
        };
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), kv::Error> {
        // JSON has no NaN or infinity: those go as text.
        self.0 = serde_json::Number::from_f64(value)
            .map_or_else(|| value.to_string().into(), serde_json::Value::Number);
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), kv::Error> {
        self.0 = value.into();
        Ok(())
    }

    fn visit_char(&mut self, value: char) -> Result<(), kv::Error> {
        self.0 = value.to_string().into();
        Ok(())
    }
}

/// What the panic hook writes in JSON mode: the default hook's text
/// (thread, place, payload) as one `error` line, target `panic`, with the
/// backtrace as a field when `RUST_BACKTRACE` asks for one.
fn panic_line(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_owned());
    let place = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("<unnamed>");
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
        .then(|| backtrace.to_string());
    let message = format!("thread '{thread}' panicked at {place}: {what}");
    let backtrace = backtrace.as_deref();
    let kvs: [(&str, Value); 3] = [
        ("thread", thread.into()),
        ("location", place.as_str().into()),
        ("backtrace", backtrace.to_value()),
    ];
    json_line(Utc::now(), Level::Error, "panic", &message, &kvs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T02:03:04.5678Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn parse(line: &str) -> serde_json::Map<String, serde_json::Value> {
        assert!(!line.contains('\n'), "{line}");
        match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn a_line_has_time_level_target_message_then_the_key_values_in_order() {
        let line = json_line(
            at(),
            Level::Warn,
            "haoka_sync::http::callbacks",
            "callback haoka172 order=X1 request_id=R1: bad_signature (wrong key)",
            &[
                ("vendor", "haoka172".to_value()),
                ("order_id", "X1".to_value()),
                ("request_id", "R1".to_value()),
                ("outcome", "bad_signature".to_value()),
            ],
        );
        assert_eq!(
            line,
            r#"{"time":"2026-12-01T02:03:04.567Z","level":"warn","target":"haoka_sync::http::callbacks","message":"callback haoka172 order=X1 request_id=R1: bad_signature (wrong key)","vendor":"haoka172","order_id":"X1","request_id":"R1","outcome":"bad_signature"}"#
        );
    }

    #[test]
    fn quotes_newlines_and_non_ascii_in_a_message_stay_on_one_valid_line() {
        let message = "已发货 \"quoted\" back\\slash\nsecond line\ttab \u{1} \u{2028} 🚀";
        let line = json_line(at(), Level::Info, "t", message, &[("标签", "待处理\n")]);
        assert_eq!(line.lines().count(), 1, "{line}");
        let m = parse(&line);
        assert_eq!(m["message"], message);
        assert_eq!(m["标签"], "待处理\n");
    }

    #[test]
    fn key_values_keep_their_type_and_unknown_ones_are_left_out() {
        #[derive(Debug)]
        struct Shown;
        impl std::fmt::Display for Shown {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("shown \"as\" text")
            }
        }
        let none: Option<&str> = None;
        let kvs: Vec<(&str, Value)> = vec![
            ("due", 12u32.to_value()),
            ("delta", (-3i64).to_value()),
            ("big", u128::MAX.to_value()),
            ("ratio", 0.25f64.to_value()),
            ("nan", f64::NAN.to_value()),
            ("ok", true.to_value()),
            ("initial", 'x'.to_value()),
            ("order_id", none.to_value()),
            ("request_id", Some("R9").to_value()),
            ("display", Value::from_display(&Shown)),
            ("debug", Value::from_debug(&Shown)),
        ];
        let m = parse(&json_line(at(), Level::Debug, "t", "m", &kvs));
        assert_eq!(m["level"], "debug");
        assert_eq!(m["due"], 12);
        assert_eq!(m["delta"], -3);
        assert_eq!(m["big"], u128::MAX.to_string());
        assert_eq!(m["ratio"], 0.25);
        assert_eq!(m["nan"], "NaN");
        assert_eq!(m["ok"], true);
        assert_eq!(m["initial"], "x");
        assert!(!m.contains_key("order_id"), "{m:?}");
        assert_eq!(m["request_id"], "R9");
        assert_eq!(m["display"], "shown \"as\" text");
        assert_eq!(m["debug"], "Shown");
    }

    #[test]
    fn a_key_that_is_taken_is_renamed_not_lost() {
        let kvs = [
            ("message", "from kv"),
            ("vendor", "a"),
            ("vendor", "b"),
            ("time", "t"),
        ];
        let m = parse(&json_line(at(), Level::Error, "x", "the message", &kvs));
        assert_eq!(m["message"], "the message");
        assert_eq!(m["message_"], "from kv");
        assert_eq!(m["vendor"], "a");
        assert_eq!(m["vendor_"], "b");
        assert_eq!(m["time"], "2026-12-01T02:03:04.567Z");
        assert_eq!(m["time_"], "t");
    }

    #[test]
    fn a_record_from_the_log_macros_carries_its_key_values() {
        let kvs: [(&str, Value); 2] = [("vendor", "haoka172".into()), ("changed", 2u32.into())];
        let line = |args: std::fmt::Arguments| {
            let record = log::Record::builder()
                .level(Level::Info)
                .target("haoka_sync::poller")
                .args(args)
                .key_values(&kvs)
                .build();
            record_line(at(), &record)
        };
        let vendor = "haoka172";
        let m = parse(&line(format_args!("poll pass: {vendor}: due 2")));
        assert_eq!(m["message"], "poll pass: haoka172: due 2");
        assert_eq!(m["target"], "haoka_sync::poller");
        assert_eq!(m["vendor"], "haoka172");
        assert_eq!(m["changed"], 2);
    }

    #[test]
    fn a_panic_is_one_error_line_naming_its_thread_place_and_payload() {
        static LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            LINES.lock().unwrap().push(panic_line(info));
        }));
        let worker = std::thread::Builder::new()
            .name("ingest-writer-9".into())
            .spawn(|| panic!("boom \"quoted\"\nsecond line {}", 42))
            .unwrap();
        assert!(worker.join().is_err());
        std::panic::set_hook(previous);
        let lines = LINES.lock().unwrap();
        // Another test may have panicked meanwhile: ours is the one named.
        let line = lines
            .iter()
            .find(|l| l.contains("ingest-writer-9"))
            .unwrap_or_else(|| panic!("{lines:?}"));
        let m = parse(line);
        assert_eq!(m["level"], "error");
        assert_eq!(m["target"], "panic");
        assert_eq!(m["thread"], "ingest-writer-9");
        assert!(m["location"]
            .as_str()
            .unwrap()
            .starts_with("src/cli/log_format.rs:"));
        let message = m["message"].as_str().unwrap();
        assert!(
            message.starts_with("thread 'ingest-writer-9' panicked at src/cli/log_format.rs:")
                && message.ends_with(": boom \"quoted\"\nsecond line 42"),
            "{message}"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Any text, often with what JSON must escape or keep as is.
        fn text() -> impl Strategy<Value = String> {
            let tricky = prop::sample::select(vec![
                '"', '\\', '\n', '\r', '\t', '\u{0}', '\u{1b}', '\u{7f}', '\u{2028}', '已', '🚀',
            ]);
            prop::collection::vec(prop_oneof![any::<char>(), tricky], 0..40)
                .prop_map(|chars| chars.into_iter().collect())
        }

        fn value() -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                text().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<bool>().prop_map(serde_json::Value::from),
            ]
        }

        /// Keys that often collide with each other or with the line's own.
        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec!["time", "message", "vendor", "order_id", "level_"])
                    .prop_map(str::to_owned),
                text(),
            ]
        }

        proptest! {
            #![proptest_config(crate::test_support::proptest_config(256))]

            #[test]
            fn any_message_and_key_values_make_exactly_one_json_object_line(
                message in text(),
                target in text(),
                kvs in prop::collection::vec((key(), value()), 0..6),
            ) {
                let values: Vec<(&str, Value)> = kvs
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            serde_json::Value::String(s) => Value::from(s.as_str()),
                            serde_json::Value::Bool(b) => Value::from(*b),
                            n => match n.as_u64() {
                                Some(u) => Value::from(u),
                                None => Value::from(n.as_i64().unwrap_or_default()),
                            },
                        };
                        (k.as_str(), v)
                    })
                    .collect();
                let line = json_line(at(), Level::Info, &target, &message, &values);
                prop_assert!(!line.contains('\n') && !line.contains('\r'), "{}", line);
                let m = match serde_json::from_str(&line) {
                    Ok(serde_json::Value::Object(m)) => m,
                    other => return Err(TestCaseError::fail(format!("{line}: {other:?}"))),
                };
                prop_assert_eq!(&m["message"], &serde_json::Value::from(message.as_str()));
                prop_assert_eq!(&m["target"], &serde_json::Value::from(target.as_str()));
                // Every key-value is there, under its key or a renamed one.
                prop_assert_eq!(m.len(), RESERVED.len() + kvs.len());
                let mut fields: Vec<String> = m
                    .iter()
                    .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
                    .map(|(_, v)| v.to_string())
                    .collect();
                let mut wanted: Vec<String> = kvs.iter().map(|(_, v)| v.to_string()).collect();
                fields.sort();
                wanted.sort();
                prop_assert_eq!(fields, wanted);
            }
        }
    }
}
