//! Dialling targets: only addresses from the catalog, never one named by a
//! daemon. A stream names a service id and port; this module resolves them
//! against the current catalog and connects.

use std::net::SocketAddr;
use std::time::Duration;

use netmux_common::proto::catalog::{Catalog, Direction, Protocol, Service, ServiceId};
use netmux_common::proto::stream::OpenResult;
use tokio::net::TcpStream;

/// Resolves `(service, port)` to the catalog entry and the addresses to dial.
pub(crate) fn resolve(
    catalog: &Catalog,
    service: ServiceId,
    port: u16,
) -> Result<(Service, Vec<SocketAddr>), OpenResult> {
    let svc = catalog.get(&service).ok_or(OpenResult::UnknownService)?;
    if svc.direction != Direction::L2C {
        return Err(OpenResult::NotAllowed);
    }
    let p = svc
        .port(port, Protocol::Tcp)
        .ok_or(OpenResult::UnknownService)?;
    let addrs = svc
        .addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, p.target_port))
        .collect();
    Ok((svc.clone(), addrs))
}

/// Connects to the first address that answers; failures map to the answer
/// the daemon gets (the one mapping, `netmux_common::tunnel::stream::dial`).
pub(crate) async fn connect(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<TcpStream, OpenResult> {
    netmux_common::tunnel::stream::dial(addrs, timeout, TcpStream::connect).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmux_common::proto::catalog::ServicePort;

    fn catalog() -> Catalog {
        let svc = Service {
            id: ServiceId(1),
            name: "web".into(),
            namespace: "ns".into(),
            aliases: vec![],
            addresses: vec!["127.0.0.1".parse().unwrap()],
            ports: vec![ServicePort {
                name: None,
                port: 80,
                target_port: 8080,
                protocol: Protocol::Tcp,
            }],
            direction: Direction::L2C,
        };
        [(ServiceId(1), svc)].into()
    }

    #[test]
    fn only_published_ports_resolve_to_catalog_addresses() {
        let (_, addrs) = resolve(&catalog(), ServiceId(1), 80).unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(
            resolve(&catalog(), ServiceId(1), 8080).unwrap_err(),
            OpenResult::UnknownService
        );
        assert_eq!(
            resolve(&catalog(), ServiceId(2), 80).unwrap_err(),
            OpenResult::UnknownService
        );
    }

    #[tokio::test]
    async fn refused_is_reported_as_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let r = connect(&[addr], Duration::from_secs(1)).await;
        assert_eq!(r.unwrap_err(), OpenResult::Refused);
    }
}
