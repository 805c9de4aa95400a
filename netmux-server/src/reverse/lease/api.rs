//! Talking to the API server: its status codes, errors that name the
//! missing permission, and deletes that leave a newer holder's objects.

use kube::api::{DeleteParams, Preconditions};
use kube::Api;

use super::ATTEMPTS;

/// HTTP status of an API error, if the API server answered.
pub(super) fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// What the API said, with what the server's account may lack on 403.
pub(super) fn api_error(what: &str, needs: &str, e: &kube::Error) -> String {
    if code(e) == Some(403) {
        format!("{what}: {e}; the server's account needs {needs}")
    } else {
        format!("{what}: {e}")
    }
}

/// Deletes `name` while `ours` says it is still this claim's, at the version
/// read (a newer claim's object is left alone).
pub(super) async fn delete_if<K>(api: &Api<K>, name: &str, ours: impl Fn(&K) -> bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..ATTEMPTS {
        let current = match api.get_opt(name).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot read an object to release it; it expires or is replaced by the next holder");
                return;
            }
        };
        if !ours(&current) {
            return;
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: current.meta().resource_version.clone(),
                uid: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => return,
            Err(e) if code(&e) == Some(404) => return,
            Err(e) if code(&e) == Some(409) => continue,
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot delete on release; it expires or is replaced by the next holder");
                return;
            }
        }
    }
}
