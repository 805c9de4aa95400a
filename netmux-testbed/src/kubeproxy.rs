//! A kube-proxy for the fake cluster: what makes a Service's ClusterIP
//! reach its endpoints, in user space.
//!
//! For every Service port with a ClusterIP (TCP only) it listens on
//! `ClusterIP:port` in the cluster namespace and sends each accepted
//! connection to the next ready endpoint, round-robin, of all the
//! Service's EndpointSlices, whoever manages them (the EndpointSlice
//! controller, or netmux while it intercepts). The endpoints are read at
//! accept time from the API's current objects, so once a write to the
//! slices has returned, the very next connection follows it; connections
//! already open stay where they are, as with kube-proxy's conntrack.
//!
//! Like kube-proxy's rules: slice ports are matched to the Service port by
//! name, only the slices of the ClusterIP's address family count, an
//! endpoint counts unless `conditions.ready` is `false`. A Service with no
//! ready endpoint refuses connections (reset), and so does an endpoint
//! that cannot be reached; a reset from the endpoint reaches the client
//! as a reset, a half-close as a half-close.
//!
//! User space rather than iptables DNAT: nothing depends on the iptables
//! flavour of the machine, and the decision per connection is ours to
//! explain. The one cost is the extra copy, and the backend sees the
//! proxy's address as the peer.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netmux_fakekube::FakeApi;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How long a dial to an endpoint may take before the client is reset.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// One Service port the proxy serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServicePort {
    pub(crate) namespace: String,
    pub(crate) service: String,
    /// The Service port's name ("" when unnamed): slices' ports match it.
    pub(crate) port_name: String,
}

/// The ClusterIP:port addresses the proxy listens on now.
#[derive(Debug, Clone, Default)]
pub(crate) struct Serving(Arc<Mutex<BTreeSet<SocketAddr>>>);

impl Serving {
    pub(crate) fn contains(&self, addr: &SocketAddr) -> bool {
        crate::lock(&self.0).contains(addr)
    }

    fn set(&self, addrs: BTreeSet<SocketAddr>) {
        *crate::lock(&self.0) = addrs;
    }
}

/// Every `ClusterIP:port` of `services` (TCP ports of Services with a
/// ClusterIP, every family's).
pub(crate) fn service_ports(services: &[Value]) -> BTreeMap<SocketAddr, ServicePort> {
    let mut out = BTreeMap::new();
    for svc in services {
        if svc["spec"]["type"].as_str() == Some("ExternalName") {
            continue;
        }
        let mut ips: BTreeSet<IpAddr> = svc["spec"]["clusterIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.as_str()?.parse().ok())
            .collect();
        if let Some(ip) = svc["spec"]["clusterIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
        {
            ips.insert(ip);
        }
        for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if port["protocol"].as_str().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Some(number) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for ip in &ips {
                out.insert(
                    SocketAddr::new(*ip, number),
                    ServicePort {
                        namespace: svc["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or("default")
                            .to_owned(),
                        service: svc["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                        port_name: port["name"].as_str().unwrap_or("").to_owned(),
                    },
                );
            }
        }
    }
    out
}

/// The ready endpoints of `port` in `slices` for a ClusterIP of `family`,
/// in a stable order (slice name, then the slice's order).
pub(crate) fn endpoints(slices: &[Value], port: &ServicePort, ipv6: bool) -> Vec<SocketAddr> {
    let family = if ipv6 { "IPv6" } else { "IPv4" };
    let mut mine: Vec<&Value> = slices
        .iter()
        .filter(|s| {
            s["metadata"]["namespace"].as_str() == Some(port.namespace.as_str())
                && s["metadata"]["labels"]["kubernetes.io/service-name"].as_str()
                    == Some(port.service.as_str())
                && s["addressType"].as_str() == Some(family)
        })
        .collect();
    mine.sort_by_key(|s| s["metadata"]["name"].as_str().unwrap_or("").to_owned());
    let mut out = Vec::new();
    for slice in mine {
        let number = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                p["name"].as_str().unwrap_or("") == port.port_name
                    && p["protocol"].as_str().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok());
        let Some(number) = number else {
            continue;
        };
        for e in slice["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"].as_bool() == Some(false) {
                continue;
            }
            // Consumers use the first address (the API's rule).
            if let Some(ip) = e["addresses"][0].as_str().and_then(|a| a.parse().ok()) {
                out.push(SocketAddr::new(ip, number));
            }
        }
    }
    out
}

/// Runs the proxy for `api`'s Services until dropped; must run on a
/// thread inside the cluster namespace `netns` (its sockets are there).
/// Addresses outside the namespace's local routes are added to its `lo`.
pub(crate) async fn run(api: FakeApi, netns: String, serving: Serving) {
    let mut changes = api.changes();
    let mut listeners: BTreeMap<SocketAddr, (ServicePort, tokio::task::JoinHandle<()>)> =
        BTreeMap::new();
    let mut failed: BTreeSet<SocketAddr> = BTreeSet::new();
    loop {
        let wanted = service_ports(&api.objects("/services"));
        listeners.retain(|addr, (port, task)| {
            let keep = wanted.get(addr) == Some(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (addr, port) in wanted {
            if listeners.contains_key(&addr) {
                continue;
            }
            match bind(addr, &netns).await {
                Ok(listener) => {
                    failed.remove(&addr);
                    let task = tokio::spawn(accept_loop(listener, api.clone(), port.clone()));
                    listeners.insert(addr, (port, task));
                }
                // Said once per address; tried again on the next change.
                Err(e) if failed.insert(addr) => eprintln!(
                    "netmux-testbed kube-proxy: cannot serve {addr} for Service {}/{}: {e}",
                    port.namespace, port.service
                ),
                Err(_) => {}
            }
        }
        serving.set(listeners.keys().copied().collect());
        if changes.changed().await.is_err() {
            break;
        }
    }
    for (_, (_, task)) in listeners {
        task.abort();
    }
}

async fn bind(addr: SocketAddr, netns: &str) -> io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            let cidr = match addr.ip() {
                IpAddr::V4(a) => format!("{a}/32"),
                IpAddr::V6(a) => format!("{a}/128"),
            };
            crate::netns::ip(["-n", netns, "addr", "add", &cidr, "dev", "lo"])
                .map_err(io::Error::other)?;
            TcpListener::bind(addr).await
        }
        other => other,
    }
}

async fn accept_loop(listener: TcpListener, api: FakeApi, port: ServicePort) {
    let ipv6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
    let mut next = 0usize;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or the like: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let ready = endpoints(&api.objects("discovery.k8s.io/endpointslices"), &port, ipv6);
        if ready.is_empty() {
            // kube-proxy's REJECT: the client sees a refusal.
            let _ = client.set_zero_linger();
            continue;
        }
        let target = ready[next % ready.len()];
        next = next.wrapping_add(1);
        connections.spawn(proxy(client, target));
    }
}

async fn proxy(mut client: TcpStream, target: SocketAddr) {
    let mut server = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let result = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        tokio::try_join!(one_way(cr, sw), one_way(sr, cw))
    };
    if result.is_err() {
        // A reset on either side resets the other.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// Copies until end of stream, then half-closes `to`; an error (a reset,
/// on either side) ends both directions.
async fn one_way(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc() -> Value {
        json!({"metadata": {"name": "web", "namespace": "apps"},
               "spec": {"clusterIP": "10.96.0.20",
                        "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                                  {"name": "dns", "port": 53, "protocol": "UDP"}]}})
    }

    fn slice(name: &str, managed_by: &str, eps: &[(&str, Option<bool>)], port: u16) -> Value {
        let eps: Vec<Value> = eps
            .iter()
            .map(|(ip, ready)| match ready {
                Some(r) => json!({"addresses": [ip], "conditions": {"ready": r}}),
                None => json!({"addresses": [ip], "conditions": {}}),
            })
            .collect();
        json!({"metadata": {"name": name, "namespace": "apps",
                            "labels": {"kubernetes.io/service-name": "web",
                                       "endpointslice.kubernetes.io/managed-by": managed_by}},
               "addressType": "IPv4", "endpoints": eps,
               "ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
    }

    /// A connected pair through `proxy`: (client side, backend side).
    async fn through_proxy() -> (TcpStream, TcpStream) {
        let backend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = backend.local_addr().expect("addr");
        let front_addr = front.local_addr().expect("addr");
        tokio::spawn(async move {
            let (c, _) = front.accept().await.expect("accept");
            proxy(c, target).await;
        });
        let client = TcpStream::connect(front_addr).await.expect("connect");
        let (server, _) = backend.accept().await.expect("backend accept");
        (client, server)
    }

    #[tokio::test]
    async fn a_half_close_passes_as_a_half_close() {
        let (mut client, mut server) = through_proxy().await;
        client.write_all(b"ping").await.expect("write");
        client.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read to FIN");
        assert_eq!(got, b"ping");
        // The other direction still flows after the client's FIN.
        server.write_all(b"pong").await.expect("write back");
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read answer");
        assert_eq!(back, b"pong");
    }

    #[tokio::test]
    async fn a_reset_from_the_endpoint_reaches_the_client_as_a_reset() {
        let (mut client, server) = through_proxy().await;
        server.set_zero_linger().expect("linger");
        drop(server);
        let mut buf = [0u8; 8];
        let err = client
            .read(&mut buf)
            .await
            .expect_err("a reset, not an EOF");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn an_endpoint_that_refuses_resets_the_client() {
        // A port nobody listens on: bound, then closed.
        let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = gone.local_addr().expect("addr");
        drop(gone);
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");
        tokio::spawn(async move {
            let (c, _) = front.accept().await.expect("accept");
            proxy(c, target).await;
        });
        let mut client = TcpStream::connect(front_addr).await.expect("connect");
        let mut buf = [0u8; 8];
        let err = client
            .read(&mut buf)
            .await
            .expect_err("a reset, not an EOF");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn tcp_ports_of_services_with_a_cluster_ip_are_served() {
        let mut headless = svc();
        headless["metadata"]["name"] = json!("db");
        headless["spec"]["clusterIP"] = json!("None");
        let ports = service_ports(&[svc(), headless]);
        let addr: SocketAddr = "10.96.0.20:80".parse().expect("addr");
        assert_eq!(ports.keys().copied().collect::<Vec<_>>(), vec![addr]);
        assert_eq!(ports[&addr].port_name, "http");
    }

    #[test]
    fn every_managers_ready_endpoints_count_in_a_stable_order() {
        let port = service_ports(&[svc()])
            .into_values()
            .next()
            .expect("a port");
        let controller = slice(
            "web-bcdfg",
            "endpointslice-controller.k8s.io",
            &[("10.244.0.11", Some(true)), ("10.244.0.12", Some(false))],
            8080,
        );
        let netmux = slice("web-netmux", "netmux", &[("10.250.1.2", None)], 7000);
        let mut other_ns = controller.clone();
        other_ns["metadata"]["namespace"] = json!("elsewhere");
        let mut other_port = netmux.clone();
        other_port["ports"][0]["name"] = json!("grpc");
        other_port["metadata"]["name"] = json!("web-a");
        let got = endpoints(&[netmux, other_ns, other_port, controller], &port, false);
        let want: Vec<SocketAddr> = vec![
            "10.244.0.11:8080".parse().expect("addr"),
            "10.250.1.2:7000".parse().expect("addr"),
        ];
        assert_eq!(got, want);
        assert!(endpoints(&[], &port, false).is_empty());
    }
}
