//! `launch`: one started service's address, listeners and redirects.
//! What is half done when a step fails is undone by one [`Rollback`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use netmux_common::proto::catalog::{Protocol, Service};
use netmux_common::sync::lock;

use super::{Connected, Daemon, Running, ServiceRef};
use crate::endpoint::EndpointStatus;
use crate::listeners::{self, Route};

impl Daemon {
    /// The redirect bounds of `connected`'s catalog addresses.
    async fn bounds(&self, connected: &Connected) -> crate::redirect::bounds::Bounds {
        let cfg = &connected.endpoint.config;
        let (ranges, source) = match &cfg.cluster_cidrs {
            Some(r) => (r.clone(), format!("cluster_cidrs of endpoint {}", cfg.name)),
            None => {
                let r = connected.endpoint.cluster_ranges();
                let source = if r.is_empty() {
                    format!(
                        "the server of endpoint {} announced none (set cluster_cidrs on the server)",
                        cfg.name
                    )
                } else {
                    format!("announced by the server of endpoint {}", cfg.name)
                };
                (r, source)
            }
        };
        let mut never = Vec::new();
        if let EndpointStatus::Connected { server, .. } = connected.endpoint.status() {
            if let Ok(s) = server.parse::<SocketAddr>() {
                never.push((s.ip(), "the netmux server's address"));
            }
        }
        for ip in resolve_quickly(cfg.server.as_deref()).await {
            never.push((ip, "the netmux server's address"));
        }
        let mut apis: Vec<String> = Vec::new();
        if let Some(u) = cfg.kubernetes.as_ref().and_then(|k| k.api_server.clone()) {
            apis.push(u);
        }
        if let Some(k) = connected.endpoint.kube() {
            apis.push(k.api_server.clone());
        }
        for url in apis {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let hostport = rest.split('/').next().unwrap_or_default();
            let with_port = if hostport.ends_with(']') || !hostport.contains(':') {
                format!("{hostport}:443")
            } else {
                hostport.to_owned()
            };
            for ip in resolve_quickly(Some(&with_port)).await {
                never.push((ip, "the Kubernetes API server's address"));
            }
        }
        crate::redirect::bounds::Bounds {
            ranges,
            source,
            never,
        }
    }

    pub(crate) async fn launch(
        &self,
        connected: &Connected,
        key: &ServiceRef,
        svc: Service,
    ) -> Result<Running, String> {
        let addr = {
            let mut a = lock(&self.alloc);
            a.allocate().ok_or_else(|| {
                format!(
                    "address range {}/{} is exhausted: widen `address_range`",
                    self.config.address_range.network, self.config.address_range.prefix
                )
            })?
        };
        let mut undo = Rollback {
            daemon: self,
            endpoint: &key.0,
            addr,
            tasks: Vec::new(),
            redirects: Vec::new(),
            armed: true,
        };
        for p in svc.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
            let local = SocketAddr::new(IpAddr::V4(addr), p.port);
            let listener = listeners::bind(local)
                .await
                .map_err(|e| format!("cannot listen on {local}: {e}"))?;
            let route = Route {
                endpoint: key.0.clone(),
                service: key.1.clone(),
                port: p.port,
                conn: connected.endpoint.watch_connection(),
                catalog: connected.endpoint.watch_catalog(),
                metrics: self.metrics.clone(),
                options: connected.endpoint.config.stream_options(),
            };
            undo.tasks
                .push(tokio::spawn(listeners::serve(listener, route)));
        }
        let mut udp = Vec::new();
        for p in svc.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
            let local = SocketAddr::new(IpAddr::V4(addr), p.port);
            let socket = Arc::new(
                netmux_common::tunnel::udp_socket::FlowSocket::bind(local)
                    .map_err(|e| format!("cannot listen on udp {local}: {e}"))?,
            );
            let conn = connected.endpoint.watch_connection();
            let catalog = connected.endpoint.watch_catalog();
            let key = key.1.clone();
            let port = p.port;
            let route = move || {
                let c = conn.borrow().clone()?;
                let id = catalog
                    .borrow()
                    .by_key(&key)
                    .filter(|s| s.port(port, Protocol::Udp).is_some())
                    .map(|s| s.id)?;
                Some((c, id))
            };
            udp.push((connected.endpoint.udp(), socket.clone()));
            undo.tasks.push(tokio::spawn(
                connected.endpoint.udp().originate(socket, p.port, route),
            ));
        }
        let mut unredirected = Vec::new();
        let mut blocked = Vec::new();
        if self.backend.uses_cluster_addresses() {
            let bounds = self.bounds(connected).await;
            for ip in &svc.addresses {
                if let Err(why) = bounds.check(*ip) {
                    tracing::warn!(endpoint = %key.0, service = %key.1, address = %ip, reason = %why, "catalog address not redirected");
                    unredirected.push(why);
                    continue;
                }
                for p in &svc.ports {
                    let service = SocketAddr::new(*ip, p.port);
                    let listener = SocketAddr::new(IpAddr::V4(addr), p.port);
                    let udp = p.protocol == Protocol::Udp;
                    if udp && !ip.is_ipv4() {
                        // UDP listeners are IPv4 (127.x); the kernel cannot
                        // send a v6 datagram to them.
                        continue;
                    }
                    match self.take_redirect(&key.0, service, udp, addr)? {
                        None => undo.redirects.push((service, udp)),
                        Some(holder) => {
                            tracing::warn!(endpoint = %key.0, service = %key.1, address = %service, %holder, "redirect held by another endpoint, which started it first; this service keeps its endpoint-qualified names");
                            blocked.push((service, udp, listener, holder));
                        }
                    }
                }
            }
        }
        let (tasks, redirects) = undo.done();
        Ok(Running {
            addr,
            redirects,
            unredirected,
            blocked,
            udp,
            service: svc,
            tasks,
            domain: connected.endpoint.config.cluster_domain.clone(),
        })
    }
}

/// What a [`Daemon::launch`] has set up so far: the address, the listener
/// tasks and the redirects taken. Dropped before [`Rollback::done`] (a step
/// failed, or the launch was cancelled), it undoes them: redirects dropped,
/// tasks aborted, address released.
struct Rollback<'d> {
    daemon: &'d Daemon,
    endpoint: &'d str,
    addr: Ipv4Addr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    redirects: Vec<(SocketAddr, bool)>,
    armed: bool,
}

impl Rollback<'_> {
    /// The launch succeeded: hands the tasks and redirects to the new
    /// [`Running`], which owns them from now on.
    #[allow(clippy::type_complexity)]
    fn done(mut self) -> (Vec<tokio::task::JoinHandle<()>>, Vec<(SocketAddr, bool)>) {
        self.armed = false;
        (
            std::mem::take(&mut self.tasks),
            std::mem::take(&mut self.redirects),
        )
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for (service, udp) in &self.redirects {
            self.daemon
                .drop_redirect(self.endpoint, *service, *udp, self.addr);
        }
        for t in &self.tasks {
            t.abort();
        }
        self.daemon.release(self.addr);
    }
}

/// The addresses of `hostport` (`host:port`), from the literal or a
/// lookup bounded to two seconds; none when it fails.
async fn resolve_quickly(hostport: Option<&str>) -> Vec<IpAddr> {
    let Some(hostport) = hostport else {
        return vec![];
    };
    if let Ok(s) = hostport.parse::<SocketAddr>() {
        return vec![s.ip()];
    }
    let lookup = tokio::net::lookup_host(hostport.to_owned());
    match tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::endpoint::Endpoint;
    use crate::metrics::Metrics;
    use netmux_common::proto::catalog::{Direction, ServiceId, ServicePort};

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    fn tcp(port: u16) -> ServicePort {
        ServicePort {
            name: None,
            port,
            target_port: port,
            protocol: Protocol::Tcp,
        }
    }

    #[tokio::test]
    async fn a_failed_launch_gives_its_address_back() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "hosts_file = \"{}/hosts\"\nredirect = \"loopback\"\naddress_range = \"127.77.91.0/30\"\n[[endpoint]]\nname = \"demo\"\nserver = \"127.0.0.1:9\"\nca_pem = \"\"\"{PEM}\"\"\"\n",
            dir.path().display()
        );
        let config = Config::parse(&dir.path().join("c.toml"), &text).expect("config");
        let d = Daemon::new(config.clone(), Metrics::new());
        let connected = Connected {
            endpoint: Endpoint::start(config.endpoints[0].clone(), Metrics::new(), None),
            watcher: tokio::spawn(async {}),
            order: 1,
        };
        // The first address of the range is the one a launch gets; a
        // port already taken there makes the launch fail after its
        // first listener is up.
        let first = Ipv4Addr::new(127, 77, 91, 1);
        let taken = std::net::TcpListener::bind((first, 0)).expect("bind 127.77.91.1");
        let busy = taken.local_addr().unwrap().port();
        let free = std::net::TcpListener::bind((first, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let svc = |ports: Vec<ServicePort>| Service {
            id: ServiceId(1),
            name: "web".into(),
            namespace: "default".into(),
            aliases: vec![],
            addresses: vec![],
            ports,
            direction: Direction::L2C,
        };
        let key: ServiceRef = ("demo".into(), "default/web".into());
        let e = d
            .launch(&connected, &key, svc(vec![tcp(free), tcp(busy)]))
            .await
            .err()
            .expect("the taken port fails the launch");
        assert!(
            e.contains(&format!("cannot listen on {first}:{busy}")),
            "{e}"
        );
        // The address went back to the pool: the next launch gets it again.
        drop(taken);
        let r = d
            .launch(&connected, &key, svc(vec![tcp(busy)]))
            .await
            .expect("launch once the port is free");
        assert_eq!(r.addr, first);
    }
}
