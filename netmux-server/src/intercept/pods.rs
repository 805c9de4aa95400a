//! The original pods of an intercepted Service, where every request that
//! is not the workstation's goes, at their real addresses.
//!
//! Once the selector is removed the EndpointSlice controller deletes the
//! pods' slices, so this replica keeps its own view: the pods matching the
//! recorded selector, listed again every [`REFRESH`].

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netmux_common::sync::lock;
use serde_json::Value;

use super::cluster::{Cluster, PodAddr};

/// How often the pods are listed again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long a connection to a pod may take before it counts as failed.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to pod address `addr`, within [`DIAL_TIMEOUT`].
pub async fn dial(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {DIAL_TIMEOUT:?}"),
        )),
    }
}

/// Where a Service port's traffic goes on a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// One port of the Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    /// Its name (EndpointSlice ports are matched by it).
    pub name: Option<String>,
    /// The Service port.
    pub port: u16,
    /// Its `targetPort`.
    pub target: Target,
}

/// The TCP ports of Service JSON `service`.
pub fn plan(service: &Value) -> Vec<PortPlan> {
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p["port"].as_u64()?).ok()?;
            let target = match &p["targetPort"] {
                Value::Number(n) => Target::Number(u16::try_from(n.as_u64()?).ok()?),
                Value::String(s) => match s.parse::<u16>() {
                    Ok(n) => Target::Number(n),
                    Err(_) => Target::Name(s.clone()),
                },
                _ => Target::Number(port),
            };
            Some(PortPlan {
                name: p["name"].as_str().map(str::to_owned),
                port,
                target,
            })
        })
        .collect()
}

/// The current pods, with a round-robin cursor.
#[derive(Default)]
pub struct Pods {
    current: Mutex<Vec<PodAddr>>,
    next: AtomicUsize,
}

impl Pods {
    /// Replaces the view.
    pub fn set(&self, pods: Vec<PodAddr>) {
        *lock(&self.current) = pods;
    }

    /// The next pod's address for `target`, round robin; `None` when no
    /// ready pod has that port.
    pub fn pick(&self, target: &Target) -> Option<(String, SocketAddr)> {
        let pods = lock(&self.current);
        let with_port: Vec<(String, IpAddr, u16)> = pods
            .iter()
            .filter_map(|p| {
                let port = match target {
                    Target::Number(n) => *n,
                    Target::Name(name) => p.ports.iter().find(|(n, _)| n == name)?.1,
                };
                Some((p.name.clone(), p.ip, port))
            })
            .collect();
        if with_port.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % with_port.len();
        let (name, ip, port) = with_port[i].clone();
        Some((name, SocketAddr::new(ip, port)))
    }

    /// How many ready pods there are.
    pub fn len(&self) -> usize {
        lock(&self.current).len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps `pods` current until aborted; a failed listing keeps the last.
pub async fn follow(cluster: Arc<Cluster>, ns: String, selector: String, pods: Arc<Pods>) {
    loop {
        match cluster.pods(&ns, &selector).await {
            Ok(list) => pods.set(list),
            Err(e) => {
                tracing::warn!(namespace = %ns, %selector, error = %e, "cannot list the intercepted Service's pods; keeping the last list")
            }
        }
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports_and_pods_by_number_or_name() {
        let svc = json!({"spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "admin", "port": 81, "targetPort": 9000},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]}});
        let p = plan(&svc);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].target, Target::Name("web".into()));
        let pods = Pods::default();
        assert_eq!(pods.pick(&p[0].target), None);
        pods.set(vec![
            PodAddr {
                name: "a".into(),
                ip: "10.0.0.1".parse().unwrap(),
                ports: vec![("web".into(), 8080)],
            },
            PodAddr {
                name: "b".into(),
                ip: "10.0.0.2".parse().unwrap(),
                ports: vec![],
            },
        ]);
        assert_eq!(
            pods.pick(&p[0].target),
            Some(("a".into(), "10.0.0.1:8080".parse().unwrap()))
        );
        let both: Vec<_> = (0..2).filter_map(|_| pods.pick(&p[1].target)).collect();
        assert_eq!(both.len(), 2);
        assert_ne!(both[0], both[1], "round robin");
    }
}
