//! Processes started inside a namespace: run to completion with a timeout,
//! or keep running behind a guard that kills them on drop.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::{Error, Result};

/// How a process is started: in which namespace, what, with which
/// environment, logging where. Made by [`crate::Sandbox::process`] or
/// [`crate::Netns::process`].
#[derive(Debug, Clone)]
pub struct ProcessBuilder {
    label: String,
    netns: Option<String>,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log_dir: PathBuf,
}

impl ProcessBuilder {
    pub(crate) fn new(label: &str, netns: Option<&str>, program: &OsStr, log_dir: &Path) -> Self {
        ProcessBuilder {
            label: label.to_owned(),
            netns: netns.map(str::to_owned),
            program: program.to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            log_dir: log_dir.to_owned(),
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        let mut s = String::new();
        if let Some(ns) = &self.netns {
            s.push_str(&format!("[{ns}] "));
        }
        s.push_str(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn command(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args);
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null());
        // Own process group: killing it takes any children along.
        cmd.process_group(0);
        cmd
    }

    /// Path of the log file of [`Self::spawn`]ed processes.
    pub fn log_path(&self) -> PathBuf {
        let safe: String = self
            .label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.log_dir.join(format!("{safe}.log"))
    }

    /// Starts the process in the background; stdout and stderr go to
    /// [`Self::log_path`] (appended, so restarts keep the history).
    pub fn spawn(self) -> Result<Process> {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(Error::io(format!("opening {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(Error::io("duplicating a log file handle"))?;
        let mut cmd = self.command();
        cmd.stdout(log).stderr(log2);
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("starting {}", self.display())))?;
        Ok(Process {
            spec: self,
            child: Some(child),
            log_path,
        })
    }

    /// Runs to completion, capturing output; kills the process group and
    /// returns [`Error::Timeout`] when `timeout` passes first. A non-zero
    /// exit is returned as an [`Output`], not an error: see [`Output::ok`].
    pub fn run(self, timeout: Duration) -> Result<Output> {
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(Error::io(format!("starting {}", self.display())))?;
        let out_reader = child.stdout.take().map(reader_thread);
        let err_reader = child.stderr.take().map(reader_thread);
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    kill_group(&mut child);
                    return Err(Error::io(format!("waiting for {}", self.display()))(e));
                }
            }
        };
        if status.is_none() {
            kill_group(&mut child);
        }
        let stdout = out_reader.map(join_reader).unwrap_or_default();
        let stderr = err_reader.map(join_reader).unwrap_or_default();
        match status {
            Some(status) => Ok(Output {
                command: self.display(),
                status,
                stdout,
                stderr,
            }),
            None => Err(Error::Timeout {
                command: self.display(),
                timeout,
                stdout,
                stderr,
            }),
        }
    }
}

fn reader_thread<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join_reader(h: std::thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What a command run with [`ProcessBuilder::run`] produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line.
    pub command: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `self` if the command succeeded, else [`Error::Command`].
    pub fn ok(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            Err(Error::Command {
                command: self.command,
                status: self.status.to_string(),
                stderr: self.stderr,
                stdout: self.stdout,
            })
        }
    }
}

/// A background process; killed with its whole process group on drop.
#[derive(Debug)]
pub struct Process {
    spec: ProcessBuilder,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Process {
    /// The label given at creation.
    pub fn label(&self) -> &str {
        &self.spec.label
    }

    /// Process id (also its process group id), if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process (and earlier runs of it) wrote so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Whether it is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Exit status if it has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` to the process group.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) else {
            return Ok(());
        };
        killpg(Pid::from_raw(pid), signal).map_err(|e| Error::Io {
            context: format!("sending {signal} to {}", self.spec.label),
            source: e.into(),
        })
    }

    /// SIGKILLs the process group and reaps the process (a crash, as far as
    /// peers can tell).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; returns
    /// the exit status if it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                // Children that ignored SIGTERM must not outlive it.
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        kill_group(&mut child);
        None
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (SIGKILL) and starts it again with the same
    /// command line, environment and log file.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let fresh = self.spec.clone().spawn()?;
        *self = fresh;
        Ok(())
    }

    /// Starts it again after [`Self::kill`] or [`Self::terminate`]; an error
    /// if it is still running.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(Error::Check(format!(
                "{} is still running",
                self.spec.label
            )));
        }
        self.child = None;
        let fresh = self.spec.clone().spawn()?;
        *self = fresh;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
