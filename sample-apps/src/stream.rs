//! Raw TCP modes: echo, sink, source.

use std::io;

use sample_apps::{Pattern, StreamSum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest byte count `source` accepts (1 TiB): bounds a typo, not a test.
const MAX_SOURCE_LEN: u64 = 1 << 40;

/// Echoes until the client's EOF, then shuts the write side.
pub async fn echo(mut sock: TcpStream) -> io::Result<()> {
    let (mut r, mut w) = sock.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

/// Reads to EOF, then answers with the byte count and checksum.
pub async fn sink(mut sock: TcpStream) -> io::Result<()> {
    let mut sum = StreamSum::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
    }
    sock.write_all(format!("{}\n", sum.finish()).as_bytes())
        .await?;
    sock.shutdown().await
}

/// Reads a decimal count and a newline, then sends that many pattern bytes.
pub async fn source(mut sock: TcpStream) -> io::Result<()> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if sock.read(&mut byte).await? == 0 {
            return Ok(());
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > 32 {
            sock.write_all(b"error: expected a byte count and a newline\n")
                .await?;
            return sock.shutdown().await;
        }
    }
    let len = match std::str::from_utf8(&line)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        Some(n) if n <= MAX_SOURCE_LEN => n,
        _ => {
            sock.write_all(b"error: expected a byte count and a newline\n")
                .await?;
            return sock.shutdown().await;
        }
    };
    send_pattern(&mut sock, len).await?;
    sock.shutdown().await
}

/// Writes the first `len` pattern bytes.
pub async fn send_pattern<W: AsyncWriteExt + Unpin>(w: &mut W, len: u64) -> io::Result<()> {
    let mut pattern = Pattern::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}
