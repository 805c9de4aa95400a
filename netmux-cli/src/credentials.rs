//! The CLI side of a Kubernetes endpoint: the user's kubeconfig, resolved
//! into one self-contained context for the daemon.
//!
//! Runs in `netmux connect` and `netmux doctor`, as the user who typed
//! them. Every auth method kube supports ends up inline: token and token
//! file, client certificate and key (data or files), basic auth, OIDC
//! `id-token`, the legacy `gcp` auth-provider, and `exec` credential
//! plugins; commands run here as that user (under `sudo`, as the invoking
//! user: `SUDO_UID`), never in the daemon. Other auth-providers (azure),
//! which kube does not support either, are refused with the fix.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kube::config::{AuthInfo, Cluster, ExecConfig, ExecInteractiveMode, Kubeconfig};
use serde_json::{json, Value};

use netmux_api::kube::{KubeAccess, KubeError, KubeSettings};

/// Who credential plugins run as when the CLI itself runs as root through
/// `sudo`: the user who ran sudo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunAs {
    /// User id.
    pub(crate) uid: u32,
    /// Primary group id.
    pub(crate) gid: u32,
    /// Login name.
    pub(crate) name: String,
    /// Home directory (for `~/.kube/config`).
    pub(crate) home: PathBuf,
}

/// The user behind `sudo`, when this process runs as root through it.
pub(crate) fn invoking_user() -> Option<RunAs> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    if uid == 0 {
        return None;
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(RunAs {
        uid,
        gid: user.gid.as_raw(),
        name: user.name,
        home: user.dir,
    })
}

/// The uid of the user behind `sudo` (`netmux connect` tells the daemon:
/// they own the credentials resolved from their kubeconfig).
pub fn invoking_uid() -> Option<u32> {
    invoking_user().map(|u| u.uid)
}

/// The kubeconfig files to read: `explicit`, else `$KUBECONFIG` (a
/// colon-separated list), else `~/.kube/config`. Called as the user
/// ([`resolve_as_user`] has become them under sudo), so `$HOME` is theirs.
pub(crate) fn kubeconfig_paths(explicit: Option<&Path>) -> Vec<PathBuf> {
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
    };
    if let Some(p) = explicit {
        return vec![match p.strip_prefix("~") {
            Ok(rest) => home().join(rest),
            Err(_) => p.to_owned(),
        }];
    }
    if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let paths: Vec<PathBuf> = std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !paths.is_empty() {
            return paths;
        }
    }
    vec![home().join(".kube").join("config")]
}

/// Reads and merges `paths` (the first file's values win, as in kubectl).
pub(crate) fn read_kubeconfig(paths: &[PathBuf]) -> Result<Kubeconfig, KubeError> {
    let shown = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut merged: Option<Kubeconfig> = None;
    for p in paths {
        if !p.exists() && paths.len() > 1 {
            continue; // kubectl skips missing files of a KUBECONFIG list
        }
        let kc = Kubeconfig::read_from(p).map_err(|e| KubeError::Kubeconfig {
            path: p.display().to_string(),
            message: format!("{e}; point `kubeconfig` in [endpoint.kubernetes], --kubeconfig or $KUBECONFIG at a readable kubeconfig"),
        })?;
        merged = Some(match merged {
            None => kc,
            Some(m) => m.merge(kc).map_err(|e| KubeError::Kubeconfig {
                path: shown.clone(),
                message: e.to_string(),
            })?,
        });
    }
    merged.ok_or_else(|| KubeError::Kubeconfig {
        path: shown,
        message: "no kubeconfig file exists".into(),
    })
}

/// What to resolve: an endpoint's settings and the CLI's overrides.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// `[endpoint.kubernetes]` of the endpoint.
    pub settings: Option<KubeSettings>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `--token-file`: a netmux token for the hello, read as the user.
    pub token_file: Option<PathBuf>,
    /// Whether credential plugins may prompt (false for `doctor`).
    pub interactive: bool,
}

/// Resolves as the user: in this process, or, when it runs as root
/// through `sudo`, in a child process that has become the invoking user
/// entirely (its groups, uid and gid: every file is read and every plugin
/// run as that user, never as root). The child is this program's hidden
/// `__kube-credentials` command ([`serve_child`]).
pub fn resolve_as_user(req: &Request) -> Result<KubeAccess, KubeError> {
    let Some(user) = invoking_user() else {
        return resolve(req);
    };
    let fail = |message: String| KubeError::Exec {
        command: "netmux __kube-credentials".into(),
        user: user.name.clone(),
        message,
    };
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find myself: {e}")))?;
    let name = std::ffi::CString::new(user.name.clone())
        .map_err(|_| fail("user name with a NUL byte".into()))?;
    let gid = nix::unistd::Gid::from_raw(user.gid);
    let uid = nix::unistd::Uid::from_raw(user.uid);
    let groups = nix::unistd::getgrouplist(&name, gid)
        .map_err(|e| fail(format!("groups of {}: {e}", user.name)))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__kube-credentials")
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: between fork and exec only the setgroups, setgid and
        // setuid system calls run, on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let input = serde_json::to_vec(req).map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(&input)
            .map_err(|e| fail(format!("cannot send the request: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("no answer: {e}")))?;
    let answer: ChildAnswer = serde_json::from_slice(&out.stdout).map_err(|e| {
        fail(format!(
            "unreadable answer ({e}); exit status {}",
            out.status
        ))
    })?;
    match answer {
        ChildAnswer::Ok(a) => Ok(a),
        ChildAnswer::Error(e) => Err(KubeError::Kubeconfig {
            path: format!("(as {})", user.name),
            message: e,
        }),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum ChildAnswer {
    Ok(KubeAccess),
    Error(String),
}

/// The hidden `netmux __kube-credentials`: reads a [`Request`] (JSON) on
/// stdin, resolves it as whoever runs it, writes the answer on stdout.
pub fn serve_child() -> std::process::ExitCode {
    let mut input = Vec::new();
    let answer = match std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<Request>(&input).map_err(|e| e.to_string()))
    {
        Ok(req) => match resolve(&req) {
            Ok(a) => ChildAnswer::Ok(a),
            Err(e) => ChildAnswer::Error(e.to_string()),
        },
        Err(e) => ChildAnswer::Error(format!("bad request: {e}")),
    };
    match serde_json::to_string(&answer) {
        Ok(s) => {
            println!("{s}");
            std::process::ExitCode::SUCCESS
        }
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

/// Resolves `req` in this process, as its user: the kubeconfig (with the
/// CLI's overrides) into what the daemon needs. Runs credential plugins.
pub(crate) fn resolve(req: &Request) -> Result<KubeAccess, KubeError> {
    let settings = req.settings.clone().unwrap_or_else(|| KubeSettings {
        kubeconfig: None,
        context: None,
        namespace: "netmux".into(),
        service: "netmux-server".into(),
        port: "quic-stream".into(),
        api_server: None,
    });
    let paths = kubeconfig_paths(req.kubeconfig.as_deref().or(settings.kubeconfig.as_deref()));
    let kc = read_kubeconfig(&paths)?;
    let shown = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut access = resolve_config(
        &kc,
        &shown,
        req.context.as_deref().or(settings.context.as_deref()),
        req.interactive,
    )?;
    if let Some(f) = &req.token_file {
        let t = std::fs::read_to_string(f).map_err(|e| KubeError::Kubeconfig {
            path: f.display().to_string(),
            message: format!("--token-file: {e}"),
        })?;
        let t = t.trim();
        if t.is_empty() {
            return Err(KubeError::Kubeconfig {
                path: f.display().to_string(),
                message: "--token-file is empty".into(),
            });
        }
        access.hello_token = Some(t.to_owned());
    }
    Ok(access)
}

/// [`resolve`] on a kubeconfig already read (`shown` names it in errors).
pub(crate) fn resolve_config(
    kc: &Kubeconfig,
    shown: &str,
    context: Option<&str>,
    interactive: bool,
) -> Result<KubeAccess, KubeError> {
    let bad = |message: String| KubeError::Kubeconfig {
        path: shown.to_owned(),
        message,
    };
    let context_name = context
        .map(str::to_owned)
        .or_else(|| kc.current_context.clone())
        .ok_or_else(|| {
            bad(
                "no current-context: set `context` in [endpoint.kubernetes] or pass --context"
                    .into(),
            )
        })?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| {
            let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
            bad(format!(
                "no context {context_name:?}; contexts are [{}]",
                known.join(", ")
            ))
        })?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| {
            bad(format!(
                "context {context_name:?} names cluster {:?}, which is not in the file",
                ctx.cluster
            ))
        })?;
    let user_name = ctx.user.clone().unwrap_or_default();
    let auth = match &ctx.user {
        Some(u) => kc
            .auth_infos
            .iter()
            .find(|a| &a.name == u)
            .map(|a| a.auth_info.clone().unwrap_or_default())
            .ok_or_else(|| {
                bad(format!(
                    "context {context_name:?} names user {u:?}, which is not in the file"
                ))
            })?,
        None => AuthInfo::default(),
    };
    let mut cluster_json = inline_cluster(&cluster, &bad)?;
    // Only for a plugin's `provideClusterInfo` (client-go passes the
    // cluster's `client.authentication.k8s.io/exec` extension as `config`);
    // removed before the kubeconfig goes to the daemon.
    if let Some(ext) = cluster
        .extensions
        .iter()
        .flatten()
        .find(|e| e.name == "client.authentication.k8s.io/exec")
    {
        cluster_json["config"] = ext.extension.clone();
    }
    let (user_json, expires) = inline_user(&auth, &user_name, &cluster_json, interactive, &bad)?;
    if let Some(m) = cluster_json.as_object_mut() {
        m.remove("config");
    }
    let mut context_json = json!({"cluster": "netmux", "user": "user"});
    if let Some(ns) = &ctx.namespace {
        context_json["namespace"] = json!(ns);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "netmux", "cluster": cluster_json}],
        "users": [{"name": "user", "user": user_json}],
        "contexts": [{"name": "netmux", "context": context_json}],
        "current-context": "netmux",
    });
    Ok(KubeAccess {
        kubeconfig: config.to_string(),
        describe: format!("{context_name} ({user_name})"),
        expires,
        hello_token: None,
    })
}

fn read_b64(
    path: &str,
    what: &str,
    bad: &dyn Fn(String) -> KubeError,
) -> Result<String, KubeError> {
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read {what} {path}: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn inline_cluster(c: &Cluster, bad: &dyn Fn(String) -> KubeError) -> Result<Value, KubeError> {
    let server = c
        .server
        .clone()
        .ok_or_else(|| bad("the context's cluster has no `server`".into()))?;
    let mut out = json!({ "server": server });
    match (&c.certificate_authority_data, &c.certificate_authority) {
        (Some(d), _) => out["certificate-authority-data"] = json!(d),
        (None, Some(f)) => {
            out["certificate-authority-data"] = json!(read_b64(f, "certificate-authority", bad)?)
        }
        (None, None) => {}
    }
    if let Some(v) = c.insecure_skip_tls_verify {
        out["insecure-skip-tls-verify"] = json!(v);
    }
    if let Some(v) = &c.tls_server_name {
        out["tls-server-name"] = json!(v);
    }
    if let Some(v) = &c.proxy_url {
        out["proxy-url"] = json!(v);
    }
    Ok(out)
}

fn inline_user(
    a: &AuthInfo,
    user_name: &str,
    cluster: &Value,
    interactive: bool,
    bad: &dyn Fn(String) -> KubeError,
) -> Result<(Value, Option<String>), KubeError> {
    // kube keeps secrets (token, key, password) in secrecy strings; its
    // serializer writes them out, which is how they are read here.
    let raw = serde_json::to_value(a).unwrap_or_default();
    let secret = |key: &str| raw[key].as_str().map(str::to_owned);
    let mut out = serde_json::Map::new();
    let mut expires = None;
    if let Some(exec) = &a.exec {
        let cred = run_exec(exec, user_name, cluster, interactive)?;
        if let Some(t) = cred.token {
            out.insert("token".into(), json!(t));
        }
        if let Some(c) = cred.client_certificate_data {
            out.insert(
                "client-certificate-data".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(c)),
            );
        }
        if let Some(k) = cred.client_key_data {
            out.insert(
                "client-key-data".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(k)),
            );
        }
        expires = cred.expiration_timestamp;
    }
    if let Some(p) = &a.auth_provider {
        let token = match p.name.as_str() {
            "oidc" => {
                let token = p.config.get("id-token").cloned().ok_or_else(|| {
                    bad(format!(
                        "user {user_name:?}: the oidc auth-provider has no id-token yet: run any kubectl command once to log in"
                    ))
                })?;
                // kubectl would refresh it; here it would only fail later
                // as a 401 in the daemon.
                if let Some(exp) = jwt_expiry(&token) {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    if exp <= now {
                        return Err(bad(format!(
                            "user {user_name:?}: the oidc id-token expired {} s ago: run any kubectl command once to refresh it, then netmux connect again",
                            now - exp
                        )));
                    }
                }
                token
            }
            "gcp" => gcp_token(&p.config, user_name)?,
            other => {
                return Err(bad(format!(
                    "user {user_name:?}: auth-provider {other:?} is not supported (kubectl dropped it too): use its exec credential plugin instead (e.g. kubelogin)"
                )))
            }
        };
        out.insert("token".into(), json!(token));
    }
    if !out.contains_key("token") {
        if let Some(t) = secret("token") {
            out.insert("token".into(), json!(t));
        } else if let Some(f) = &a.token_file {
            let t = std::fs::read_to_string(f)
                .map_err(|e| bad(format!("cannot read tokenFile {f}: {e}")))?;
            out.insert("token".into(), json!(t.trim()));
        }
    }
    // Exec credentials win; else the kubeconfig's data, else its file.
    for (key, data, file, what) in [
        (
            "client-certificate-data",
            a.client_certificate_data.clone(),
            &a.client_certificate,
            "client-certificate",
        ),
        (
            "client-key-data",
            secret("client-key-data"),
            &a.client_key,
            "client-key",
        ),
    ] {
        if out.contains_key(key) {
            continue;
        }
        let value = match (data, file) {
            (Some(d), _) => d,
            (None, Some(f)) => read_b64(f, what, bad)?,
            (None, None) => continue,
        };
        out.insert(key.into(), json!(value));
    }
    if let (Some(u), Some(p)) = (&a.username, secret("password")) {
        out.insert("username".into(), json!(u));
        out.insert("password".into(), json!(p));
    }
    if let Some(v) = &a.impersonate {
        out.insert("as".into(), json!(v));
    }
    if let Some(v) = &a.impersonate_groups {
        out.insert("as-groups".into(), json!(v));
    }
    Ok((Value::Object(out), expires))
}

/// The `exp` claim (seconds since the epoch) of a JWT, if it is one.
fn jwt_expiry(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_u64()
}

/// The legacy `gcp` auth-provider, as kube and client-go read it: the
/// cached `access-token` while `expiry` is ahead, else its `cmd-path`
/// (run as the user) and the `token-key` field of the command's JSON.
fn gcp_token(
    config: &std::collections::HashMap<String, String>,
    user: &str,
) -> Result<String, KubeError> {
    if let Some(t) = config.get("id-token") {
        return Ok(t.clone());
    }
    let fresh = config
        .get("expiry")
        .and_then(|e| e.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_some_and(|e| {
            e > k8s_openapi::jiff::Timestamp::now() + std::time::Duration::from_secs(60)
        });
    if let (Some(t), true) = (config.get("access-token"), fresh) {
        return Ok(t.clone());
    }
    let command = config.get("cmd-path").cloned().unwrap_or_default();
    let fail = |message: String| KubeError::Exec {
        command: command.clone(),
        user: user.to_owned(),
        message,
    };
    if command.is_empty() {
        return Err(fail(
            "the gcp auth-provider has no fresh access-token and no cmd-path: use the exec plugin gke-gcloud-auth-plugin".into(),
        ));
    }
    let mut cmd = std::process::Command::new(&command);
    cmd.args(
        config
            .get("cmd-args")
            .map(|a| a.split_whitespace())
            .into_iter()
            .flatten(),
    );
    cmd.stdin(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd
        .output()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("exited with {}", out.status)));
    }
    let Some(key) = config.get("token-key") else {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    };
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("its output is not JSON: {e}")))?;
    // `{.credential.access_token}`: a dotted path, all client-go uses here.
    let path = key.trim_matches(|c| c == '{' || c == '}' || c == '"' || c == '$');
    let found = path
        .split('.')
        .filter(|p| !p.is_empty())
        .try_fold(&v, |v, k| v.get(k));
    found
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| fail(format!("its output has no string at token-key {key}")))
}

/// What a credential plugin returned (`ExecCredential.status`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecStatus {
    token: Option<String>,
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
    expiration_timestamp: Option<String>,
}

/// Runs a kubeconfig `exec` credential plugin as the user (client-go's
/// protocol: `KUBERNETES_EXEC_INFO` in, an `ExecCredential` on stdout).
fn run_exec(
    exec: &ExecConfig,
    user: &str,
    cluster: &Value,
    may_prompt: bool,
) -> Result<ExecStatus, KubeError> {
    let command = exec.command.clone().unwrap_or_default();
    let fail = |message: String| KubeError::Exec {
        command: command.clone(),
        user: user.to_owned(),
        message,
    };
    if command.is_empty() {
        return Err(fail("the exec entry has no command".into()));
    }
    let api_version = exec
        .api_version
        .clone()
        .unwrap_or_else(|| "client.authentication.k8s.io/v1".into());
    let interactive = may_prompt
        && exec.interactive_mode != Some(ExecInteractiveMode::Never)
        && std::io::stdin().is_terminal();
    if exec.interactive_mode == Some(ExecInteractiveMode::Always) && !interactive {
        return Err(fail(
            "needs an interactive terminal (interactiveMode: Always): run `netmux connect` in a terminal".into(),
        ));
    }
    let mut spec = json!({ "interactive": interactive });
    if exec.provide_cluster_info {
        // client-go's Cluster of the ExecCredential spec (same kebab-case
        // field names as the kubeconfig).
        let mut c = serde_json::Map::new();
        for (from, to) in [
            ("server", "server"),
            ("certificate-authority-data", "certificate-authority-data"),
            ("tls-server-name", "tls-server-name"),
            ("insecure-skip-tls-verify", "insecure-skip-tls-verify"),
            ("proxy-url", "proxy-url"),
            ("config", "config"),
        ] {
            if let Some(v) = cluster.get(from) {
                c.insert(to.to_owned(), v.clone());
            }
        }
        spec["cluster"] = Value::Object(c);
    }
    let info = json!({"apiVersion": api_version, "kind": "ExecCredential", "spec": spec});
    let mut cmd = std::process::Command::new(&command);
    cmd.args(exec.args.iter().flatten());
    for e in exec.env.iter().flatten() {
        if let (Some(k), Some(v)) = (e.get("name"), e.get("value")) {
            cmd.env(k, v);
        }
    }
    cmd.env("KUBERNETES_EXEC_INFO", info.to_string());
    cmd.stdout(std::process::Stdio::piped());
    cmd.stderr(std::process::Stdio::inherit());
    cmd.stdin(if interactive {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    });
    let out = cmd.output().map_err(|e| {
        let hint = exec
            .install_hint
            .as_deref()
            .map(|h| format!("; {}", h.trim()))
            .unwrap_or_default();
        fail(format!("cannot run it: {e}{hint}"))
    })?;
    if !out.status.success() {
        return Err(fail(format!("exited with {}", out.status)));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(format!("its output is not an ExecCredential: {e}")))?;
    if v["kind"].as_str() != Some("ExecCredential") {
        return Err(fail("its output is not an ExecCredential (kind)".into()));
    }
    let status: ExecStatus = serde_json::from_value(v["status"].clone())
        .map_err(|e| fail(format!("its ExecCredential status: {e}")))?;
    if status.token.is_none() && status.client_certificate_data.is_none() {
        return Err(fail(
            "its ExecCredential has neither a token nor a client certificate".into(),
        ));
    }
    if status.client_certificate_data.is_some() != status.client_key_data.is_some() {
        return Err(fail(
            "its ExecCredential has a client certificate without a key, or a key without a certificate".into(),
        ));
    }
    Ok(status)
}

#[cfg(test)]
mod tests;
