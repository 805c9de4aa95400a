//! A minimal, deterministic ustar writer for the image layer and the image
//! archive: every entry's owner, mode and time are given explicitly, so the
//! same inputs give the same bytes (and the same digests) on every machine.
//! GNU tar would need a dozen flags to promise the same; the format is small.

use anyhow::{ensure, Result};

const BLOCK: usize = 512;

/// A tar archive being built in memory.
#[derive(Debug, Default)]
pub(crate) struct Tar {
    out: Vec<u8>,
}

/// Owner, mode and time of an entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

impl Tar {
    /// A directory entry (`path` without a trailing slash).
    pub(crate) fn dir(&mut self, path: &str, meta: Meta) -> Result<()> {
        self.header(&format!("{path}/"), 0, b'5', meta)
    }

    /// A regular file.
    pub(crate) fn file(&mut self, path: &str, contents: &[u8], meta: Meta) -> Result<()> {
        self.header(path, contents.len() as u64, b'0', meta)?;
        self.out.extend_from_slice(contents);
        let pad = (BLOCK - contents.len() % BLOCK) % BLOCK;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    /// The archive, with its two zero end blocks.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 2 * BLOCK));
        self.out
    }

    fn header(&mut self, path: &str, size: u64, kind: u8, m: Meta) -> Result<()> {
        ensure!(
            path.len() < 100 && path.is_ascii() && !path.starts_with('/'),
            "tar entry {path:?}: only relative ASCII names under 100 bytes are written"
        );
        let mut h = [0u8; BLOCK];
        h[..path.len()].copy_from_slice(path.as_bytes());
        octal(&mut h[100..108], m.mode.into())?;
        octal(&mut h[108..116], m.uid.into())?;
        octal(&mut h[116..124], m.gid.into())?;
        octal(&mut h[124..136], size)?;
        octal(&mut h[136..148], m.mtime)?;
        h[148..156].fill(b' ');
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        // Six octal digits, NUL, space (what GNU tar writes).
        let digits = format!("{sum:06o}");
        h[148..154].copy_from_slice(digits.as_bytes());
        h[154] = 0;
        h[155] = b' ';
        self.out.extend_from_slice(&h);
        Ok(())
    }
}

/// `value` as zero-padded octal filling `field` but its last byte (NUL).
fn octal(field: &mut [u8], value: u64) -> Result<()> {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    ensure!(
        s.len() == width,
        "tar field overflow: {value} needs more than {width} octal digits"
    );
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_tar_reads_what_we_write() {
        let meta = Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        };
        let mut t = Tar::default();
        t.dir("etc", meta).expect("dir");
        t.file(
            "etc/passwd",
            b"root:x:0:0::/:/x\n",
            Meta {
                mode: 0o644,
                ..meta
            },
        )
        .expect("file");
        let bytes = t.finish();
        assert_eq!(bytes.len() % BLOCK, 0);
        let dir = std::env::temp_dir().join(format!("xtask-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("t.tar");
        std::fs::write(&path, &bytes).expect("write");
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&path)
            .output()
            .expect("run tar");
        let _ = std::fs::remove_dir_all(&dir);
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "tar -t: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(listing.contains("drwxr-xr-x 0/0"), "{listing}");
        assert!(
            listing.contains("-rw-r--r-- 0/0              17"),
            "{listing}"
        );
        assert!(listing.contains("etc/passwd"), "{listing}");
    }

    #[test]
    fn long_or_absolute_names_are_refused() {
        let meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        let mut t = Tar::default();
        assert!(t.file("/etc/passwd", b"", meta).is_err());
        assert!(t.file(&"a".repeat(100), b"", meta).is_err());
    }
}
