//! The REST surface: paths to collections, list, watch, get, create,
//! replace, merge patch, delete, and the Status errors.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::reviews::{access_review, self_access_review, token_review};
use crate::{lock, Change, FakeApi};

/// The bearer token of a request, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub(crate) fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [("content-type", "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()})
        .to_string(),
    )
        .into_response()
}

pub(crate) fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

struct Target {
    /// `group/resource`.
    collection: String,
    api_version: String,
    namespace: Option<String>,
    name: Option<String>,
    /// `scale` (the only subresource served this way).
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, resource, name, subresource) = match rest {
        ["namespaces", ns, r] => (Some(*ns), *r, None, None),
        ["namespaces", ns, r, n] => (Some(*ns), *r, Some(*n), None),
        ["namespaces", ns, r, n, "scale"] => (Some(*ns), *r, Some(*n), Some("scale")),
        [r] => (None, *r, None, None),
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
        subresource: subresource.map(str::to_owned),
    })
}

pub(crate) fn query(uri: &Uri) -> HashMap<String, String> {
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

pub(crate) fn selector_matches(selector: Option<&String>, obj: &Value) -> bool {
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

pub(crate) fn kind_for(collection: &str) -> &'static str {
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

pub(crate) async fn handle(
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
    if let (Some(_), Some(ns), Some(name)) = (&t.subresource, &t.namespace, &t.name) {
        return crate::scale::handle(&fake, &method, &t.collection, ns, name, &body);
    }
    // Reading a Secret takes a grant, as RBAC holds Secrets back from
    // roles like `view`; other reads stay open.
    if let (true, "Secret", Some(ns), Some(name)) = (
        method == Method::GET,
        kind_for(&t.collection),
        t.namespace.as_deref(),
        t.name.as_deref(),
    ) {
        if let Some(refused) = refuse_get(&fake, &headers, "/secrets", ns, name) {
            return refused;
        }
    }
    match (method, t.collection.as_str()) {
        (Method::POST, "authentication.k8s.io/tokenreviews") => token_review(&fake, &body),
        (Method::POST, "authorization.k8s.io/subjectaccessreviews") => access_review(&fake, &body),
        (Method::POST, "authorization.k8s.io/selfsubjectaccessreviews") => {
            self_access_review(&fake, bearer(&headers), &body)
        }
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

/// With [`FakeApi::require_auth`], the API server's 403 unless the bearer
/// of `headers` may `get` `resource` (`/secrets`, `/pods/portforward`)
/// `name` in `ns` by a grant of [`FakeApi::allow`] for that name or `*`,
/// as RBAC decides (as [`FakeApi::admit`], `None` lets the request on).
/// Without require_auth, anyone may.
pub(crate) fn refuse_get(
    fake: &FakeApi,
    headers: &HeaderMap,
    resource: &str,
    ns: &str,
    name: &str,
) -> Option<Response> {
    let st = lock(&fake.state);
    if !st.require_auth {
        return None;
    }
    let user = bearer(headers)
        .and_then(|b| st.tokens.get(b))
        .map(|(u, _)| u.clone())
        .unwrap_or_default();
    let granted = [name, "*"].iter().any(|n| {
        st.allowed.contains(&(
            user.clone(),
            "get".to_owned(),
            resource.to_owned(),
            ns.to_owned(),
            (*n).to_owned(),
        ))
    });
    if granted {
        return None;
    }
    let resource = resource.trim_start_matches('/');
    let plural = resource.split('/').next().unwrap_or(resource);
    Some(status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!("{plural} \"{name}\" is forbidden: User \"{user}\" cannot get resource \"{resource}\" in API group \"\" in the namespace \"{ns}\""),
    ))
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
