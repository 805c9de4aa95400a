//! The Kubernetes runtime: the catalog follows Services and EndpointSlices.
//!
//! One reflector per resource and namespace (or one per resource for all
//! namespaces) keeps a store current; `watcher` relists by itself after
//! `410 Gone` and retries with backoff through API-server restarts, and
//! the store swaps in a relist atomically, so entries are neither lost nor
//! duplicated. After every burst of changes the whole catalog is rebuilt by
//! the sans-IO [`catalog_from`] and handed to the [`CatalogStore`], which
//! wakes daemons only if something changed. Problems (invalid `nx`
//! annotations, name conflicts) become Kubernetes Events on the Services
//! concerned, once per distinct problem.

pub(crate) mod annotation;
pub(crate) mod catalog;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use netmux_common::sync::lock;
use serde::Deserialize;

pub use catalog::{catalog_from, catalog_with_origins, CatalogOptions, Problem, ProblemKind};

use super::RuntimeHandle;
use crate::catalog::CatalogStore;

/// Which namespaces are watched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawNamespaces")]
pub enum Namespaces {
    /// The server's own namespace (`"own"`, the default): the in-cluster
    /// service account's namespace, or the kubeconfig context's.
    #[default]
    Own,
    /// These namespaces (`["a", "b"]`).
    List(Vec<String>),
    /// Every namespace (`"all"`); needs a ClusterRole.
    All,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawNamespaces {
    Word(String),
    List(Vec<String>),
}

impl TryFrom<RawNamespaces> for Namespaces {
    type Error = String;
    fn try_from(raw: RawNamespaces) -> Result<Self, String> {
        match raw {
            RawNamespaces::Word(w) if w == "own" => Ok(Namespaces::Own),
            RawNamespaces::Word(w) if w == "all" => Ok(Namespaces::All),
            RawNamespaces::Word(w) => Err(format!(
                "{w:?}: expected \"own\", \"all\" or a list of namespaces such as [\"{w}\"]"
            )),
            RawNamespaces::List(l) if l.is_empty() => {
                Err("an empty list watches nothing: use \"own\", \"all\" or name namespaces".into())
            }
            RawNamespaces::List(l) => {
                if let Some(bad) = l
                    .iter()
                    .find(|n| !netmux_common::proto::catalog::valid_dns_name(n) || n.contains('.'))
                {
                    return Err(format!("{bad:?} is not a namespace name (one DNS label)"));
                }
                Ok(Namespaces::List(l))
            }
        }
    }
}

/// Runtime options (from the `[runtime]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Watched namespaces.
    pub namespaces: Namespaces,
    /// What is published.
    pub catalog: CatalogOptions,
    /// How long the first complete list may take before start fails.
    pub initial_sync_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespaces: Namespaces::Own,
            catalog: CatalogOptions::default(),
            initial_sync_timeout: Duration::from_secs(60),
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or in-cluster service account.
    #[error("cannot build a Kubernetes client (in-cluster service account or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    /// The first list of Services and EndpointSlices did not complete.
    #[error("no complete list of Services and EndpointSlices in {scope} within {timeout:?} (last error: {last}); check the API server and that the server's account may get/list/watch services and endpointslices there")]
    InitialSync {
        /// Namespaces watched.
        scope: String,
        /// How long we waited.
        timeout: Duration,
        /// Last watch error seen.
        last: String,
    },
}

/// One watched scope: `None` is every namespace.
fn scopes(client: &Client, namespaces: &Namespaces) -> Vec<Option<String>> {
    match namespaces {
        Namespaces::Own => vec![Some(client.default_namespace().to_owned())],
        Namespaces::List(l) => l.iter().cloned().map(Some).collect(),
        Namespaces::All => vec![None],
    }
}

fn api<K>(client: &Client, scope: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What each reflector stream reports: its index and whether this item
/// completed a (re)list, or the watch error.
type Tick = (usize, Result<bool, String>);

fn reflect<K>(
    idx: usize,
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, BoxStream<'static, Tick>)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .map(move |r| {
            (
                idx,
                r.map(|e| matches!(e, watcher::Event::InitDone))
                    .map_err(|e| e.to_string()),
            )
        })
        .boxed();
    (reader, stream)
}

/// Starts watching with `client`; returns once the first catalog is
/// published.
pub async fn start(
    client: Client,
    options: &Options,
    store: Arc<CatalogStore>,
) -> Result<RuntimeHandle, Error> {
    let scopes = scopes(&client, &options.namespaces);
    let scope_text = match &options.namespaces {
        Namespaces::All => "all namespaces".to_owned(),
        _ => format!(
            "namespace(s) {}",
            scopes
                .iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut streams = Vec::new();
    for scope in &scopes {
        let (r, s) = reflect::<KService>(
            streams.len(),
            api(&client, scope),
            watcher::Config::default(),
        );
        services.push(r);
        streams.push(s);
        let (r, s) = reflect::<EndpointSlice>(
            streams.len(),
            api(&client, scope),
            watcher::Config::default().labels("kubernetes.io/service-name"),
        );
        slices.push(r);
        streams.push(s);
    }
    let last_error = Arc::new(Mutex::new(String::from("none")));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let driver = Driver {
        ready: vec![false; streams.len()],
        services,
        slices,
        options: options.catalog.clone(),
        store,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "netmux-server".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        reported: Arc::new(Mutex::new(HashSet::new())),
        last_error: last_error.clone(),
    };
    let task = tokio::spawn(driver.run(stream::select_all(streams), first_tx));
    let timeout = options.initial_sync_timeout;
    let handle = RuntimeHandle::after_first_sync(task, first_rx, timeout, &last_error)
        .await
        .map_err(|last| Error::InitialSync {
            scope: scope_text.clone(),
            timeout,
            last,
        })?;
    tracing::info!(scope = %scope_text, "kubernetes runtime synced");
    Ok(handle)
}

struct Driver {
    ready: Vec<bool>,
    services: Vec<Store<KService>>,
    slices: Vec<Store<EndpointSlice>>,
    options: CatalogOptions,
    store: Arc<CatalogStore>,
    recorder: Recorder,
    /// Problems already told as Events; a problem that goes away and comes
    /// back is told again.
    reported: Arc<Mutex<HashSet<Problem>>>,
    last_error: Arc<Mutex<String>>,
}

impl Driver {
    async fn run(
        mut self,
        mut ticks: stream::SelectAll<BoxStream<'static, Tick>>,
        first: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut first = Some(first);
        while let Some(tick) = ticks.next().await {
            self.note(tick);
            // Take the whole burst before rebuilding.
            while let Some(Some(tick)) = ticks.next().now_or_never() {
                self.note(tick);
            }
            if self.ready.iter().all(|r| *r) {
                self.publish();
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
        }
    }

    fn note(&mut self, (idx, tick): Tick) {
        match tick {
            Ok(true) => {
                if let Some(r) = self.ready.get_mut(idx) {
                    *r = true;
                }
            }
            Ok(false) => {}
            Err(e) => {
                // The watcher relists or retries with backoff by itself.
                tracing::warn!(error = %e, "kubernetes watch interrupted; retrying");
                *lock(&self.last_error) = e;
            }
        }
    }

    fn publish(&self) {
        let services: Vec<Arc<KService>> = self.services.iter().flat_map(|s| s.state()).collect();
        let slices: Vec<Arc<EndpointSlice>> = self.slices.iter().flat_map(|s| s.state()).collect();
        let (entries, problems) = catalog_with_origins(&services, &slices, &self.options);
        tracing::debug!(
            services = entries.len(),
            problems = problems.len(),
            "catalog rebuilt"
        );
        let origins = entries
            .iter()
            .map(|(s, origin)| (s.key(), origin.clone()))
            .collect();
        let refused = self.store.metrics().catalog_refused.clone();
        self.store.set_origins(origins);
        self.store
            .publish(entries.into_iter().map(|(s, _)| s).collect());
        let fresh: Vec<Problem> = {
            let mut reported = lock(&self.reported);
            let now: HashSet<Problem> = problems.iter().cloned().collect();
            let fresh = now.difference(&reported).cloned().collect();
            *reported = now;
            fresh
        };
        if fresh.is_empty() {
            return;
        }
        let recorder = self.recorder.clone();
        let reported = self.reported.clone();
        tokio::spawn(async move {
            for p in fresh {
                // Entries too large are counted by each session that
                // leaves them out (`connection::report_oversized`).
                if p.kind != ProblemKind::TooLarge {
                    refused.with_label_values(&[p.kind.label()]).inc();
                }
                tracing::warn!(problem = %p, reason = p.kind.label(), "catalog entry not published");
                if let Err(e) = recorder.publish(&event(&p), &reference(&p)).await {
                    tracing::warn!(service = %format!("{}/{}", p.namespace, p.service), error = %e, "cannot record a Kubernetes Event (needs create on events.k8s.io events)");
                    // Try again on the next rebuild.
                    lock(&reported).remove(&p);
                }
            }
        });
    }
}

/// The Event telling `p`; notes are capped at 1 kB by the API.
fn event(p: &Problem) -> KEvent {
    const MAX_NOTE: usize = 1024;
    let mut note = p.message.clone();
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    KEvent {
        type_: EventType::Warning,
        reason: p.kind.reason().into(),
        note: Some(note),
        // Events with the same action are one series (kube's recorder):
        // distinct refused entries get their own.
        action: action(&p.subject),
        secondary: None,
    }
}

/// `Publish`, or `Publish <subject>` within the API's 128 bytes.
fn action(subject: &str) -> String {
    const MAX_ACTION: usize = 128;
    let mut action = if subject.is_empty() {
        "Publish".to_owned()
    } else {
        format!("Publish {subject}")
    };
    let mut cut = action.len().min(MAX_ACTION);
    while !action.is_char_boundary(cut) {
        cut -= 1;
    }
    action.truncate(cut);
    action
}

fn reference(p: &Problem) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(p.service.clone()),
        namespace: Some(p.namespace.clone()),
        uid: p.uid.clone(),
        ..Default::default()
    }
}
