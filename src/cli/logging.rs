//! `RUST_LOG`, checked before env_logger sees it: env_logger ignores what it
//! cannot read, and a directive naming no real target turns every line off,
//! so a typo would silence the service. A filter that is not understood is
//! reported in one line and the default is used instead.

use std::str::FromStr;

use log::LevelFilter;

include!(concat!(env!("OUT_DIR"), "/log_crates.rs"));

const LEVELS: &str = "off, error, warn, info, debug or trace";

/// `Ok(())` when env_logger reads `spec` as meant: comma-separated
/// directives, each `level`, `target` or `target=level`, where a level is a
/// level name and a target starts with a crate of this program
/// (`haoka_sync`, `actix_web`, …), optionally followed by `/filter`.
/// `Err` says what is wrong.
pub(crate) fn check(spec: &str) -> Result<(), String> {
    let mut parts = spec.splitn(2, '/');
    let directives = parts.next().unwrap_or("");
    if parts.next().is_some_and(|filter| filter.contains('/')) {
        return Err("it has more than one `/`".into());
    }
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let mut halves = d.split('=');
        let (target, level) = (halves.next().unwrap_or("").trim(), halves.next());
        if halves.next().is_some() {
            return Err(format!("`{d}` has more than one `=`"));
        }
        match level.map(str::trim) {
            None if LevelFilter::from_str(target).is_ok() => {}
            None | Some("") => check_target(target, d)?,
            Some(level) => {
                if LevelFilter::from_str(level).is_err() {
                    return Err(format!("`{level}` in `{d}` is not a level ({LEVELS})"));
                }
                check_target(target, d)?;
            }
        }
    }
    Ok(())
}

fn check_target(target: &str, directive: &str) -> Result<(), String> {
    let krate = target.split("::").next().unwrap_or("");
    if CRATES.contains(&krate) {
        return Ok(());
    }
    let hint = match krate.replace('-', "_") {
        k if k != krate && CRATES.contains(&k.as_str()) => format!("; did you mean {k}?"),
        _ => String::new(),
    };
    Err(format!(
        "`{directive}` is neither a level ({LEVELS}) nor a target of haoka-sync (a module path such as haoka_sync or actix_web){hint}"
    ))
}

/// The filter to give env_logger, and the one-line warning to print when
/// `spec` (`RUST_LOG`, from `source` when not the environment) is not
/// understood.
pub(crate) fn filter(
    spec: Option<&str>,
    source: Option<&str>,
    default: &str,
) -> (String, Option<String>) {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty());
    let Some(spec) = spec else {
        return (default.to_owned(), None);
    };
    match check(spec) {
        Ok(()) => (spec.to_owned(), None),
        Err(why) => {
            let from = source.map(|s| format!(" (from {s})")).unwrap_or_default();
            let warning = format!(
                "RUST_LOG{from} `{spec}` is not understood ({why}): falling back to `{default}`"
            );
            // One line, whatever the variable holds.
            let warning = warning
                .chars()
                .flat_map(|c| match c.is_control() {
                    true => c.escape_default().collect::<Vec<_>>(),
                    false => vec![c],
                })
                .collect();
            (default.to_owned(), Some(warning))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_env_logger_reads_as_meant_pass() {
        for spec in [
            "info",
            "WARN",
            "off",
            "haoka_sync=debug",
            "info,actix_web=warn,haoka_sync::poller=trace",
            "haoka_sync",
            " debug , ",
            "warn/callback",
            "haoka_sync=",
        ] {
            assert_eq!(check(spec), Ok(()), "{spec}");
        }
    }

    #[test]
    fn filters_that_would_silence_or_be_ignored_are_refused() {
        for (spec, why) in [
            ("nonsense", "`nonsense` is neither a level"),
            ("verbose", "neither a level"),
            (
                "haoka_sync=loud",
                "`loud` in `haoka_sync=loud` is not a level",
            ),
            ("info,haoka-sync=debug", "did you mean haoka_sync?"),
            ("a=b=c", "more than one `=`"),
            ("info/a/b", "more than one `/`"),
        ] {
            let e = check(spec).unwrap_err();
            assert!(e.contains(why), "{spec}: `{e}` should say `{why}`");
        }
    }

    #[test]
    fn a_bad_filter_falls_back_with_one_line_naming_the_default() {
        assert_eq!(filter(None, None, "info"), ("info".into(), None));
        assert_eq!(filter(Some("  "), None, "warn"), ("warn".into(), None));
        assert_eq!(
            filter(Some("haoka_sync=debug"), None, "info"),
            ("haoka_sync=debug".into(), None)
        );
        let (used, warning) = filter(Some("nonsense"), Some(".env"), "info");
        assert_eq!(used, "info");
        let warning = warning.unwrap();
        assert!(
            warning.starts_with("RUST_LOG (from .env) `nonsense` is not understood"),
            "{warning}"
        );
        assert!(warning.ends_with("falling back to `info`"), "{warning}");
        let (_, warning) = filter(Some("x\ny"), None, "warn");
        assert!(!warning.unwrap().contains('\n'));
    }
}
