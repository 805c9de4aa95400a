//! TokenReview, SubjectAccessReview and SelfSubjectAccessReview, answered
//! from the tables the test fills in ([`FakeApi::add_token`], [`FakeApi::allow`]).

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

/// What a review asks: (verb, `group/resource[/subresource]`, namespace,
/// name) from its `spec.resourceAttributes`.
fn attributes(spec: &Value) -> (String, String, String, String) {
    let ra = &spec["resourceAttributes"];
    let s = |k: &str| ra[k].as_str().unwrap_or_default().to_owned();
    let mut resource = format!("{}/{}", s("group"), s("resource"));
    if let Some(sub) = ra["subresource"].as_str().filter(|s| !s.is_empty()) {
        resource = format!("{resource}/{sub}");
    }
    (s("verb"), resource, s("namespace"), s("name"))
}

/// Whether the rules of [`FakeApi::allow`] let `user` do what `spec` asks
/// (a rule for name `*` covers every name, and a review without a name).
fn allowed(fake: &FakeApi, user: &str, spec: &Value) -> bool {
    let (verb, resource, ns, name) = attributes(spec);
    let mut st = lock(&fake.state);
    st.sar_count += 1;
    let rule = |name: String| {
        (
            user.to_owned(),
            verb.clone(),
            resource.clone(),
            ns.clone(),
            name,
        )
    };
    st.allowed.contains(&rule(name)) || st.allowed.contains(&rule("*".into()))
}

fn answer(req: &Value, allowed: bool, denied: &str) -> Response {
    let mut resp = req.clone();
    resp["status"] = if allowed {
        json!({"allowed": true, "reason": "granted by the test"})
    } else {
        json!({"allowed": false, "reason": denied})
    };
    ok_json(StatusCode::CREATED, &resp)
}

/// SubjectAccessReview: may `spec.user` do it?
pub(crate) fn access_review(fake: &FakeApi, body: &[u8]) -> Response {
    let req: Value = serde_json::from_slice(body).unwrap_or_default();
    let user = req["spec"]["user"].as_str().unwrap_or_default().to_owned();
    let ok = allowed(fake, &user, &req["spec"]);
    answer(&req, ok, "")
}

/// SelfSubjectAccessReview (`kubectl auth can-i`): may the user of the
/// request's bearer token do it? An unknown or missing token is a user
/// with no rules.
pub(crate) fn self_access_review(fake: &FakeApi, bearer: Option<&str>, body: &[u8]) -> Response {
    let req: Value = serde_json::from_slice(body).unwrap_or_default();
    let user = bearer
        .and_then(|b| lock(&fake.state).tokens.get(b).map(|(u, _)| u.clone()))
        .unwrap_or_else(|| "system:anonymous".to_owned());
    let ok = allowed(fake, &user, &req["spec"]);
    let (verb, resource, ns, _) = attributes(&req["spec"]);
    answer(
        &req,
        ok,
        &format!("RBAC: {user} may not {verb} {resource} in namespace {ns:?}"),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    use kube::api::PostParams;
    use kube::Api;

    use crate::FakeApi;

    async fn can_i(api: &FakeApi, token: &str, verb: &str, ns: &str, name: Option<&str>) -> bool {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.into()),
                    verb: Some(verb.into()),
                    resource: Some("services".into()),
                    name: name.map(str::to_owned),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews: Api<SelfSubjectAccessReview> = Api::all(api.client("apps", Some(token)));
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .expect("the fake answers SelfSubjectAccessReviews");
        answer.status.expect("a status").allowed
    }

    #[tokio::test]
    async fn self_reviews_answer_for_the_token_s_user_from_its_rules() {
        let api = FakeApi::start().await;
        api.add_token("alice-token", "alice", &[]);
        api.add_token("bob-token", "bob", &[]);
        api.allow("alice", "intercept", "/services", "apps", "*");
        api.allow("bob", "intercept", "/services", "apps", "web");
        assert!(can_i(&api, "alice-token", "intercept", "apps", None).await);
        assert!(can_i(&api, "alice-token", "intercept", "apps", Some("web")).await);
        assert!(!can_i(&api, "alice-token", "intercept", "other", None).await);
        assert!(!can_i(&api, "alice-token", "delete", "apps", None).await);
        // A rule for one name does not cover the whole collection.
        assert!(can_i(&api, "bob-token", "intercept", "apps", Some("web")).await);
        assert!(!can_i(&api, "bob-token", "intercept", "apps", None).await);
        assert!(!can_i(&api, "unknown-token", "intercept", "apps", None).await);
        api.revoke("alice", "intercept", "/services", "apps", "*");
        assert!(!can_i(&api, "alice-token", "intercept", "apps", None).await);
    }
}
