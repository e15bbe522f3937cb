//! The `.env` file: read into the environment without overriding what is
//! already set, remembering which variables it set so that a configuration
//! error can say where a value came from.
//!
//! A line that cannot be parsed is reported by file, line, column and the
//! kind of problem, never by its text: the line may hold a secret. (dotenvy's
//! own message quotes the line, and its "line index" is a column.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The `.env` file that was read, and the variables it set.
#[derive(Debug, Default)]
pub(crate) struct EnvFile {
    /// How messages name the file: `.env` in the working directory, else its
    /// path.
    shown: String,
    set: BTreeSet<String>,
}

impl EnvFile {
    /// `Some(".env")` when `var`'s value came from this file (and not from
    /// the environment, which wins).
    pub(crate) fn source_of(&self, var: &str) -> Option<&str> {
        self.set.contains(var).then_some(self.shown.as_str())
    }
}

/// Find `.env` (in the working directory, else its nearest parent that has
/// one, as dotenvy does) and load it. `Ok(None)` when there is none; `Err`
/// is the one line to print after `configuration error: `.
pub(crate) fn load() -> Result<Option<EnvFile>, String> {
    let Some(path) = find() else {
        return Ok(None);
    };
    let shown = match std::env::current_dir() {
        Ok(dir) => shown(&path, &dir),
        Err(_) => path.display().to_string(),
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("{shown}: cannot be read ({e})"))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let bytes = e.as_bytes();
            let valid = String::from_utf8_lossy(&bytes[..e.utf8_error().valid_up_to()]);
            let (line, column) = line_and_column(&valid, valid.len());
            return Err(format!(
                "{shown}, line {line}, column {column}: not UTF-8 text"
            ));
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut set = BTreeSet::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok((key, value)) => {
                if std::env::var_os(&key).is_none() {
                    std::env::set_var(&key, value);
                    set.insert(key);
                }
            }
            Err(_) => return Err(describe_parse_error(&shown, text)),
        }
    }
    Ok(Some(EnvFile { shown, set }))
}

fn find() -> Option<PathBuf> {
    let dir = std::env::current_dir().ok()?;
    dir.ancestors()
        .map(|d| d.join(".env"))
        .find(|p| p.is_file())
}

/// `<file>, line L, column C: <problem>` for the first line dotenvy cannot
/// parse; the text of the line is never part of it.
fn describe_parse_error(shown: &str, text: &str) -> String {
    match locate(text) {
        Some(p) => {
            let (line, column) = line_and_column(text, p.offset);
            format!("{shown}, line {line}, column {column}: {}", p.kind)
        }
        None => format!("{shown}: cannot be parsed (the offending line is not shown)"),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

#[derive(Debug, PartialEq, Eq)]
struct Problem {
    /// Byte offset in the file (after a BOM).
    offset: usize,
    kind: &'static str,
}

/// Where dotenvy fails on `text`, and why. dotenvy reads the file as
/// logical lines (a quoted value may span lines), each parsed on its own:
/// split the same way, ask dotenvy about each logical line alone, and map
/// its error (the line or its value part, and an index into that) back to
/// an offset in the file.
fn locate(text: &str) -> Option<Problem> {
    let (lines, unfinished) = logical_lines(text);
    for (start, line) in lines {
        let fed = format!("{line}\n");
        let Some(Err(dotenvy::Error::LineParse(part, index))) =
            dotenvy::from_read_iter(fed.as_bytes()).find(Result::is_err)
        else {
            continue;
        };
        return Some(if part == line {
            // The key or the `=`: `index` is a byte offset in the line.
            let index = floor_char_boundary(line, index);
            let before = line[..index].trim();
            let kind = if before.is_empty() || before == "export" {
                "expected a variable name (letters, digits, _ and ., not starting with a digit)"
            } else {
                "expected = after the variable name (names are letters, digits, _ and .)"
            };
            Problem {
                offset: start + index,
                kind,
            }
        } else if let Some(base) = line.trim_end().strip_suffix(part.as_str()).map(str::len) {
            // The value: `index` counts characters of the value.
            let chars: Vec<(usize, char)> = part.char_indices().collect();
            let at = chars.get(index).map_or(part.len(), |&(b, _)| b);
            let prev = index
                .checked_sub(1)
                .and_then(|i| chars.get(i))
                .map(|&(_, c)| c);
            let kind = if index < chars.len() && prev == Some('\\') {
                "unsupported escape after a backslash (use \\\\, \\n, \\\", \\', \\$ or \\ and a space)"
            } else if index < chars.len()
                && chars[..index].iter().any(|&(_, c)| c == ' ' || c == '\t')
            {
                "text after a space in an unquoted value (quote the value, or start a comment with #)"
            } else {
                "a quote or ${ in the value is never closed"
            };
            Problem {
                offset: start + base + at,
                kind,
            }
        } else {
            Problem {
                offset: start,
                kind: "this line cannot be parsed",
            }
        });
    }
    unfinished.map(|u| match u.state {
        State::Escape => Problem {
            offset: text.len(),
            kind: "the file ends right after a backslash",
        },
        State::WhiteSpace => Problem {
            offset: text.len(),
            kind: "the last line ends in a space or tab and no newline (remove it, or end the file with a newline)",
        },
        _ => Problem {
            offset: u.open_quote.unwrap_or(u.start),
            kind: "the quote opened here is never closed",
        },
    })
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// dotenvy's scanner state between characters (its `ParseState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Complete,
    Escape,
    StrongOpen,
    StrongOpenEscape,
    WeakOpen,
    WeakOpenEscape,
    WhiteSpace,
}

/// A logical line still open at the end of the file.
struct Unfinished {
    start: usize,
    state: State,
    open_quote: Option<usize>,
}

/// The logical lines dotenvy parses, as (byte offset, text), and the one
/// left open at the end of the file, if any. Mirrors dotenvy 0.15's
/// `QuotedLines`: a line continues while a quote or an escape is open; a
/// line starting with `#`, and a `#` after whitespace, end it.
fn logical_lines(text: &str) -> (Vec<(usize, &str)>, Option<Unfinished>) {
    let mut lines = Vec::new();
    let (mut start, mut state, mut open_quote) = (0, State::Complete, None);
    let mut pos = 0;
    for physical in text.split_inclusive('\n') {
        let physical_start = pos;
        pos += physical.len();
        let buf = &text[start..pos];
        if buf.trim_start().starts_with('#') {
            (start, state, open_quote) = (pos, State::Complete, None);
            continue;
        }
        let mut comment_at = None;
        for (i, c) in physical.char_indices() {
            let at = physical_start + i;
            state = match state {
                State::WhiteSpace if c == '#' => {
                    comment_at = Some(at);
                    break;
                }
                State::WhiteSpace | State::Complete => match c {
                    '\\' => State::Escape,
                    '"' => {
                        open_quote = Some(at);
                        State::WeakOpen
                    }
                    '\'' => {
                        open_quote = Some(at);
                        State::StrongOpen
                    }
                    c if state == State::Complete
                        && c.is_whitespace()
                        && c != '\n'
                        && c != '\r' =>
                    {
                        State::WhiteSpace
                    }
                    _ => State::Complete,
                },
                State::Escape => State::Complete,
                State::WeakOpen => match c {
                    '\\' => State::WeakOpenEscape,
                    '"' => State::Complete,
                    _ => State::WeakOpen,
                },
                State::WeakOpenEscape => State::WeakOpen,
                State::StrongOpen => match c {
                    '\\' => State::StrongOpenEscape,
                    '\'' => State::Complete,
                    _ => State::StrongOpen,
                },
                State::StrongOpenEscape => State::StrongOpen,
            };
        }
        if let Some(end) = comment_at {
            lines.push((start, &text[start..end]));
        } else if state == State::Complete {
            let line = buf
                .strip_suffix('\n')
                .map_or(buf, |l| l.strip_suffix('\r').unwrap_or(l));
            lines.push((start, line));
        } else {
            continue;
        }
        (start, state, open_quote) = (pos, State::Complete, None);
    }
    let unfinished = (state != State::Complete).then_some(Unfinished {
        start,
        state,
        open_quote,
    });
    (lines, unfinished)
}

/// The path to show for a `.env` found at `path` when run in `dir`.
fn shown(path: &Path, dir: &Path) -> String {
    if path.parent() == Some(dir) {
        ".env".to_owned()
    } else {
        path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> (usize, usize, &'static str) {
        let p = locate(text).unwrap_or_else(|| panic!("no problem found in {text:?}"));
        let (line, column) = line_and_column(text, p.offset);
        (line, column, p.kind)
    }

    #[test]
    fn every_problem_is_placed_on_its_line_and_column() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            ("A=1\nHAOKA172_SECRET=\"abc\nB=2\n", (2, 17), "never closed"),
            ("HAOKA172_SECRET abc\n", (1, 17), "expected ="),
            ("# c\n\nA=1\n1A=2\n", (4, 1), "expected a variable name"),
            ("A=1\n  =x\n", (2, 3), "expected a variable name"),
            ("export FOO\n", (1, 11), "expected ="),
            ("X=1\nA=x y\n", (2, 5), "after a space"),
            ("A=a\\qb\n", (1, 5), "escape"),
            ("A=\"ok\"\nB=\"multi\nline\" x\n", (3, 7), "after a space"),
            ("A=${FOO\n", (1, 7), "never closed"),
            ("A='it\n", (1, 3), "never closed"),
            ("A=abc\\", (1, 7), "after a backslash"),
            ("A=1 ", (1, 5), "no newline"),
            ("\u{4e2d}=1\n", (1, 1), "expected a variable name"),
            ("A=\u{4e2d}\u{6587} x\n", (1, 6), "after a space"),
            ("A=1\r\nB=2 3\r\n", (2, 5), "after a space"),
        ];
        for &(text, (line, column), kind) in cases {
            let got = problem(text);
            assert_eq!((got.0, got.1), (line, column), "{text:?}: {got:?}");
            assert!(
                got.2.contains(kind),
                "{text:?}: `{}` should say `{kind}`",
                got.2
            );
            // Whatever the full parse says, it fails too.
            assert!(
                dotenvy::from_read_iter(text.as_bytes()).any(|r| r.is_err()),
                "{text:?} parses"
            );
        }
    }

    #[test]
    fn a_file_dotenvy_reads_has_no_problem() {
        for text in [
            "",
            "A=1\n",
            "# only a comment",
            "A=\"multi\nline\"\nB='x' # comment\nexport C=3\n",
            "A=1 # trailing comment\n",
            "A=\"has # hash\"\n",
        ] {
            assert!(
                dotenvy::from_read_iter(text.as_bytes()).all(|r| r.is_ok()),
                "{text:?}"
            );
            assert_eq!(locate(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_message_names_the_file_line_and_column_never_the_text() {
        let text = "DATABASE_URL=postgres://u@h/db\nHAOKA172_SECRET=\"s3cr3t-value\n";
        let msg = describe_parse_error(".env", text);
        assert_eq!(
            msg,
            ".env, line 2, column 17: the quote opened here is never closed"
        );
        let msg = describe_parse_error(".env", "HAOKA172_SECRET s3cr3t-value\n");
        assert!(
            msg.starts_with(".env, line 1, column 17: expected ="),
            "{msg}"
        );
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn the_file_is_named_as_the_user_sees_it() {
        let dir = Path::new("/srv/app");
        assert_eq!(shown(&dir.join(".env"), dir), ".env");
        assert_eq!(shown(Path::new("/srv/.env"), dir), "/srv/.env");
    }
}
