//! Images made of host files ([`ImageSpec`]): what [`super::Dockerd::build_image`]
//! imports, since no registry is reachable from a sandbox.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::CLI_TIMEOUT;
use crate::process::ProcessBuilder;
use crate::{Error, Result};

/// An image made of host files: binaries (with the shared libraries `ldd`
/// names, so dynamically linked ones run), busybox, plain files.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    tag: String,
    files: Vec<(PathBuf, PathBuf)>,
    binaries: Vec<(PathBuf, PathBuf)>,
    contents: Vec<(PathBuf, Vec<u8>)>,
    busybox: bool,
    cmd: Vec<String>,
}

/// busybox applets linked into images with [`ImageSpec::busybox`].
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "env", "ls", "nc", "sleep", "test", "true", "false", "wget", "kill",
    "printf", "ip", "nslookup", "ps", "rm", "touch", "grep", "hostname",
];

impl ImageSpec {
    /// An empty image to be tagged `tag`.
    pub fn new(tag: &str) -> Self {
        ImageSpec {
            tag: tag.to_owned(),
            ..Default::default()
        }
    }

    /// Its tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Copies the executable `host` to `dest` (absolute) in the image,
    /// with every shared library `ldd` lists for it at the same path.
    pub fn binary(mut self, host: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        self.binaries.push((host.into(), dest.into()));
        self
    }

    /// Copies the host file `host` to `dest` in the image.
    pub fn file(mut self, host: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        self.files.push((host.into(), dest.into()));
        self
    }

    /// Writes `content` to `dest` in the image.
    pub fn content(mut self, dest: impl Into<PathBuf>, content: impl Into<Vec<u8>>) -> Self {
        self.contents.push((dest.into(), content.into()));
        self
    }

    /// Adds Debian's static busybox (`busybox-static`) as `/bin/busybox`
    /// with `/bin/sh`, `nc`, `wget` and a few more applets: a shell for
    /// health checks and clients inside containers.
    pub fn busybox(mut self) -> Self {
        self.busybox = true;
        self
    }

    /// The image's default command.
    pub fn cmd<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = argv.into_iter().map(Into::into).collect();
        self
    }

    /// The image's default command (empty: none).
    pub(super) fn default_cmd(&self) -> &[String] {
        &self.cmd
    }

    pub(super) fn populate(&self, root: &Path) -> Result<()> {
        let put = |dest: &Path| -> Result<PathBuf> {
            let rel = dest.strip_prefix("/").unwrap_or(dest);
            let path = root.join(rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(Error::io(format!("creating {}", dir.display())))?;
            }
            Ok(path)
        };
        let copy = |host: &Path, dest: &Path| -> Result<()> {
            let to = put(dest)?;
            std::fs::copy(host, &to)
                .map(|_| ())
                .map_err(Error::io(format!(
                    "copying {} into the image",
                    host.display()
                )))
        };
        for dir in ["tmp", "etc", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(dir))
                .map_err(Error::io(format!("creating {}", root.display())))?;
        }
        for (host, dest) in &self.binaries {
            copy(host, dest)?;
            for lib in shared_libraries(host)? {
                copy(&lib, &lib)?;
            }
        }
        for (host, dest) in &self.files {
            copy(host, dest)?;
        }
        for (dest, content) in &self.contents {
            let to = put(dest)?;
            std::fs::write(&to, content).map_err(Error::io(format!("writing {}", to.display())))?;
        }
        if self.busybox {
            let bb = ["/bin/busybox", "/usr/bin/busybox"]
                .into_iter()
                .map(Path::new)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    Error::Check("busybox not installed (apt-get install busybox-static)".into())
                })?;
            copy(bb, Path::new("/bin/busybox"))?;
            for applet in APPLETS {
                let link = root.join("bin").join(applet);
                if !link.exists() {
                    std::os::unix::fs::symlink("busybox", &link)
                        .map_err(Error::io(format!("linking {}", link.display())))?;
                }
            }
        }
        Ok(())
    }
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `binary`;
/// none for a static one.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = ProcessBuilder::new("ldd", None, OsStr::new("ldd"), Path::new("/"))
        .arg(binary)
        .run(CLI_TIMEOUT)?;
    // "not a dynamic executable" exits with 1: a static binary.
    if !out.success() {
        return Ok(vec![]);
    }
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => l.split(' ').next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
