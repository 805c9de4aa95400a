//! The listener of one port of an intercepted Service (its EndpointSlice
//! points here) and where each accepted connection goes: to the holder of
//! a global intercept as a server-initiated stream (like a C2L
//! connection, through `tunnel::stream`), through the HTTP router when the
//! port has personal intercepts, else straight to a pod.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::net::{TcpListener, TcpStream};

use super::pods::PortPlan;
use super::Routed;
use crate::metrics::Metrics;

/// `route` label values of the intercept metrics.
pub mod way {
    /// To the workstation.
    pub const WORKSTATION: &str = "workstation";
    /// To the original pods.
    pub const PODS: &str = "pods";
    /// Copies to a mirror's workstation.
    pub const MIRROR: &str = "mirror";
}

/// What the connections of one port share.
pub struct PortCtx {
    /// The Service (gone: the intercept ended).
    pub routed: Weak<Routed>,
    /// This port.
    pub plan: PortPlan,
    /// Metrics.
    pub metrics: Metrics,
    /// The bridge's settings.
    pub options: netmux_common::tunnel::stream::Options,
}

/// Accepts until aborted.
pub async fn accept(listener: TcpListener, ctx: Arc<PortCtx>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(port = ctx.plan.port, error = %e, "intercept accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move { dispatch(tcp, peer, ctx).await });
    }
}

async fn dispatch(tcp: TcpStream, peer: SocketAddr, ctx: Arc<PortCtx>) {
    let Some(routed) = ctx.routed.upgrade() else {
        return;
    };
    let port = ctx.plan.port;
    let held: Vec<_> = routed
        .held()
        .into_iter()
        .filter(|h| h.claim.port == port)
        .collect();
    if let Some(global) = held.iter().find(|h| h.claim.mode.takes_every_connection()) {
        global
            .to_workstation
            .requests
            .fetch_add(1, Ordering::Relaxed);
        ctx.metrics
            .intercept_requests
            .with_label_values(&[&routed.key, way::WORKSTATION])
            .inc();
        let ask = crate::stream::Ask {
            conn: global.via.conn().clone(),
            service: routed.id,
            key: routed.key.clone(),
            port,
            options: ctx.options,
            direction: "intercept",
            head: global.via.head(port, peer),
        };
        drop(routed);
        crate::stream::ask(&ask, tcp, peer, &ctx.metrics).await;
    } else if !held.is_empty() {
        drop(routed);
        super::router::serve(tcp, peer, ctx).await;
    } else {
        to_pod(tcp, &routed, &ctx).await;
    }
}

/// Proxies `tcp` to a pod, bytes as they are.
async fn to_pod(mut tcp: TcpStream, routed: &Routed, ctx: &PortCtx) {
    let Some((pod, addr)) = routed.pods.pick(&ctx.plan.target) else {
        tracing::info!(service = %routed.key, port = ctx.plan.port, "no ready pod for an intercepted Service's connection; reset");
        netmux_common::tunnel::pipe::abort_on_drop(&tcp);
        return;
    };
    let mut upstream = match super::pods::dial(addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(service = %routed.key, %pod, %addr, error = %e, "pod refused; reset");
            netmux_common::tunnel::pipe::abort_on_drop(&tcp);
            return;
        }
    };
    routed.to_pods.requests.fetch_add(1, Ordering::Relaxed);
    let key = routed.key.clone();
    let counts = routed.to_pods.clone();
    if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await {
        counts.bytes.fetch_add(up + down, Ordering::Relaxed);
        ctx.metrics
            .intercept_bytes
            .with_label_values(&[&key, way::PODS])
            .inc_by(up + down);
    }
}
