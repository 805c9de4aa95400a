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
//! - TokenReview and SubjectAccessReview from tables the test fills in;
//! - pod port-forward (`pods/NAME/portforward`, WebSocket subprotocol
//!   `v4.channel.k8s.io`, as `kubectl port-forward` and kube's
//!   `Api::portforward` speak it) to the pod's `status.podIP`;
//! - optionally ([`FakeApi::require_auth`]), 401 for requests without a
//!   bearer token it knows, as a real API server answers, and 403 for a
//!   port-forward its user may not `get` (see [`FakeApi::allow`]).
//!
//! Label selectors are honoured for `key` (exists) and `key=value` only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

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
}

/// The fake API server; dropping it stops serving.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch (restart, compaction).
    generation: Arc<watch::Sender<u64>>,
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
        let mut fake = FakeApi {
            state: Arc::new(Mutex::new(State {
                rv: 1,
                ..Default::default()
            })),
            changes,
            generation: Arc::new(generation),
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
    }

    fn put(&self, st: &mut State, mut obj: Value, log: bool) -> Value {
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
        if let Some(mut obj) =
            st.objects
                .remove(&(collection.clone(), ns.to_owned(), name.to_owned()))
        {
            st.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            self.record(&mut st, &collection, ns, "DELETED", obj, true);
        }
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
            st.objects
                .remove(&(collection, ns.to_owned(), name.to_owned()));
            st.rv += 1;
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

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [("content-type", "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()})
        .to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

struct Target {
    /// `group/resource`.
    collection: String,
    api_version: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, resource, name) = match rest {
        ["namespaces", ns, r] => (Some(*ns), *r, None),
        ["namespaces", ns, r, n] => (Some(*ns), *r, Some(*n)),
        [r] => (None, *r, None),
        _ => return None,
    };
    Some(Target {
        collection: format!("{group}/{resource}"),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default()
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn selector_matches(selector: Option<&String>, obj: &Value) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let labels = &obj["metadata"]["labels"];
        match term.split_once('=') {
            Some((k, v)) => labels[k.trim_end_matches('=')].as_str() == Some(v),
            None => !labels[term].is_null(),
        }
    })
}

fn kind_for(collection: &str) -> &'static str {
    match collection.rsplit('/').next().unwrap_or_default() {
        "services" => "Service",
        "endpointslices" => "EndpointSlice",
        "leases" => "Lease",
        "events" => "Event",
        "secrets" => "Secret",
        "pods" => "Pod",
        _ => "Object",
    }
}

async fn handle(
    axum::extract::State(fake): axum::extract::State<FakeApi>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = fake.admit(&method, &uri, &headers) {
        return refused;
    }
    let Some(t) = parse_path(uri.path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such path");
    };
    let q = query(&uri);
    match (method, t.collection.as_str()) {
        (Method::POST, "authentication.k8s.io/tokenreviews") => token_review(&fake, &body),
        (Method::POST, "authorization.k8s.io/subjectaccessreviews") => access_review(&fake, &body),
        (Method::GET, _)
            if t.name.is_none() && q.get("watch").is_some_and(|w| w == "true" || w == "1") =>
        {
            watch_stream(&fake, t, q)
        }
        (Method::GET, _) if t.name.is_none() => list(&fake, &t, &q),
        (Method::GET, _) => match t
            .namespace
            .as_ref()
            .zip(t.name.as_ref())
            .and_then(|(ns, n)| fake.get(&t.collection, ns, n))
        {
            Some(obj) => ok_json(StatusCode::OK, &obj),
            None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
        },
        (Method::POST, _) => create(&fake, &t, &body),
        (Method::PUT, _) => replace(&fake, &t, &body),
        (Method::PATCH, _) => patch(&fake, &t, &body),
        (Method::DELETE, _) => {
            let (Some(ns), Some(name)) = (t.namespace.as_deref(), t.name.as_deref()) else {
                return status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "delete collection",
                );
            };
            match fake.get(&t.collection, ns, name) {
                Some(obj) if !precondition_holds(&body, &obj) => status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "Precondition failed: the object has been modified",
                ),
                Some(obj) => {
                    fake.delete(&t.api_version, kind_for(&t.collection), ns, name);
                    ok_json(StatusCode::OK, &obj)
                }
                None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "unsupported",
        ),
    }
}

/// Whether a DELETE body's `preconditions` (resourceVersion, uid) match
/// `obj`; no body or no preconditions match.
fn precondition_holds(body: &[u8], obj: &Value) -> bool {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return true;
    };
    let pre = &req["preconditions"];
    ["resourceVersion", "uid"].iter().all(|k| {
        pre[*k]
            .as_str()
            .is_none_or(|want| obj["metadata"][*k].as_str() == Some(want))
    })
}

fn list(fake: &FakeApi, t: &Target, q: &HashMap<String, String>) -> Response {
    let st = lock(&fake.state);
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((c, ns, _), obj)| {
            *c == t.collection
                && t.namespace.as_ref().is_none_or(|n| n == ns)
                && selector_matches(q.get("labelSelector"), obj)
        })
        .map(|(_, v)| v.clone())
        .collect();
    ok_json(
        StatusCode::OK,
        &json!({
            "apiVersion": t.api_version,
            "kind": format!("{}List", kind_for(&t.collection)),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        }),
    )
}

fn watch_stream(fake: &FakeApi, t: Target, q: HashMap<String, String>) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290u64);
    let selector = q.get("labelSelector").cloned();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let line = |kind: &str, obj: &Value| {
        Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})))
    };
    let wanted = move |c: &Change| {
        c.collection == t.collection
            && t.namespace.as_ref().is_none_or(|n| *n == c.namespace)
            && selector_matches(selector.as_ref(), &c.object)
    };
    let mut changes = fake.changes.subscribe();
    let mut generation = fake.generation.subscribe();
    generation.mark_unchanged();
    let (backlog, gone) = {
        let st = lock(&fake.state);
        if from < st.compacted {
            (vec![], true)
        } else {
            let b: Vec<Change> = st
                .log
                .iter()
                .filter(|c| c.rv > from && wanted(c))
                .cloned()
                .collect();
            (b, false)
        }
    };
    tokio::spawn(async move {
        if gone {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410});
            let _ = tx.send(Ok(line("ERROR", &status))).await;
            return;
        }
        let mut last = from;
        for c in backlog {
            last = c.rv;
            if tx.send(Ok(line(c.kind, &c.object))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                _ = generation.changed() => return,
                c = changes.recv() => match c {
                    Ok(c) if c.rv > last && wanted(&c) => {
                        last = c.rv;
                        if tx.send(Ok(line(c.kind, &c.object))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(body)
        .unwrap_or_else(|_| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "response",
            )
        })
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, Infallible>>,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn with_identity(t: &Target, mut obj: Value) -> Value {
    if obj["apiVersion"].is_null() {
        obj["apiVersion"] = json!(t.api_version);
    }
    if obj["kind"].is_null() {
        obj["kind"] = json!(kind_for(&t.collection));
    }
    if let Some(ns) = &t.namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    obj
}

fn create(fake: &FakeApi, t: &Target, body: &[u8]) -> Response {
    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let mut obj = with_identity(t, obj);
    if obj["metadata"]["name"].is_null() {
        if let Some(prefix) = obj["metadata"]["generateName"].as_str() {
            let n = lock(&fake.state).rv;
            obj["metadata"]["name"] = json!(format!("{prefix}{n}"));
        } else {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name required",
            );
        }
    }
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut st = lock(&fake.state);
    if st.objects.contains_key(&(t.collection.clone(), ns, name)) {
        return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
    }
    let stored = fake.put(&mut st, obj, true);
    ok_json(StatusCode::CREATED, &stored)
}

fn replace(fake: &FakeApi, t: &Target, body: &[u8]) -> Response {
    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let obj = with_identity(t, obj);
    let (Some(ns), Some(name)) = (t.namespace.clone(), t.name.clone()) else {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "put needs a name",
        );
    };
    let mut st = lock(&fake.state);
    let Some(current) = st.objects.get(&(t.collection.clone(), ns, name)) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "not found");
    };
    let sent = obj["metadata"]["resourceVersion"].as_str();
    if sent.is_some() && sent != current["metadata"]["resourceVersion"].as_str() {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified",
        );
    }
    let stored = fake.put(&mut st, obj, true);
    ok_json(StatusCode::OK, &stored)
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn patch(fake: &FakeApi, t: &Target, body: &[u8]) -> Response {
    let Ok(p) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let (Some(ns), Some(name)) = (t.namespace.clone(), t.name.clone()) else {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "patch needs a name",
        );
    };
    let mut st = lock(&fake.state);
    let Some(mut obj) = st.objects.get(&(t.collection.clone(), ns, name)).cloned() else {
        return status(StatusCode::NOT_FOUND, "NotFound", "not found");
    };
    merge(&mut obj, &p);
    let stored = fake.put(&mut st, obj, true);
    ok_json(StatusCode::OK, &stored)
}

fn token_review(fake: &FakeApi, body: &[u8]) -> Response {
    let req: Value = serde_json::from_slice(body).unwrap_or_default();
    let token = req["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = match req["spec"]["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => vec!["https://kubernetes.default.svc".to_owned()],
    };
    let st = lock(&fake.state);
    let granted: Option<Vec<String>> = match st.audiences.get(token) {
        None => Some(asked.clone()),
        Some(issued) if issued.is_empty() => Some(vec![]),
        Some(issued) => {
            let both: Vec<String> = asked
                .iter()
                .filter(|a| issued.contains(a))
                .cloned()
                .collect();
            (!both.is_empty()).then_some(both)
        }
    };
    let status = match (st.tokens.get(token), granted) {
        (Some((user, groups)), Some(granted)) => {
            json!({"authenticated": true, "user": {"username": user, "groups": groups}, "audiences": granted})
        }
        (Some(_), None) => json!({"authenticated": false, "error": "token audiences are invalid"}),
        (None, _) => json!({"authenticated": false, "error": "token not recognised"}),
    };
    let mut resp = req.clone();
    resp["status"] = status;
    ok_json(StatusCode::CREATED, &resp)
}

fn access_review(fake: &FakeApi, body: &[u8]) -> Response {
    let req: Value = serde_json::from_slice(body).unwrap_or_default();
    let spec = &req["spec"];
    let ra = &spec["resourceAttributes"];
    let user = spec["user"].as_str().unwrap_or_default().to_owned();
    let group = ra["group"].as_str().unwrap_or_default();
    let mut resource = format!("{group}/{}", ra["resource"].as_str().unwrap_or_default());
    if let Some(sub) = ra["subresource"].as_str().filter(|s| !s.is_empty()) {
        resource = format!("{resource}/{sub}");
    }
    let verb = ra["verb"].as_str().unwrap_or_default().to_owned();
    let ns = ra["namespace"].as_str().unwrap_or_default().to_owned();
    let name = ra["name"].as_str().unwrap_or_default().to_owned();
    let mut st = lock(&fake.state);
    st.sar_count += 1;
    let allowed = st.allowed.contains(&(
        user.clone(),
        verb.clone(),
        resource.clone(),
        ns.clone(),
        name,
    )) || st.allowed.contains(&(user, verb, resource, ns, "*".into()));
    let mut resp = req.clone();
    resp["status"] =
        json!({"allowed": allowed, "reason": if allowed { "granted by the test" } else { "" }});
    ok_json(StatusCode::CREATED, &resp)
}

/// A Service object selecting pods `app: <name>` (its EndpointSlices are
/// the controller's, see [`endpoint_slice`]); remove `spec.selector` for a
/// selectorless one.
pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: Value, nx: Option<&str>) -> Value {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": cluster_ip, "ports": ports, "selector": {"app": name}},
    });
    if cluster_ip != "None" {
        v["spec"]["clusterIPs"] = json!([cluster_ip]);
    }
    if let Some(nx) = nx {
        v["metadata"]["annotations"] = json!({ "nx": nx });
    }
    v
}

/// An EndpointSlice of Service `svc` as the EndpointSlice controller writes
/// it (`endpointslice.kubernetes.io/managed-by`); endpoints are (ip,
/// hostname, ready).
pub fn endpoint_slice(
    ns: &str,
    svc: &str,
    endpoints: &[(&str, Option<&str>, bool)],
    ports: Value,
) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, host, ready)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": ready}});
            if let Some(h) = host {
                e["hostname"] = json!(h);
            }
            e
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-abcde"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": ports,
    })
}

/// `GET pods/NAME/portforward?ports=P`: upgrades to a WebSocket
/// (`v4.channel.k8s.io`) and relays channel 0 to `status.podIP:P`. Like
/// the kubelet, it first sends the port on the data and error channels,
/// reports a failed dial on the error channel, and relays each direction
/// until it ends.
async fn portforward(
    axum::extract::State(fake): axum::extract::State<FakeApi>,
    axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    if let Some(refused) = fake.admit(&method, &uri, &headers) {
        return refused;
    }
    // Authorized as the API server does a WebSocket GET: `get` on
    // pods/portforward (with require_auth).
    {
        let st = lock(&fake.state);
        if st.require_auth {
            let user = bearer(&headers)
                .and_then(|b| st.tokens.get(b))
                .map(|(u, _)| u.clone())
                .unwrap_or_default();
            let allowed = [name.as_str(), "*"].iter().any(|n| {
                st.allowed.contains(&(
                    user.clone(),
                    "get".to_owned(),
                    "/pods/portforward".to_owned(),
                    ns.clone(),
                    (*n).to_owned(),
                ))
            });
            if !allowed {
                return status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &format!("pods \"{name}\" is forbidden: User \"{user}\" cannot get resource \"pods/portforward\" in API group \"\" in the namespace \"{ns}\""),
                );
            }
        }
    }
    let q = query(&uri);
    let Some(port) = q.get("ports").and_then(|p| p.parse::<u16>().ok()) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "ports: one port number expected",
        );
    };
    let Some(pod) = fake.get("/pods", &ns, &name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        );
    };
    let Some(ip) = pod["status"]["podIP"]
        .as_str()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "pod has no IP: not running",
        );
    };
    let Ok(ws) = ws else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "port-forward needs a WebSocket upgrade",
        );
    };
    lock(&fake.state).forwards += 1;
    let mut generation = fake.generation.subscribe();
    ws.protocols(["v4.channel.k8s.io"])
        .on_upgrade(move |socket| async move {
            tokio::select! {
                _ = relay(socket, SocketAddr::new(ip, port)) => {}
                _ = generation.changed() => {}
            }
        })
}

async fn relay(mut socket: axum::extract::ws::WebSocket, target: SocketAddr) {
    use axum::extract::ws::Message;
    use futures::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let port = target.port().to_le_bytes();
    for ch in [0u8, 1] {
        let frame = Bytes::from(vec![ch, port[0], port[1]]);
        if socket.send(Message::Binary(frame)).await.is_err() {
            return;
        }
    }
    let tcp = match tokio::net::TcpStream::connect(target).await {
        Ok(t) => t,
        Err(e) => {
            let mut msg = vec![1u8];
            msg.extend_from_slice(
                format!("error forwarding port {} to pod: {e}", target.port()).as_bytes(),
            );
            let _ = socket.send(Message::Binary(Bytes::from(msg))).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let (mut sink, mut stream) = socket.split();
    let to_pod = async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if b.len() > 1 && b[0] == 0 => match wr.write_all(&b[1..]).await
                {
                    Ok(()) => {}
                    Err(_) => break,
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf[1..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf[0] = 0;
                    let frame = Bytes::copy_from_slice(&buf[..=n]);
                    if sink.send(Message::Binary(frame)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    // The forward ends when either side ends, as a kubelet's does once
    // the pod connection closes.
    tokio::select! {
        _ = to_pod => {}
        _ = from_pod => {}
    }
}

/// A Pod of `app` (label `app.kubernetes.io/name`), Running and Ready at
/// `ip` with a container port `port` named `port_name`.
pub fn pod(ns: &str, name: &str, app: &str, ip: &str, port_name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app.kubernetes.io/name": app}},
        "spec": {"containers": [{"name": "server", "image": "netmux-server",
                 "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}
