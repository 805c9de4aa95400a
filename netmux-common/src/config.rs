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

/// Turns a TOML error into one naming file, line and column.
pub fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        message: e.message().to_owned(),
    }
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
