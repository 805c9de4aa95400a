//! The server's catalog: the one truth about what is published.
//!
//! Runtimes hand over complete lists of services; the store gives each a
//! stable [`ServiceId`] (kept across updates, never reused for another
//! service; a service that leaves the catalog gives up its id, so the table
//! stays as large as the catalog) and publishes the result on a watch channel that every daemon
//! connection follows. Nothing polls.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use netmux_common::proto::catalog::{Catalog, Service, ServiceId};
use netmux_common::sync::lock;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Assigns ids and publishes catalogs.
pub struct CatalogStore {
    ids: Mutex<IdTable>,
    /// The runtime's last list and the ad hoc (exposed) services, merged on
    /// every change.
    sources: Mutex<Sources>,
    tx: watch::Sender<Arc<Catalog>>,
    metrics: Metrics,
    /// Catalog key → the Kubernetes Services (same namespace) it reaches,
    /// the one that publishes it first, where the runtime knows them (a
    /// bridge `kafka-0` comes from Service `kafka`; a bridge to Service
    /// `db` also reaches `db`): what RBAC is asked about.
    origins: Mutex<HashMap<String, Vec<String>>>,
}

#[derive(Default)]
struct Sources {
    runtime: Vec<Service>,
    /// The keys of `runtime`, so `add_adhoc` asks without a scan.
    runtime_keys: HashSet<String>,
    adhoc: std::collections::BTreeMap<String, Service>,
}

#[derive(Default)]
struct IdTable {
    by_key: HashMap<String, ServiceId>,
    next: u32,
}

impl CatalogStore {
    /// An empty store and a receiver of its catalogs.
    pub fn new(metrics: Metrics) -> (Arc<Self>, watch::Receiver<Arc<Catalog>>) {
        let (tx, rx) = watch::channel(Arc::new(Catalog::new()));
        (
            Arc::new(CatalogStore {
                ids: Mutex::new(IdTable {
                    by_key: HashMap::new(),
                    next: 1,
                }),
                sources: Mutex::new(Sources::default()),
                tx,
                metrics,
                origins: Mutex::new(HashMap::new()),
            }),
            rx,
        )
    }

    /// Replaces the runtime's services (their `id` fields are ignored).
    /// Receivers are woken only if the merged catalog changed.
    pub fn publish(&self, services: Vec<Service>) {
        let mut sources = lock(&self.sources);
        sources.runtime_keys = services.iter().map(Service::key).collect();
        sources.runtime = services;
        self.republish(&sources);
    }

    /// Adds an ad hoc service (`netmux expose`); refused when the runtime
    /// already publishes that name.
    pub(crate) fn add_adhoc(&self, service: Service) -> Result<(), String> {
        let mut sources = lock(&self.sources);
        let key = service.key();
        if sources.runtime_keys.contains(&key) {
            return Err(format!(
                "{key} is already published by the server's runtime; choose another name"
            ));
        }
        sources.adhoc.insert(key, service);
        self.republish(&sources);
        Ok(())
    }

    /// Removes an ad hoc service; returns whether it existed.
    pub(crate) fn remove_adhoc(&self, key: &str) -> bool {
        let mut sources = lock(&self.sources);
        let existed = sources.adhoc.remove(key).is_some();
        if existed {
            self.republish(&sources);
        }
        existed
    }

    fn republish(&self, sources: &Sources) {
        let services: Vec<Service> = sources
            .runtime
            .iter()
            .chain(sources.adhoc.values())
            .cloned()
            .collect();
        let catalog: Catalog = {
            let mut ids = lock(&self.ids);
            services
                .into_iter()
                .map(|mut svc| {
                    let key = format!("{}/{}", svc.namespace, svc.name);
                    let IdTable { by_key, next } = &mut *ids;
                    let id = *ids_entry(by_key, key, next);
                    svc.id = id;
                    (id, svc)
                })
                .collect()
        };
        let gone = {
            let mut ids = lock(&self.ids);
            let mut gone = Vec::new();
            ids.by_key.retain(|key, id| {
                let keep = catalog.contains_key(id);
                if !keep {
                    gone.push(key.clone());
                }
                keep
            });
            gone
        };
        for key in &gone {
            self.metrics.forget_service(key);
        }
        self.metrics.catalog_services.set(catalog.len() as i64);
        self.tx.send_if_modified(|current| {
            if **current == catalog {
                false
            } else {
                *current = Arc::new(catalog);
                true
            }
        });
    }

    /// Replaces the origins of runtime entries (catalog key → the names of
    /// the Kubernetes Services in the same namespace it reaches, the one
    /// that publishes it first).
    pub fn set_origins(&self, origins: HashMap<String, Vec<String>>) {
        *lock(&self.origins) = origins;
    }

    /// The Kubernetes Service that publishes catalog key `key`, if known.
    pub(crate) fn origin(&self, key: &str) -> Option<String> {
        lock(&self.origins)
            .get(key)
            .and_then(|o| o.first().cloned())
    }

    /// Every Kubernetes Service catalog key `key` reaches (the publishing
    /// one first), if known.
    pub(crate) fn reaches(&self, key: &str) -> Option<Vec<String>> {
        lock(&self.origins)
            .get(key)
            .filter(|o| !o.is_empty())
            .cloned()
    }

    /// The metrics this store counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The current catalog.
    pub fn current(&self) -> Arc<Catalog> {
        self.tx.borrow().clone()
    }

    /// The current entry with [`Service::key`] `key` (`namespace/name`),
    /// found through the id table (every published key has one id).
    pub(crate) fn service(&self, key: &str) -> Option<Service> {
        let id = *lock(&self.ids).by_key.get(key)?;
        self.current().get(&id).cloned()
    }
}

fn ids_entry<'a>(
    by_key: &'a mut HashMap<String, ServiceId>,
    key: String,
    next: &mut u32,
) -> &'a ServiceId {
    by_key.entry(key).or_insert_with(|| {
        let id = ServiceId(*next);
        *next = next.wrapping_add(1).max(1);
        id
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmux_common::proto::catalog::{Direction, Protocol, ServicePort};

    fn svc(name: &str, port: u16) -> Service {
        Service {
            id: ServiceId(0),
            name: name.into(),
            namespace: "ns".into(),
            aliases: vec![],
            addresses: vec!["10.0.0.1".parse().unwrap()],
            ports: vec![ServicePort {
                name: None,
                port,
                target_port: port,
                protocol: Protocol::Tcp,
            }],
            direction: Direction::L2C,
        }
    }

    #[test]
    fn ids_are_stable_across_updates_and_not_reused() {
        let (store, mut rx) = CatalogStore::new(Metrics::new());
        store.publish(vec![svc("a", 80), svc("b", 80)]);
        assert!(rx.has_changed().unwrap());
        let first = rx.borrow_and_update().clone();
        let id_b = first.values().find(|s| s.name == "b").unwrap().id;

        store.publish(vec![svc("b", 81), svc("c", 80)]);
        let second = rx.borrow_and_update().clone();
        assert_eq!(second.values().find(|s| s.name == "b").unwrap().id, id_b);
        let id_c = second.values().find(|s| s.name == "c").unwrap().id;
        assert!(first.keys().all(|id| *id != id_c));

        store.publish(vec![svc("b", 81), svc("c", 80)]);
        assert!(
            !rx.has_changed().unwrap(),
            "identical publish must not wake"
        );
    }

    #[test]
    fn entries_are_found_by_key_and_runtime_names_refuse_adhoc() {
        let (store, _rx) = CatalogStore::new(Metrics::new());
        store.publish(vec![svc("a", 80), svc("b", 81)]);
        let b = store.service("ns/b").expect("published");
        assert_eq!((b.name.as_str(), b.ports[0].port), ("b", 81));
        assert_eq!(store.current().get(&b.id), Some(&b));
        assert!(store.service("ns/c").is_none());
        assert!(store.add_adhoc(svc("a", 90)).is_err(), "a is the runtime's");
        store.add_adhoc(svc("c", 90)).expect("c is free");
        assert_eq!(store.service("ns/c").map(|s| s.ports[0].port), Some(90));
        store.publish(vec![svc("a", 80)]);
        assert!(store.service("ns/b").is_none(), "b left the catalog");
        store
            .add_adhoc(svc("b", 91))
            .expect("b left the runtime's list");
        assert!(store.remove_adhoc("ns/c"));
        assert!(store.service("ns/c").is_none());
    }

    #[test]
    fn the_id_table_and_metrics_shrink_when_services_go_away() {
        let (store, _rx) = CatalogStore::new(Metrics::new());
        for round in 0..50 {
            let names: Vec<String> = (0..20).map(|i| format!("s{round}-{i}")).collect();
            store.publish(names.iter().map(|n| svc(n, 80)).collect());
            for n in &names {
                store
                    .metrics
                    .connections_total
                    .with_label_values(&[&format!("ns/{n}"), "l2c"])
                    .inc();
            }
        }
        assert_eq!(
            lock(&store.ids).by_key.len(),
            20,
            "ids of services that left are forgotten"
        );
        let text = store.metrics.render();
        assert!(
            !text.contains("ns/s0-"),
            "series of removed services remain"
        );
        assert!(text.contains("ns/s49-0"), "{text}");
        // Ids are still never reused: a returning service gets a new one.
        let before = store.current().values().map(|s| s.id.0).max().unwrap();
        store.publish(vec![svc("s0-0", 80)]);
        assert!(store.current().values().all(|s| s.id.0 > before));
    }
}
