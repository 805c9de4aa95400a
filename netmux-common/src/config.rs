//! Errors shared by every netmux configuration file (daemon config, server
//! config, services file): each names the file, and the line and column or
//! the key, so the user knows what to fix.

use std::path::{Path, PathBuf};

/// Why a configuration file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax or schema error.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: `{field}`: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Key path.
        field: String,
        /// What is wrong and the fix.
        message: String,
    },
}

/// Turns a TOML error into one naming file, line and column, the key or
/// table header of that line when the file is valid TOML (never a value: a
/// line may hold a token), and for a table written where a list of tables
/// belongs, the fix.
pub fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let start = e.span().map(|s| s.start);
    let (line, column) = start.map(|s| line_col(text, s)).unwrap_or((0, 0));
    let mut message = e.message().to_owned();
    // Only in a document that is valid TOML (a schema error) does the error
    // sit at a key, a header or a value's start; a syntax error may sit
    // inside a value (a token), so its line is not quoted.
    if let Some(at) = start.filter(|_| toml::from_str::<toml::Table>(text).is_ok()) {
        if let Some(shown) = line_shown(text, at) {
            message = format!("`{shown}`: {message}");
        }
        if let Some(fix) = list_of_tables_fix(text, at, e.message()) {
            message = format!("{message}; {fix}");
        }
    }
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

/// The line holding byte `offset`, trimmed: a table header as written, a
/// key-value line as `key = …`; `None` for any other line (empty, or inside
/// a multi-line value).
fn line_shown(text: &str, offset: usize) -> Option<String> {
    let line = line_at(text, offset)?.trim();
    let shown = if line.starts_with('[') {
        line.to_owned()
    } else {
        // Neither a header nor a key: a line inside a multi-line value.
        let (key, _) = line.split_once('=')?;
        format!("{} = …", key.trim())
    };
    const MAX: usize = 80;
    Some(match shown.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &shown[..cut]),
        None => shown,
    })
    .filter(|s| !s.is_empty())
}

/// `[endpoint]` or `[endpoint.demo]` where the file wants a list (TOML:
/// "invalid type: map, expected a sequence" at the header or at its key):
/// the two ways to write a list, `[[endpoint]]` per entry or `endpoint =
/// [ … ]`.
fn list_of_tables_fix(text: &str, offset: usize, message: &str) -> Option<String> {
    if !message.contains("map, expected a sequence") {
        return None;
    }
    let header = line_at(text, offset)?.trim();
    if header.starts_with("[[") {
        return None;
    }
    let inner = header.strip_prefix('[')?.split(']').next()?;
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect()
    };
    // At a key inside the header: that key; at the header itself: its
    // last key (`[endpoint]` is the table `endpoint`).
    let key = match text.get(offset..)? {
        rest if rest.starts_with('[') => ident(inner.rsplit('.').next()?),
        rest => ident(rest),
    };
    (!key.is_empty()).then(|| {
        format!(
            "`{key}` holds a list: write `[[{key}]]` above each entry's keys, or `{key} = [ … ]`"
        )
    })
}

/// The line of `text` holding byte `offset` (`None` off a character).
fn line_at(text: &str, offset: usize) -> Option<&str> {
    let offset = offset.min(text.len());
    let (before, after) = (text.get(..offset)?, text.get(offset..)?);
    let begin = before.rfind('\n').map_or(0, |i| i + 1);
    let end = after.find('\n').map_or(text.len(), |i| offset + i);
    text.get(begin..end)
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Reads a configuration file, mapping failure to [`ConfigError::Read`].
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The most async runtime workers a `worker_threads` key accepts.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Validates a `worker_threads` value (netmuxd and netmux-server): 0 means
/// one per CPU; `Err` is the message for the key.
pub fn worker_threads(n: usize) -> Result<usize, String> {
    match n {
        0 => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
        n if n > MAX_WORKER_THREADS => Err(format!(
            "{n} is more than {MAX_WORKER_THREADS}; use 1 (the default), a count, or 0 for one per CPU"
        )),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
        assert_eq!(line_at("a\nb = 1\nc", 3), Some("b = 1"));
        assert_eq!(line_at("é", 1), None, "not on a character");
    }

    fn message(text: &str) -> String {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct File {
            address_range: Option<String>,
            token: Option<String>,
            endpoint: Option<Vec<Endpoint>>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Endpoint {
            name: String,
        }
        let e = toml::from_str::<File>(text).unwrap_err();
        parse_error(Path::new("d.toml"), text, &e).to_string()
    }

    #[test]
    fn a_parse_error_names_the_key_and_not_the_value() {
        let m = message("address_range = 5\n");
        assert!(
            m.starts_with("d.toml:1:17: `address_range = …`: invalid type"),
            "{m}"
        );
        let m = message("token = 12345\n");
        assert!(m.contains("d.toml:1:9: `token = …`: invalid type"), "{m}");
        let m = message("# comment\ntoken = \"s3cret\n");
        assert!(m.starts_with("d.toml:2:") && !m.contains("s3cret"), "{m}");
        let m = message("token = \"\"\"\ns3cret\n");
        assert!(
            !m.contains("s3cret"),
            "nor a line of a multi-line value: {m}"
        );
    }

    #[test]
    fn a_table_where_a_list_of_tables_belongs_gets_the_fix() {
        for text in [
            "[endpoint]\nname = \"demo\"\n",
            "[endpoint.demo]\nname = \"demo\"\n",
        ] {
            let m = message(text);
            assert!(
                m.contains("expected a sequence")
                    && m.ends_with(
                        "`endpoint` holds a list: write `[[endpoint]]` above each entry's keys, \
                         or `endpoint = [ … ]`"
                    ),
                "{text:?}: {m}"
            );
        }
        let m = message("[[endpoint]]\nnme = \"demo\"\n");
        assert!(!m.contains("holds a list"), "{m}");
    }

    #[test]
    fn worker_threads_are_a_count_or_one_per_cpu() {
        assert_eq!(worker_threads(1), Ok(1));
        assert_eq!(worker_threads(3), Ok(3));
        assert!(worker_threads(0).unwrap() >= 1, "0 means one per CPU");
        let err = worker_threads(MAX_WORKER_THREADS + 1).unwrap_err();
        assert!(err.contains("one per CPU"), "{err}");
    }
}
