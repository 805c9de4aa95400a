//! Async client checks against the `nx-echo` sample services; run them
//! inside a namespace with [`crate::Netns::block_on`]. Each verifies what it
//! receives byte-exact (count and checksum) and fails with a message saying
//! what differed.

use std::net::SocketAddr;

use sample_apps::{Pattern, StreamSum, Summary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Error, Result};

const CHUNK: usize = 64 * 1024;

fn io(what: &str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    crate::Error::io(format!("{what} {addr}"))
}

async fn send_pattern<W: AsyncWriteExt + Unpin>(w: &mut W, len: u64) -> std::io::Result<Summary> {
    let mut pattern = Pattern::new();
    let mut sum = StreamSum::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        pattern.fill(&mut buf[..n]);
        sum.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(sum.finish())
}

async fn read_summing<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Summary> {
    let mut sum = StreamSum::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(sum.finish());
        }
        sum.update(&buf[..n]);
    }
}

/// Sends `len` pattern bytes to an `nx-echo sink` at `addr`, half-closes,
/// and checks the sink's reply matches what was sent.
pub async fn upload_to_sink(addr: SocketAddr, len: u64) -> Result<()> {
    let mut sock = TcpStream::connect(addr)
        .await
        .map_err(io("connecting to", addr))?;
    let sent = send_pattern(&mut sock, len)
        .await
        .map_err(io("sending to", addr))?;
    sock.shutdown().await.map_err(io("half-closing", addr))?;
    let mut reply = String::new();
    sock.read_to_string(&mut reply)
        .await
        .map_err(io("reading the sink's reply from", addr))?;
    match Summary::parse(&reply) {
        Some(got) if got == sent => Ok(()),
        Some(got) => Err(Error::Check(format!(
            "upload to {addr}: sent {sent}, sink received {got}"
        ))),
        None => Err(Error::Check(format!(
            "upload to {addr}: sent {sent}, sink replied {reply:?}"
        ))),
    }
}

/// Asks an `nx-echo source` at `addr` for `len` bytes and checks they are
/// the pattern, complete and in order.
pub async fn download_from_source(addr: SocketAddr, len: u64) -> Result<()> {
    let mut sock = TcpStream::connect(addr)
        .await
        .map_err(io("connecting to", addr))?;
    sock.write_all(format!("{len}\n").as_bytes())
        .await
        .map_err(io("sending to", addr))?;
    let got = read_summing(&mut sock)
        .await
        .map_err(io("receiving from", addr))?;
    let want = Summary::of_pattern(len);
    if got == want {
        Ok(())
    } else {
        Err(Error::Check(format!(
            "download from {addr}: expected {want}, received {got}"
        )))
    }
}

/// Sends `len` pattern bytes to an `nx-echo tcp` at `addr` while reading
/// the echo; half-closes after sending and checks the echo is identical and
/// ends with EOF (half-close carried through).
pub async fn echo_round_trip(addr: SocketAddr, len: u64) -> Result<()> {
    let sock = TcpStream::connect(addr)
        .await
        .map_err(io("connecting to", addr))?;
    let (mut r, mut w) = sock.into_split();
    let writer = async move {
        let s = send_pattern(&mut w, len).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(s)
    };
    let (sent, got) =
        tokio::try_join!(writer, read_summing(&mut r)).map_err(io("echo with", addr))?;
    if sent == got {
        Ok(())
    } else {
        Err(Error::Check(format!(
            "echo with {addr}: sent {sent}, echoed {got}"
        )))
    }
}

/// A minimal `GET` (HTTP/1.1, `Connection: close`); returns status and body.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut sock = TcpStream::connect(addr)
        .await
        .map_err(io("connecting to", addr))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes())
        .await
        .map_err(io("sending to", addr))?;
    let mut resp = Vec::new();
    sock.read_to_end(&mut resp)
        .await
        .map_err(io("receiving from", addr))?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::Check(format!("GET {path} from {addr}: no response head")))?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Check(format!("GET {path} from {addr}: bad status line {head:?}")))?;
    Ok((status, resp[split + 4..].to_vec()))
}

/// Runs `count` concurrent [`echo_round_trip`]s against `addr`, connection
/// `i` sending `base + i * step` bytes; returns a description of each one
/// that failed or took longer than a minute.
pub async fn concurrent_echoes(addr: SocketAddr, count: u64, base: u64, step: u64) -> Vec<String> {
    let tasks: Vec<_> = (0..count)
        .map(|i| tokio::spawn(echo_round_trip(addr, base + i * step)))
        .collect();
    let mut failures = Vec::new();
    for t in tasks {
        match tokio::time::timeout(std::time::Duration::from_secs(60), t).await {
            Ok(Ok(Ok(()))) => {}
            other => failures.push(format!("{other:?}")),
        }
    }
    failures
}
