//! A deliberately small HTTP/1.1 server: enough for curl and byte-exact
//! tests, strict about limits, never panicking on bad input.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head (request line + headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest `/bytes/N` served (16 GiB).
const MAX_BYTES: u64 = 16 << 30;
/// A keep-alive connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

struct Request {
    method: String,
    path: String,
    content_length: u64,
    keep_alive: bool,
}

enum Head {
    Ok(Request),
    /// Answer with this status and close.
    Bad(u16, &'static str),
}

fn parse_head(head: &[u8]) -> Head {
    let Ok(text) = std::str::from_utf8(head) else {
        return Head::Bad(400, "request head is not UTF-8\n");
    };
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Bad(400, "malformed request line\n");
    };
    if method.is_empty() || !path.starts_with('/') {
        return Head::Bad(400, "malformed request line\n");
    }
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Head::Bad(505, "only HTTP/1.0 and HTTP/1.1\n"),
    };
    let mut content_length = 0u64;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Head::Bad(400, "malformed header\n");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse() {
                Ok(n) => content_length = n,
                Err(_) => return Head::Bad(400, "bad content-length\n"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Head::Bad(501, "transfer-encoding is not supported\n");
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        }
    }
    Head::Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        content_length,
        keep_alive,
    })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// The response head for a body of `len` bytes.
fn head(code: u16, len: u64, keep_alive: bool, name: &str) -> String {
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\
         X-Served-By: nx-echo {name}\r\nConnection: {}\r\n\r\n",
        reason(code),
        if keep_alive { "keep-alive" } else { "close" }
    )
}

async fn write_head(
    sock: &mut TcpStream,
    code: u16,
    len: u64,
    keep_alive: bool,
    name: &str,
) -> io::Result<()> {
    sock.write_all(head(code, len, keep_alive, name).as_bytes())
        .await
}

/// Writes a whole small response with one write, as nginx (`writev`) and
/// Go's net/http (a buffered writer flushed once) do: the head and the body
/// leave in one TCP segment, not two.
async fn respond<W: AsyncWrite + Unpin>(
    sock: &mut W,
    code: u16,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
    name: &str,
) -> io::Result<()> {
    let mut out = head(code, body.len() as u64, keep_alive, name).into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    sock.write_all(&out).await
}

/// Serves one connection until the client closes, asks to close, errs, or
/// stays idle for [`IDLE_TIMEOUT`].
pub async fn serve_connection(mut sock: TcpStream, name: String) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read a complete head.
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                respond(
                    &mut sock,
                    431,
                    b"request head too large\n",
                    false,
                    false,
                    &name,
                )
                .await?;
                return sock.shutdown().await;
            }
            let mut chunk = [0u8; 8192];
            let n = match tokio::time::timeout(IDLE_TIMEOUT, sock.read(&mut chunk)).await {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let req = match parse_head(&buf[..head_end]) {
            Head::Ok(r) => r,
            Head::Bad(code, msg) => {
                respond(&mut sock, code, msg.as_bytes(), false, false, &name).await?;
                return sock.shutdown().await;
            }
        };
        buf.drain(..head_end);
        let head_only = req.method == "HEAD";

        // POST and PUT echo the body back, streaming; other methods'
        // bodies are read and dropped.
        let echo = req.method == "POST" || req.method == "PUT";
        if echo {
            write_head(&mut sock, 200, req.content_length, req.keep_alive, &name).await?;
        }
        if !pass_body(&mut sock, &mut buf, req.content_length, echo).await? {
            return Ok(());
        }
        if !echo {
            route(&mut sock, &req, head_only, &name).await?;
        }
        if !req.keep_alive {
            return sock.shutdown().await;
        }
    }
}

/// Reads a request body of `len` bytes, the first of them already in
/// `buf`, and writes it back to `sock` (`echo`) or drops it. `false` when
/// the peer closed before the whole body came.
async fn pass_body(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    len: u64,
    echo: bool,
) -> io::Result<bool> {
    let take = usize::try_from(len).map_or(buf.len(), |l| l.min(buf.len()));
    if echo {
        sock.write_all(&buf[..take]).await?;
    }
    buf.drain(..take);
    let mut left = len - take as u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = usize::try_from(left).map_or(chunk.len(), |l| l.min(chunk.len()));
        let n = sock.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(false);
        }
        if echo {
            sock.write_all(&chunk[..n]).await?;
        }
        left -= n as u64;
    }
    Ok(true)
}

async fn route(sock: &mut TcpStream, req: &Request, head_only: bool, name: &str) -> io::Result<()> {
    let path = req.path.split('?').next().unwrap_or_default();
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<u64>() {
            Ok(len) if len <= MAX_BYTES => {
                write_head(sock, 200, len, req.keep_alive, name).await?;
                if head_only {
                    Ok(())
                } else {
                    crate::stream::send_pattern(sock, len).await
                }
            }
            Ok(_) => {
                let body = format!("at most {MAX_BYTES} bytes\n");
                respond(sock, 413, body.as_bytes(), req.keep_alive, head_only, name).await
            }
            Err(_) => {
                respond(
                    sock,
                    400,
                    b"expected /bytes/<count>\n",
                    req.keep_alive,
                    head_only,
                    name,
                )
                .await
            }
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => {
                let body = format!("status {c}\n");
                respond(sock, c, body.as_bytes(), req.keep_alive, head_only, name).await
            }
            _ => {
                respond(
                    sock,
                    400,
                    b"expected /status/<200..599>\n",
                    req.keep_alive,
                    head_only,
                    name,
                )
                .await
            }
        };
    }
    let body = format!("hello from nx-echo {name} path={}\n", req.path);
    respond(sock, 200, body.as_bytes(), req.keep_alive, head_only, name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_or_are_refused() {
        let Head::Ok(r) = parse_head(b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        else {
            panic!("valid head refused")
        };
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/x"));
        assert_eq!(r.content_length, 5);
        assert!(r.keep_alive);
        let Head::Ok(r) = parse_head(b"GET / HTTP/1.0\r\n\r\n") else {
            panic!("valid head refused")
        };
        assert!(!r.keep_alive);
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/9\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"",
        ] {
            assert!(matches!(parse_head(bad), Head::Bad(..)), "{bad:?}");
        }
    }

    /// Records each write call apart.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_small_response_leaves_in_one_write() {
        let mut w = Writes::default();
        respond(&mut w, 200, b"hello\n", true, false, "n")
            .await
            .unwrap();
        assert_eq!(w.0.len(), 1, "head and body in one write: {:?}", w.0);
        let text = String::from_utf8(w.0.remove(0)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("Connection: keep-alive\r\n\r\nhello\n"),
            "{text}"
        );

        let mut w = Writes::default();
        respond(&mut w, 404, b"gone\n", false, true, "n")
            .await
            .unwrap();
        assert_eq!(w.0.len(), 1);
        let text = String::from_utf8(w.0.remove(0)).unwrap();
        assert!(
            text.contains("Content-Length: 5\r\n"),
            "HEAD keeps the body's length: {text}"
        );
        assert!(
            text.ends_with("Connection: close\r\n\r\n"),
            "HEAD sends no body: {text}"
        );
    }
}
