//! The catalog's inputs indexed by name and address, and what a name in
//! an annotation means from a Service's namespace.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service as KService;
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};

use super::{cluster_ips, SERVICE_NAME_LABEL};

/// One ready endpoint of a Service.
pub(super) struct Ready<'a> {
    pub(super) ip: IpAddr,
    pub(super) hostname: Option<&'a str>,
    pub(super) ports: &'a [EndpointPort],
    /// Written by the EndpointSlice controller for a Service with a
    /// selector (a pod's address), not by a user.
    pub(super) assigned: bool,
}

/// Who an address belongs to: a Service (its cluster IP) or one of its
/// endpoints.
pub(super) struct Owner<'a> {
    pub(super) ns: &'a str,
    pub(super) service: &'a str,
    pub(super) assigned: bool,
}

/// The inputs, indexed for lookups by name.
pub(super) struct Index<'a> {
    /// namespace → name → Service.
    pub(super) services: BTreeMap<&'a str, BTreeMap<&'a str, &'a KService>>,
    /// namespace → Service name → ready endpoints.
    ready: HashMap<&'a str, HashMap<&'a str, Vec<Ready<'a>>>>,
    /// address → the Services it belongs to.
    owners: HashMap<IpAddr, Vec<Owner<'a>>>,
    pub(super) domain: &'a str,
}

/// The EndpointSlice controller's own label value.
const CONTROLLER: &str = "endpointslice-controller.k8s.io";

fn has_selector(s: &KService) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|sel| !sel.is_empty())
}

impl<'a> Index<'a> {
    pub(super) fn new<S: Borrow<KService>, E: Borrow<EndpointSlice>>(
        services: &'a [S],
        slices: &'a [E],
        domain: &'a str,
    ) -> Self {
        let mut by_name: BTreeMap<&str, BTreeMap<&str, &KService>> = BTreeMap::new();
        let mut owners: HashMap<IpAddr, Vec<Owner<'a>>> = HashMap::new();
        for s in services {
            let s = s.borrow();
            if let (Some(ns), Some(name)) =
                (s.metadata.namespace.as_deref(), s.metadata.name.as_deref())
            {
                by_name.entry(ns).or_default().insert(name, s);
                for ip in cluster_ips(s) {
                    owners.entry(ip).or_default().push(Owner {
                        ns,
                        service: name,
                        assigned: true,
                    });
                }
            }
        }
        let mut ready: HashMap<&str, HashMap<&str, Vec<Ready<'a>>>> = HashMap::new();
        for slice in slices {
            let slice = slice.borrow();
            let labels = slice.metadata.labels.as_ref();
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                labels
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str),
            ) else {
                continue;
            };
            if slice.address_type == "FQDN" {
                continue;
            }
            // Pod addresses the controller wrote for a selector: the
            // cluster's own. Anything else (selectorless Services, slices
            // users add) is what a user wrote.
            let assigned = labels
                .and_then(|l| l.get(crate::reverse::lease::SLICE_MANAGED_BY))
                .is_some_and(|m| m == CONTROLLER)
                && by_name
                    .get(ns)
                    .and_then(|m| m.get(svc))
                    .is_some_and(|s| has_selector(s));
            let ports = slice.ports.as_deref().unwrap_or_default();
            for ep in slice.endpoints.iter().flatten() {
                // "nil should be interpreted as ready" (EndpointConditions).
                let is_ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !is_ready {
                    continue;
                }
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        owners.entry(ip).or_default().push(Owner {
                            ns,
                            service: svc,
                            assigned,
                        });
                        ready
                            .entry(ns)
                            .or_default()
                            .entry(svc)
                            .or_default()
                            .push(Ready {
                                ip,
                                hostname: ep.hostname.as_deref(),
                                ports,
                                assigned,
                            });
                    }
                }
            }
        }
        for v in ready.values_mut().flat_map(|m| m.values_mut()) {
            // A user's copy of an address never makes it the cluster's.
            v.sort_by_key(|r| (r.ip, r.assigned));
            v.dedup_by_key(|r| r.ip);
        }
        Index {
            services: by_name,
            ready,
            owners,
            domain,
        }
    }

    pub(super) fn ready(&self, ns: &str, svc: &str) -> &[Ready<'a>] {
        self.ready
            .get(ns)
            .and_then(|m| m.get(svc))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub(super) fn owners(&self, ip: IpAddr) -> &[Owner<'a>] {
        self.owners
            .get(&ip.to_canonical())
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// What a DNS name means inside the cluster, read from `ns` as a pod's
    /// resolver would (search `ns.svc.<domain>`, `svc.<domain>`). Names of
    /// other namespaces are [`Resolved::OtherNamespace`]: annotation
    /// targets stay in the Service's own namespace.
    pub(super) fn resolve(&self, ns: &'a str, name: &str) -> Resolved<'a> {
        let name = name.trim_end_matches('.');
        let suffix = format!(".svc.{}", self.domain);
        let fqdn = if let Some(stem) = name.strip_suffix(&suffix) {
            stem.to_owned()
        } else if let Some(stem) = name.strip_suffix(".svc") {
            stem.to_owned()
        } else {
            name.to_owned()
        };
        let labels: Vec<&str> = fqdn.split('.').collect();
        match labels.as_slice() {
            [svc] => self.service(ns, svc),
            // `<service>.<namespace>`, else `<pod-hostname>.<service>`;
            // anything else names another namespace (watched or not).
            [svc, other_ns] if *other_ns == ns => self.service(ns, svc),
            [host, svc] if self.service_exists(ns, svc) => self.pod(ns, svc, host),
            [_, other_ns] => Resolved::OtherNamespace((*other_ns).to_owned()),
            [_, _, other_ns] if *other_ns != ns => Resolved::OtherNamespace((*other_ns).to_owned()),
            [host, svc, _] => self.pod(ns, svc, host),
            _ => Resolved::Unknown,
        }
    }

    fn service_exists(&self, ns: &str, svc: &str) -> bool {
        self.services.get(ns).is_some_and(|m| m.contains_key(svc))
    }

    fn service(&self, ns: &str, svc: &str) -> Resolved<'a> {
        match self.services.get(ns).and_then(|m| m.get(svc)) {
            Some(s) => Resolved::Service(s),
            None => Resolved::Unknown,
        }
    }

    fn pod(&self, ns: &str, svc: &str, host: &str) -> Resolved<'a> {
        let Some((name, _)) = self.services.get(ns).and_then(|m| m.get_key_value(svc)) else {
            return Resolved::Unknown;
        };
        let found = self
            .ready(ns, svc)
            .iter()
            .find(|r| r.hostname == Some(host));
        match found {
            Some(r) => Resolved::Pod {
                service: name,
                ip: r.ip,
                ports: r.ports,
                assigned: r.assigned,
            },
            None => Resolved::NotReady,
        }
    }
}

pub(super) enum Resolved<'a> {
    Service(&'a KService),
    Pod {
        /// The Service the pod is an endpoint of.
        service: &'a str,
        ip: IpAddr,
        ports: &'a [EndpointPort],
        assigned: bool,
    },
    /// Names a pod of a known Service that has no ready endpoint now.
    NotReady,
    /// Names something in this other namespace.
    OtherNamespace(String),
    Unknown,
}
