//! The testbed's error type.

use std::path::PathBuf;
use std::time::Duration;

/// `Result` with the testbed's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while setting up or driving a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{stderr}{stdout}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status as text.
        status: String,
        /// Its standard error.
        stderr: String,
        /// Its standard output.
        stdout: String,
    },
    /// A command did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?}; output so far:\n{stderr}{stdout}")]
    Timeout {
        /// The command line.
        command: String,
        /// The limit.
        timeout: Duration,
        /// Standard error until then.
        stderr: String,
        /// Standard output until then.
        stdout: String,
    },
    /// A condition polled for did not become true in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    WaitTimeout {
        /// What was awaited.
        what: String,
        /// The limit.
        timeout: Duration,
    },
    /// A workspace binary is not built.
    #[error(
        "binary `{name}` not found (looked in {searched:?}); build it with \
         `cargo build --workspace --bins` or point NETMUX_BIN_DIR at it"
    )]
    BinaryNotFound {
        /// Binary name.
        name: String,
        /// Directories searched.
        searched: Vec<PathBuf>,
    },
    /// A check on transferred data failed.
    #[error("{0}")]
    Check(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
