//! TokenReview and SubjectAccessReview, answered from the tables the test
//! fills in ([`FakeApi::add_token`], [`FakeApi::allow`]).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::rest::ok_json;
use crate::{lock, FakeApi};

pub(crate) fn token_review(fake: &FakeApi, body: &[u8]) -> Response {
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

pub(crate) fn access_review(fake: &FakeApi, body: &[u8]) -> Response {
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
