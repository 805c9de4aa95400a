//! The CLI side of the control socket: one JSON request line out, one JSON
//! response line back.

use std::path::Path;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use crate::{Request, Response};

/// Sends one request to the daemon at `path` (the CLI side).
pub async fn call(path: &Path, req: &Request) -> Result<Response, String> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        format!(
            "cannot reach netmuxd at {}: {e} (is it running? start it with `systemctl start netmuxd` or `netmuxd --config ...`)",
            path.display()
        )
    })?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    wr.write_all(&line).await.map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(rd).lines();
    let reply = lines
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("netmuxd closed the connection without answering")?;
    serde_json::from_str(&reply).map_err(|e| format!("bad reply from netmuxd: {e}"))
}
