//! [`Daemon::reconcile`]: the running set follows intent and catalogs;
//! redirects are taken and dropped here, one owner per address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use netmux_common::proto::catalog::{Protocol, Service};
use netmux_common::sync::lock;

use super::{Daemon, Running, ServiceRef, State};
use crate::dns::NameRecord;
use crate::system::hosts::HostsEntry;

impl Daemon {
    /// Re-derives what runs from intent and catalogs.
    pub(crate) async fn reconcile(self: &Arc<Self>) {
        let mut state = self.state.lock().await;
        self.reconcile_locked(&mut state).await;
    }

    pub(crate) async fn reconcile_locked(&self, state: &mut State) {
        // Stop what is no longer wanted or no longer in its catalog (or changed).
        let mut stop = Vec::new();
        for (key, running) in &state.running {
            let current = state
                .endpoints
                .get(&key.0)
                .and_then(|c| c.endpoint.catalog().by_key(&key.1).cloned());
            let keep = state.wanted.contains(key)
                && current
                    .as_ref()
                    .is_some_and(|s| same_listeners(s, &running.service));
            if !keep {
                stop.push(key.clone());
            }
        }
        for key in stop {
            if let Some(r) = state.running.remove(&key) {
                for (service, udp) in &r.redirects {
                    self.drop_redirect(&key.0, *service, *udp, r.addr);
                }
                self.release(r.addr);
                tracing::info!(endpoint = %key.0, service = %key.1, "service stopped");
            }
        }
        state.errors.clear();
        // Start what is wanted, in its catalog, and not running.
        let wanted: Vec<ServiceRef> = state.wanted.iter().cloned().collect();
        for key in wanted {
            if state.running.contains_key(&key) {
                if let (Some(r), Some(c)) =
                    (state.running.get_mut(&key), state.endpoints.get(&key.0))
                {
                    if let Some(s) = c.endpoint.catalog().by_key(&key.1) {
                        r.service = s.clone();
                    }
                }
                continue;
            }
            let Some(connected) = state.endpoints.get(&key.0) else {
                continue;
            };
            let catalog = connected.endpoint.catalog();
            let Some(svc) = catalog.by_key(&key.1).cloned() else {
                continue;
            };
            match self.launch(connected, &key, svc).await {
                Ok(r) => {
                    tracing::info!(endpoint = %key.0, service = %key.1, addr = %r.addr, "service started");
                    state.running.insert(key, r);
                }
                Err(e) => {
                    tracing::error!(endpoint = %key.0, service = %key.1, error = %e, "cannot start service");
                    state.errors.insert(key, e);
                }
            }
        }
        // Redirects another endpoint held are taken over once it let go.
        for ((ep, name), r) in state.running.iter_mut() {
            for (service, udp, listener, holder) in std::mem::take(&mut r.blocked) {
                match self.take_redirect(ep, service, udp, r.addr) {
                    Ok(None) => {
                        tracing::info!(endpoint = %ep, service = %name, address = %service, "redirect taken over from {holder}");
                        r.redirects.push((service, udp));
                    }
                    Ok(Some(now)) => r.blocked.push((service, udp, listener, now)),
                    Err(e) => {
                        tracing::error!(endpoint = %ep, service = %name, address = %service, error = %e, "cannot take over redirect");
                        r.blocked.push((service, udp, listener, holder));
                    }
                }
            }
        }
        let records: Vec<NameRecord> = state
            .running
            .iter()
            .map(|((ep, _), r)| NameRecord {
                endpoint: ep.clone(),
                domain: r.domain.clone(),
                connected: state.endpoints.get(ep).map_or(u64::MAX, |c| c.order),
                service: r.service.clone(),
                addrs: self.answer_addrs(r),
            })
            .collect();
        // With a DNS integration in force, names come from the DNS server only.
        let entries: Vec<HostsEntry> = if self.name_service.hosts_block() {
            crate::system::hosts::entries(&records)
        } else {
            vec![]
        };
        self.names.send_if_modified(|current| {
            if **current == records {
                false
            } else {
                *current = Arc::new(records);
                true
            }
        });
        if let Err(e) = self.hosts.write(&entries) {
            tracing::error!(path = %self.hosts.path().display(), error = %e, "cannot write hosts file");
        }
    }

    /// Where names of a running service should point: the cluster
    /// addresses redirected to it (eBPF), else its 127.x listeners.
    fn answer_addrs(&self, r: &Running) -> Vec<IpAddr> {
        let redirected: Vec<IpAddr> = r
            .service
            .addresses
            .iter()
            .filter(|ip| r.redirects.iter().any(|(s, _)| s.ip() == **ip))
            .copied()
            .collect();
        if self.backend.uses_cluster_addresses() && !redirected.is_empty() {
            redirected
        } else {
            vec![IpAddr::V4(r.addr)]
        }
    }

    /// Redirects `service` to the listener on `addr` for endpoint `ep`;
    /// `Ok(Some(holder))` when another endpoint holds it.
    pub(crate) fn take_redirect(
        &self,
        ep: &str,
        service: SocketAddr,
        udp: bool,
        addr: Ipv4Addr,
    ) -> Result<Option<String>, String> {
        let listener = SocketAddr::new(IpAddr::V4(addr), service.port());
        let mut owners = lock(&self.owners);
        if let Err(holder) = owners.claim((service, udp), ep, listener) {
            return Ok(Some(holder));
        }
        let inserted = if udp {
            self.backend.insert_udp(service, listener)
        } else {
            self.backend.insert(service, listener)
        };
        if let Err(e) = inserted {
            owners.release((service, udp), ep, listener);
            return Err(e);
        }
        Ok(None)
    }

    /// Removes `ep`'s redirect of `service`, and only if `ep` holds it.
    pub(crate) fn drop_redirect(&self, ep: &str, service: SocketAddr, udp: bool, addr: Ipv4Addr) {
        let listener = SocketAddr::new(IpAddr::V4(addr), service.port());
        let mut owners = lock(&self.owners);
        if owners.release((service, udp), ep, listener) {
            self.backend.remove(service, udp);
        }
    }

    pub(crate) fn release(&self, addr: Ipv4Addr) {
        lock(&self.alloc).release(addr);
    }
}

/// Whether a running service's listeners still fit its new catalog entry.
fn same_listeners(a: &Service, b: &Service) -> bool {
    let ports = |s: &Service| -> Vec<(u16, bool)> {
        let mut v: Vec<(u16, bool)> = s
            .ports
            .iter()
            .map(|p| (p.port, p.protocol == Protocol::Udp))
            .collect();
        v.sort_unstable();
        v
    };
    ports(a) == ports(b) && a.direction == b.direction && a.addresses == b.addresses
}
