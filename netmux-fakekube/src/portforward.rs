//! Pod port-forward: the kubelet's WebSocket relay to a pod's address.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

use crate::rest::{query, status};
use crate::{lock, FakeApi};

/// `GET pods/NAME/portforward?ports=P`: upgrades to a WebSocket
/// (`v4.channel.k8s.io`) and relays channel 0 to `status.podIP:P`. Like
/// the kubelet, it first sends the port on the data and error channels,
/// reports a failed dial on the error channel, and relays each direction
/// until it ends.
pub(crate) async fn portforward(
    axum::extract::State(fake): axum::extract::State<FakeApi>,
    axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    if let Some(refused) = fake.admit(&method, &uri, &headers) {
        return refused;
    }
    // Authorized as the API server does a WebSocket GET: `get` on
    // pods/portforward (with require_auth).
    if let Some(refused) = crate::rest::refuse_get(&fake, &headers, "/pods/portforward", &ns, &name)
    {
        return refused;
    }
    let q = query(&uri);
    let Some(port) = q.get("ports").and_then(|p| p.parse::<u16>().ok()) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "ports: one port number expected",
        );
    };
    let Some(pod) = fake.get("/pods", &ns, &name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        );
    };
    let Some(ip) = pod["status"]["podIP"]
        .as_str()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "pod has no IP: not running",
        );
    };
    let Ok(ws) = ws else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "port-forward needs a WebSocket upgrade",
        );
    };
    lock(&fake.state).forwards += 1;
    let mut generation = fake.generation.subscribe();
    ws.protocols(["v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            tokio::select! {
                _ = relay(socket, SocketAddr::new(ip, port)) => {}
                _ = generation.changed() => {}
            }
        })
}

async fn relay(mut socket: axum::extract::ws::WebSocket, target: SocketAddr) {
    use axum::extract::ws::Message;
    use futures::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let port = target.port().to_le_bytes();
    for ch in [0u8, 1] {
        let frame = Bytes::from(vec![ch, port[0], port[1]]);
        if socket.send(Message::Binary(frame)).await.is_err() {
            return;
        }
    }
    let tcp = match tokio::net::TcpStream::connect(target).await {
        Ok(t) => t,
        Err(e) => {
            let mut msg = vec![1u8];
            msg.extend_from_slice(
                format!("error forwarding port {} to pod: {e}", target.port()).as_bytes(),
            );
            let _ = socket.send(Message::Binary(Bytes::from(msg))).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let (mut sink, mut stream) = socket.split();
    let to_pod = async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if b.len() > 1 && b[0] == 0 => match wr.write_all(&b[1..]).await
                {
                    Ok(()) => {}
                    Err(_) => break,
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf[1..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf[0] = 0;
                    let frame = Bytes::copy_from_slice(&buf[..=n]);
                    if sink.send(Message::Binary(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    // The forward ends when either side ends, as a kubelet's does once
    // the pod connection closes.
    tokio::select! {
        _ = to_pod => {}
        _ = from_pod => {}
    }
}
