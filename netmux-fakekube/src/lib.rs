//! An in-process fake Kubernetes API server for tests with the real kube
//! client: Kubernetes JSON over HTTP/1.1 on a port-0 listener.
//!
//! What it speaks:
//! - list (`resourceVersion` in the list metadata) and watch (`watch=true`,
//!   newline-delimited watch events from the requested `resourceVersion`)
//!   for every namespaced collection, in one namespace or all of them;
//! - get, create (POST), replace (PUT), delete, merge patch of one object,
//!   with `resourceVersion` conflicts (409) on PUT and on DELETE with
//!   preconditions; objects of any kind (Services, EndpointSlices, Leases...);
//! - `410 Gone` as a watch `ERROR` event once history is compacted
//!   ([`FakeApi::compact_silently`]), and dropped watches / 503 while down
//!   ([`FakeApi::set_down`]), to force relists and API-server restarts;
//! - TokenReview and SubjectAccessReview from tables the test fills in,
//!   and SelfSubjectAccessReview for the user of the request's token;
//! - pod port-forward (`pods/NAME/portforward`, WebSocket subprotocol
//!   `v4.channel.k8s.io`, as `kubectl port-forward` and kube's
//!   `Api::portforward` speak it) to the pod's `status.podIP`;
//! - optionally ([`FakeApi::require_auth`]), 401 for requests without a
//!   bearer token it knows, as a real API server answers, and 403 for a
//!   port-forward its user may not `get` (see [`FakeApi::allow`]).
//!
//! - optionally ([`FakeApi::run_endpoint_controller`]), the EndpointSlice
//!   controller: every Service with a selector gets EndpointSlices
//!   (`managed-by: endpointslice-controller.k8s.io`) listing the pods it
//!   selects, with each pod's address, readiness and the Service's
//!   `targetPort` resolved (number or container port name); kept up to
//!   date on every Service and Pod change, deleted when the selector is;
//!   slices of other managers are left alone.
//!
//! Label selectors are honoured for `key` (exists) and `key=value` only.

mod endpointslice;
mod fixtures;
mod portforward;
mod rest;
mod reviews;
mod scale;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

pub use endpointslice::MANAGED_BY_CONTROLLER;
pub use fixtures::{app_pod, endpoint_slice, pod, service};
use portforward::portforward;
use rest::{bearer, handle, status};

/// `group/resource` ("/services" for the core group), namespace, name.
type Key = (String, String, String);

#[derive(Clone, Debug)]
struct Change {
    collection: String,
    namespace: String,
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Watches from before this version get 410 Gone.
    compacted: u64,
    down: bool,
    /// bearer token → (username, groups)
    tokens: HashMap<String, (String, Vec<String>)>,
    /// bearer token → the audiences it was issued for; absent: valid for
    /// whatever audiences a TokenReview asks about.
    audiences: HashMap<String, Vec<String>>,
    /// (user, verb, group/resource[/subresource], namespace, name)
    allowed: HashSet<(String, String, String, String, String)>,
    /// Requests seen: (method, path).
    requests: Vec<(String, String)>,
    /// Bearer tokens presented, in request order.
    bearers: Vec<String>,
    sar_count: usize,
    /// Refuse requests without a known bearer token.
    require_auth: bool,
    /// Port-forwards opened so far.
    forwards: usize,
    /// Whether the EndpointSlice controller runs ([`endpointslice`]).
    endpoint_controller: bool,
}

/// The fake API server; dropping it stops serving.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch (restart, compaction).
    generation: Arc<watch::Sender<u64>>,
    /// The resource version after the latest change, silent ones too.
    revision: Arc<watch::Sender<u64>>,
    /// Where it listens.
    pub addr: SocketAddr,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Collection key and kind of an object from its apiVersion and kind.
fn collection_of(api_version: &str, kind: &str) -> String {
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let plural = match kind {
        "Service" => "services".to_owned(),
        "EndpointSlice" => "endpointslices".to_owned(),
        "Lease" => "leases".to_owned(),
        "Event" => "events".to_owned(),
        "Secret" => "secrets".to_owned(),
        "Pod" => "pods".to_owned(),
        other => format!("{}s", other.to_lowercase()),
    };
    format!("{group}/{plural}")
}

impl FakeApi {
    /// Starts serving on 127.0.0.1, port 0.
    pub async fn start() -> FakeApi {
        FakeApi::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts serving on `addr` (sockets belong to the calling thread's
    /// network namespace, port-forward dials included).
    pub async fn start_on(addr: SocketAddr) -> FakeApi {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let (changes, _) = broadcast::channel(4096);
        let (generation, _) = watch::channel(0);
        let (revision, _) = watch::channel(1);
        let mut fake = FakeApi {
            state: Arc::new(Mutex::new(State {
                rv: 1,
                ..Default::default()
            })),
            changes,
            generation: Arc::new(generation),
            revision: Arc::new(revision),
            addr,
            _task: Arc::new(AbortOnDrop(tokio::spawn(async {}))),
        };
        let app = Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}/portforward",
                axum::routing::any(portforward),
            )
            .fallback(handle)
            .with_state(fake.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake._task = Arc::new(AbortOnDrop(task));
        fake
    }

    /// A kube client for this server, default namespace `ns`, presenting
    /// `token` if given.
    pub fn client(&self, ns: &str, token: Option<&str>) -> kube::Client {
        let mut config = kube::Config::new(
            format!("http://{}", self.addr)
                .parse()
                .expect("fake API URL"),
        );
        config.default_namespace = ns.to_owned();
        config.read_timeout = Some(Duration::from_secs(30));
        if let Some(t) = token {
            config.auth_info.token = Some(t.to_owned().into());
        }
        kube::Client::try_from(config).expect("kube client for the fake API")
    }

    fn record(
        &self,
        st: &mut State,
        collection: &str,
        ns: &str,
        kind: &'static str,
        object: Value,
        log: bool,
    ) {
        let change = Change {
            collection: collection.to_owned(),
            namespace: ns.to_owned(),
            rv: st.rv,
            kind,
            object,
        };
        if log {
            st.log.push(change.clone());
            let _ = self.changes.send(change);
        }
        self.revision.send_replace(st.rv);
    }

    /// Stores `obj` (and lets the controllers react).
    fn put(&self, st: &mut State, obj: Value, log: bool) -> Value {
        let stored = self.store(st, obj, log);
        self.react(st, &stored, log);
        stored
    }

    /// Removes an object (and lets the controllers react); what was there.
    fn remove(&self, st: &mut State, collection: &str, ns: &str, name: &str, log: bool) {
        if let Some(gone) = self.unstore(st, collection, ns, name, log) {
            self.react(st, &gone, log);
        }
    }

    /// Runs the controllers a change to `obj` concerns.
    fn react(&self, st: &mut State, obj: &Value, log: bool) {
        let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
        let collection = collection_of(api_version, obj["kind"].as_str().unwrap_or_default());
        if st.endpoint_controller && endpointslice::concerns(&collection, obj) {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
            self.reconcile_endpoints(st, ns, log);
        }
    }

    /// One pass of the EndpointSlice controller over namespace `ns`.
    fn reconcile_endpoints(&self, st: &mut State, ns: &str, log: bool) {
        let of = |collection: &str| -> Vec<&Value> {
            st.objects
                .iter()
                .filter(|((c, n, _), _)| c == collection && n == ns)
                .map(|(_, v)| v)
                .collect()
        };
        let writes = endpointslice::reconcile(
            ns,
            &of(endpointslice::SERVICES),
            &of(endpointslice::PODS),
            &of(endpointslice::SLICES),
            st.rv,
        );
        for w in writes {
            match w {
                endpointslice::Write::Put(slice) => {
                    self.store(st, slice, log);
                }
                endpointslice::Write::Delete(name) => {
                    self.unstore(st, endpointslice::SLICES, ns, &name, log);
                }
            }
        }
    }

    /// Removes an object without reactions; what was there.
    fn unstore(
        &self,
        st: &mut State,
        collection: &str,
        ns: &str,
        name: &str,
        log: bool,
    ) -> Option<Value> {
        let mut obj =
            st.objects
                .remove(&(collection.to_owned(), ns.to_owned(), name.to_owned()))?;
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.record(st, collection, ns, "DELETED", obj.clone(), log);
        Some(obj)
    }

    /// Stores `obj` without reactions: a new resource version, uid and
    /// creation time kept from the object it replaces.
    fn store(&self, st: &mut State, mut obj: Value, log: bool) -> Value {
        let api_version = obj["apiVersion"].as_str().unwrap_or("v1").to_owned();
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        let collection = collection_of(&api_version, &kind);
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("object without name")
            .to_owned();
        st.rv += 1;
        obj["metadata"]["namespace"] = json!(ns);
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let key = (collection.clone(), ns.clone(), name.clone());
        let existed = st.objects.get(&key).cloned();
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = existed
                .as_ref()
                .map(|e| e["metadata"]["uid"].clone())
                .unwrap_or_else(|| json!(format!("uid-{ns}-{name}-{}", st.rv)));
        }
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
        }
        st.objects.insert(key, obj.clone());
        let kind = if existed.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(st, &collection, &ns, kind, obj.clone(), log);
        obj
    }

    /// Creates or replaces an object (apiVersion, kind and metadata.name
    /// required), as a controller would: watchers see ADDED or MODIFIED.
    pub fn apply(&self, obj: Value) -> Value {
        let mut st = lock(&self.state);
        self.put(&mut st, obj, true)
    }

    /// Deletes an object; watchers see DELETED.
    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        let mut st = lock(&self.state);
        let collection = collection_of(api_version, kind);
        self.remove(&mut st, &collection, ns, name, true);
    }

    /// Runs the EndpointSlice controller from now on (what it writes: the
    /// crate docs): every
    /// Service with a selector gets slices of the Ready pods it selects,
    /// kept up to date on every Service, Pod and managed slice change,
    /// before the write that caused it returns. Off by default, so tests
    /// that write controller-labelled slices by hand keep them.
    pub fn run_endpoint_controller(&self) {
        let mut st = lock(&self.state);
        st.endpoint_controller = true;
        let namespaces: BTreeSet<String> = st.objects.keys().map(|(_, ns, _)| ns.clone()).collect();
        for ns in namespaces {
            self.reconcile_endpoints(&mut st, &ns, true);
        }
    }

    /// A receiver of the API's resource version, which changes with every
    /// stored change (silent ones too): wake on it, then read
    /// [`FakeApi::objects`].
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Changes objects behind the watchers' backs, compacts history past
    /// the change and ends every watch: a resumed watch gets `410 Gone`,
    /// and only a relist can see the change.
    pub fn compact_silently(&self, upserts: Vec<Value>, deletes: Vec<(&str, &str, &str, &str)>) {
        let mut st = lock(&self.state);
        for obj in upserts {
            self.put(&mut st, obj, false);
        }
        for (api_version, kind, ns, name) in deletes {
            let collection = collection_of(api_version, kind);
            if st
                .objects
                .contains_key(&(collection.clone(), ns.to_owned(), name.to_owned()))
            {
                self.remove(&mut st, &collection, ns, name, false);
            } else {
                st.rv += 1;
            }
        }
        st.compacted = st.rv;
        st.log.clear();
        drop(st);
        self.generation.send_modify(|g| *g += 1);
    }

    /// While down every request gets 503 and every watch ends (an API
    /// server restart).
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
        if down {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Objects of a collection (`"/services"`, `"events.k8s.io/events"`...).
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        lock(&self.state)
            .objects
            .iter()
            .filter(|((c, _, _), _)| c == collection)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// One object, if it exists.
    pub fn get(&self, collection: &str, ns: &str, name: &str) -> Option<Value> {
        lock(&self.state)
            .objects
            .get(&(collection.to_owned(), ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Makes `token` authenticate as `user` in TokenReview.
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        lock(&self.state).tokens.insert(
            token.to_owned(),
            (
                user.to_owned(),
                groups.iter().map(|g| (*g).to_owned()).collect(),
            ),
        );
    }

    /// Revokes `token`: TokenReviews no longer authenticate it.
    pub fn remove_token(&self, token: &str) {
        let mut st = lock(&self.state);
        st.tokens.remove(token);
        st.audiences.remove(token);
    }

    /// Makes `token` authenticate as `user` only for `audiences`, as a
    /// bound ServiceAccount token does (`kubectl create token --audience`):
    /// a TokenReview asking for none of them (none asked: the API server's
    /// own, `https://kubernetes.default.svc`) is refused. Empty
    /// `audiences`: an authenticator that ignores audiences (static
    /// tokens), which answers with no audiences.
    pub fn add_token_with_audiences(
        &self,
        token: &str,
        user: &str,
        groups: &[&str],
        audiences: &[&str],
    ) {
        self.add_token(token, user, groups);
        lock(&self.state).audiences.insert(
            token.to_owned(),
            audiences.iter().map(|a| (*a).to_owned()).collect(),
        );
    }

    /// Allows `user` to `verb` `resource` (`services/proxy`) named `name`
    /// in `ns` (SubjectAccessReview); `*` matches any name.
    pub fn allow(&self, user: &str, verb: &str, resource: &str, ns: &str, name: &str) {
        lock(&self.state).allowed.insert((
            user.to_owned(),
            verb.to_owned(),
            resource.to_owned(),
            ns.to_owned(),
            name.to_owned(),
        ));
    }

    /// Revokes what [`FakeApi::allow`] granted.
    pub fn revoke(&self, user: &str, verb: &str, resource: &str, ns: &str, name: &str) {
        lock(&self.state).allowed.remove(&(
            user.to_owned(),
            verb.to_owned(),
            resource.to_owned(),
            ns.to_owned(),
            name.to_owned(),
        ));
    }

    /// SubjectAccessReviews answered so far.
    pub fn sar_count(&self) -> usize {
        lock(&self.state).sar_count
    }

    /// Requests seen so far: (method, path and query).
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.state).requests.clone()
    }

    /// Bearer tokens presented so far, in request order.
    pub fn bearers(&self) -> Vec<String> {
        lock(&self.state).bearers.clone()
    }

    /// From now on, answer 401 to requests without a bearer token added
    /// with [`FakeApi::add_token`].
    pub fn require_auth(&self, on: bool) {
        lock(&self.state).require_auth = on;
    }

    /// Port-forwards opened so far.
    pub fn forwards(&self) -> usize {
        lock(&self.state).forwards
    }

    /// Ends every open port-forward (and watch), as an API server or
    /// kubelet restart does.
    pub fn drop_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Records the request; the error response when it may not proceed.
    fn admit(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
        let mut st = lock(&self.state);
        st.requests.push((method.to_string(), uri.to_string()));
        let bearer = bearer(headers).map(str::to_owned);
        if let Some(b) = &bearer {
            st.bearers.push(b.clone());
        }
        if st.down {
            return Some(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "apiserver restarting",
            ));
        }
        if st.require_auth && !bearer.is_some_and(|b| st.tokens.contains_key(&b)) {
            return Some(status(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized",
            ));
        }
        None
    }
}
