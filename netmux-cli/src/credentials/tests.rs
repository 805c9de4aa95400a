//! Unit tests of the credential plugins and kubeconfig handling (kept
//! beside `credentials.rs` so that file stays under ~800 lines).

use super::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;

/// The names of the fields a daemon-bound kubeconfig may carry per user.
const INLINE_USER_FIELDS: &[&str] = &[
    "token",
    "client-certificate-data",
    "client-key-data",
    "username",
    "password",
    "as",
    "as-groups",
];

/// A map of the user fields of a resolved kubeconfig.
fn user_fields(access: &KubeAccess) -> BTreeMap<String, Value> {
    serde_json::from_str::<Value>(&access.kubeconfig)
        .ok()
        .and_then(|v| v["users"][0]["user"].as_object().cloned())
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn plugin(dir: &Path, body: &str) -> PathBuf {
    let p = write(dir, "plugin.sh", &format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Resolves (without prompting) a kubeconfig whose only context uses
/// one user, given as the YAML under `user:` (4-space indented).
fn resolve_user(dir: &Path, user: &str) -> Result<KubeAccess, KubeError> {
    let kc = write(
        dir,
        "config",
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: a\n\
                 clusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n\
                 users:\n- name: u\n  user:\n{user}\
                 contexts:\n- name: a\n  context: {{cluster: c, user: u}}\n"
        ),
    );
    resolve_config(&read_kubeconfig(&[kc]).unwrap(), "config", None, false)
}

#[test]
fn files_are_inlined_and_context_chosen() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.crt", "CA");
    write(dir.path(), "token", "tok-from-file\n");
    let kc = write(
            dir.path(),
            "config",
            "apiVersion: v1\nkind: Config\ncurrent-context: a\n\
             clusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority: ca.crt\n\
             users:\n- name: u\n  user:\n    tokenFile: token\n- name: v\n  user:\n    token: inline-tok\n\
             - name: w\n  user:\n    client-certificate: cert.pem\n    client-key: key.pem\n\
             contexts:\n- name: a\n  context: {cluster: c, user: u, namespace: apps}\n- name: b\n  context: {cluster: c, user: v}\n\
             - name: w\n  context: {cluster: c, user: w}\n",
        );
    let cfg = read_kubeconfig(&[kc]).unwrap();
    let a = resolve_config(&cfg, "config", None, true).unwrap();
    assert_eq!(user_fields(&a)["token"], json!("tok-from-file"));
    let v: Value = serde_json::from_str(&a.kubeconfig).unwrap();
    assert_eq!(
        v["clusters"][0]["cluster"]["certificate-authority-data"],
        json!("Q0E=")
    );
    assert_eq!(v["contexts"][0]["context"]["namespace"], json!("apps"));
    assert_eq!(a.describe, "a (u)");
    let b = resolve_config(&cfg, "config", Some("b"), true).unwrap();
    assert_eq!(user_fields(&b)["token"], json!("inline-tok"));
    write(dir.path(), "cert.pem", "CERT");
    write(dir.path(), "key.pem", "KEY");
    let w = resolve_config(&cfg, "config", Some("w"), true).unwrap();
    let f = user_fields(&w);
    assert_eq!(f["client-certificate-data"], json!("Q0VSVA=="));
    assert_eq!(f["client-key-data"], json!("S0VZ"));
    let e = resolve_config(&cfg, "config", Some("nope"), true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no context \"nope\"") && e.contains("[a, b, w]"),
        "{e}"
    );
}

#[test]
fn exec_plugin_gives_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(
        dir.path(),
        r#"case "$KUBERNETES_EXEC_INFO" in *ExecCredential*) ;; *) exit 3;; esac
echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"exec-tok-'"$EXTRA"'","expirationTimestamp":"2030-01-01T00:00:00Z"}}'"#,
    );
    let a = resolve_user(
            dir.path(),
            &format!(
                "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      env: [{{name: EXTRA, value: x1}}]\n      interactiveMode: Never\n",
                p.display()
            ),
        )
        .unwrap();
    assert_eq!(user_fields(&a)["token"], json!("exec-tok-x1"));
    assert_eq!(a.expires.as_deref(), Some("2030-01-01T00:00:00Z"));
    let fields = user_fields(&a);
    assert!(fields
        .keys()
        .all(|k| INLINE_USER_FIELDS.contains(&k.as_str())));
}

#[test]
fn plugins_get_the_cluster_when_they_ask() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(
        dir.path(),
        r#"case "$KUBERNETES_EXEC_INFO" in *'"config":{"audience":"aud"}'*'"server":"https://10.0.0.1:6443"'*) ;; *) echo "$KUBERNETES_EXEC_INFO" >&2; exit 4;; esac
echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t"}}'"#,
    );
    let kc = write(
            dir.path(),
            "config",
            &format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: a\n\
                 clusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443\n    extensions:\n    - name: client.authentication.k8s.io/exec\n      extension: {{audience: aud}}\n\
                 users:\n- name: u\n  user:\n    exec:\n      command: {}\n      provideClusterInfo: true\n      interactiveMode: Never\n\
                 contexts:\n- name: a\n  context: {{cluster: c, user: u}}\n",
                p.display()
            ),
        );
    let cfg = read_kubeconfig(&[kc]).unwrap();
    let a = resolve_config(&cfg, "config", None, false).unwrap();
    assert_eq!(user_fields(&a)["token"], json!("t"));
    // The extension was for the plugin, not for the daemon.
    assert!(!a.kubeconfig.contains("audience"), "{}", a.kubeconfig);
}

#[test]
fn expired_oidc_tokens_are_caught_here() {
    let jwt = |exp: u64| {
        let b = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            b("{\"alg\":\"RS256\"}"),
            b(&format!("{{\"exp\":{exp}}}"))
        )
    };
    assert_eq!(jwt_expiry(&jwt(42)), Some(42));
    assert_eq!(jwt_expiry("not-a-jwt"), None);
    let dir = tempfile::tempdir().unwrap();
    let oidc = |token: &str| {
        resolve_user(
            dir.path(),
            &format!(
                "    auth-provider:\n      name: oidc\n      config:\n        id-token: {token}\n"
            ),
        )
    };
    let e = oidc(&jwt(1000)).unwrap_err().to_string();
    assert!(e.contains("expired") && e.contains("kubectl"), "{e}");
    let fresh = jwt(4_000_000_000);
    let a = oidc(&fresh).unwrap();
    assert_eq!(user_fields(&a)["token"], json!(fresh));
}

#[test]
fn bad_plugins_and_providers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(dir.path(), "echo not-json");
    let e = resolve_user(
        dir.path(),
        &format!(
            "    exec:\n      command: {}\n      interactiveMode: Never\n",
            p.display()
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not an ExecCredential"), "{e}");
    let e = resolve_user(
        dir.path(),
        "    exec:\n      command: /nonexistent/plugin\n      installHint: install it with brew\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cannot run it") && e.contains("install it with brew"),
        "{e}"
    );
    let gcp = plugin(
        dir.path(),
        r#"echo '{"credential":{"access_token":"gcp-tok"}}'"#,
    );
    let a = resolve_user(dir.path(), &format!(
                "    auth-provider:\n      name: gcp\n      config:\n        cmd-path: {}\n        token-key: '{{.credential.access_token}}'\n",
                gcp.display()
            ))
        .unwrap();
    assert_eq!(user_fields(&a)["token"], json!("gcp-tok"));
    let e = resolve_user(
        dir.path(),
        "    auth-provider:\n      name: azure\n      config: {}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("azure") && e.contains("exec credential plugin"),
        "{e}"
    );
}
