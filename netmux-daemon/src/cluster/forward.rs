//! The daemon side of a Kubernetes endpoint: a kube client from the
//! credentials `netmux connect` handed over, and port-forwards to a ready
//! server pod.
//!
//! Each call of [`KubeLink::open`] looks the pods up again, so the
//! endpoint's reconnect loop re-resolves by itself when a pod restarts or a
//! forward drops. Consecutive opens rotate over the ready pods, so a
//! replica that keeps failing is not retried forever.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{port_ref, KubeAccess, KubeError, KubeSettings, PortRef};

/// Name of the ConfigMap holding the server's CA certificate (`ca.pem`),
/// read when the endpoint has no `ca_file`.
pub(crate) const CA_CONFIGMAP: &str = "netmux-ca";

/// A kube client for one Kubernetes endpoint, as the user.
pub struct KubeLink {
    client: kube::Client,
    settings: KubeSettings,
    bearer: Option<String>,
    /// `context (user)` of the credentials.
    pub(crate) describe: String,
    /// The API server's URL (never a redirect target).
    pub(crate) api_server: String,
    /// The uid whose `netmux connect` handed these credentials over:
    /// reads made with them for one user (a pod's environment, Secrets
    /// included) are answered to that user and root only.
    pub(crate) owner: Option<u32>,
    next: AtomicUsize,
}

impl std::fmt::Debug for KubeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLink")
            .field("describe", &self.describe)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// An open port-forward to a server pod.
pub struct Forward {
    /// The byte stream to the pod's port.
    pub(crate) stream: tokio::io::DuplexStream,
    /// `namespace/pod`.
    pub pod: String,
    /// The pod's address and port (names the far end).
    pub(crate) peer: SocketAddr,
}

/// Refuses anything in a daemon-bound kubeconfig that would make the daemon
/// read a file or run a command: only inline credentials are accepted.
pub(crate) fn check_inline(kc: &Kubeconfig) -> Result<(), KubeError> {
    let refuse = |what: &str| {
        Err(KubeError::Refused(format!(
            "the credentials handed to netmuxd carry {what}; netmuxd only takes inline credentials (update the netmux CLI)"
        )))
    };
    for c in kc.clusters.iter().filter_map(|c| c.cluster.as_ref()) {
        if c.certificate_authority.is_some() {
            return refuse("a certificate-authority file");
        }
    }
    for a in kc.auth_infos.iter().filter_map(|a| a.auth_info.as_ref()) {
        if a.exec.is_some() {
            return refuse("an exec credential plugin");
        }
        if a.auth_provider.is_some() {
            return refuse("an auth-provider");
        }
        if a.token_file.is_some() || a.client_certificate.is_some() || a.client_key.is_some() {
            return refuse("a credential file");
        }
    }
    Ok(())
}

fn api_error(settings: &KubeSettings, what: &str, e: kube::Error) -> KubeError {
    let ns = &settings.namespace;
    match &e {
        kube::Error::Api(s) if s.code == 401 => KubeError::Unauthorized(format!(
            "{what}: the cluster refused the credentials (401 {}): they expired or were revoked",
            s.message
        )),
        kube::Error::Api(s) if s.code == 403 => KubeError::Api(format!(
            "{what}: forbidden ({}); your user needs what the Role netmux-user grants in namespace {ns}: get the Service, list pods, get and create pods/portforward, get the ConfigMap netmux-ca (docs/kubernetes.md)",
            s.message
        )),
        _ => KubeError::Api(format!("{what}: {e}")),
    }
}

impl KubeLink {
    /// Builds the client; refuses credentials that are not inline.
    pub async fn new(access: &KubeAccess, settings: KubeSettings) -> Result<KubeLink, KubeError> {
        let kc = Kubeconfig::from_yaml(&access.kubeconfig)
            .map_err(|e| KubeError::Refused(format!("the handed-over kubeconfig: {e}")))?;
        check_inline(&kc)?;
        if let Some(pinned) = &settings.api_server {
            let given: Vec<String> = kc
                .clusters
                .iter()
                .filter_map(|c| c.cluster.as_ref()?.server.clone())
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect();
            if given.iter().any(|u| u != pinned) || given.is_empty() {
                return Err(KubeError::Refused(format!(
                    "this endpoint is pinned to the API server {pinned} (api_server in [endpoint.kubernetes]), and your kubeconfig context points at {}: use --context for that cluster",
                    given.join(", ")
                )));
            }
        }
        let bearer = access.hello_token.clone().or_else(|| {
            kc.auth_infos
                .first()
                .and_then(|a| a.auth_info.as_ref())
                .and_then(|a| serde_json::to_value(a).ok())
                .and_then(|v| v["token"].as_str().map(str::to_owned))
        });
        let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| KubeError::Refused(format!("the handed-over kubeconfig: {e}")))?;
        config.connect_timeout = Some(std::time::Duration::from_secs(5));
        let api_server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .map_err(|e| KubeError::Api(format!("cannot build a Kubernetes client: {e}")))?;
        // Start the rotation somewhere else in each daemon, so daemons
        // spread over the replicas.
        let start = std::process::id() as usize;
        Ok(KubeLink {
            client,
            settings,
            bearer,
            api_server,
            // Text from the client, shown in logs and replies.
            describe: access
                .describe
                .chars()
                .filter(|c| !c.is_control())
                .collect(),
            owner: None,
            next: AtomicUsize::new(start),
        })
    }

    /// The same link, marked as handed over by `uid`.
    pub(crate) fn owned_by(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// The token presented in the hello (RBAC on the server): the one
    /// given with `--token-file`, else the kubeconfig's bearer token;
    /// `None` for client-certificate users without one.
    pub(crate) fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }

    /// The settings it was made for.
    pub(crate) fn settings(&self) -> &KubeSettings {
        &self.settings
    }

    /// The client, as the user.
    pub(crate) fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The namespace of the kubeconfig's context.
    pub fn default_namespace(&self) -> &str {
        self.client.default_namespace()
    }

    /// Whether these credentials may use the verb `intercept` on Services
    /// in `namespace` (a SelfSubjectAccessReview; what the server asks
    /// about by SubjectAccessReview before an intercept).
    pub async fn may_intercept(&self, namespace: &str) -> Result<bool, KubeError> {
        self.may(namespace, "intercept", "", "services", None).await
    }

    /// Whether these credentials may `patch` the scale of Deployments in
    /// `namespace`, what the server asks about before `intercept
    /// --replace` stops one.
    pub async fn may_scale_deployments(&self, namespace: &str) -> Result<bool, KubeError> {
        self.may(namespace, "patch", "apps", "deployments", Some("scale"))
            .await
    }

    /// A SelfSubjectAccessReview of `verb` on `group`/`resource`
    /// (`subresource`) in `namespace`.
    async fn may(
        &self,
        namespace: &str,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
    ) -> Result<bool, KubeError> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_owned()),
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    subresource: subresource.map(str::to_owned),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let what = match subresource {
            Some(sub) => format!("SelfSubjectAccessReview ({verb} {resource}/{sub})"),
            None => format!("SelfSubjectAccessReview ({verb} {resource})"),
        };
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| api_error(&self.settings, &what, e))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// The server's CA certificate from the ConfigMap [`CA_CONFIGMAP`].
    pub async fn ca_pem(&self) -> Result<String, KubeError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let what = format!(
            "ConfigMap {}/{CA_CONFIGMAP} (the server's CA)",
            self.settings.namespace
        );
        let cm = api
            .get(CA_CONFIGMAP)
            .await
            .map_err(|e| api_error(&self.settings, &what, e))?;
        cm.data
            .and_then(|d| d.get("ca.pem").cloned())
            .filter(|p| p.contains("-----BEGIN CERTIFICATE-----"))
            .ok_or_else(|| {
                KubeError::Api(format!(
                    "{what} has no PEM certificate under `ca.pem`; see docs/kubernetes.md, or set ca_file in the endpoint"
                ))
            })
    }

    /// Finds a ready server pod and opens a port-forward to it.
    pub async fn open(&self) -> Result<Forward, KubeError> {
        let s = &self.settings;
        let services: Api<Service> = Api::namespaced(self.client.clone(), &s.namespace);
        let what = format!("Service {}/{}", s.namespace, s.service);
        let svc = services
            .get_opt(&s.service)
            .await
            .map_err(|e| api_error(s, &what, e))?
            .ok_or_else(|| {
                KubeError::Api(format!(
                    "{what} not found: is netmux-server deployed (kubectl apply -k manifests/...), and are namespace and service right in [endpoint.kubernetes]?"
                ))
            })?;
        let spec = svc.spec.unwrap_or_default();
        let selector = spec.selector.filter(|m| !m.is_empty()).ok_or_else(|| {
            KubeError::Api(format!("{what} has no selector: cannot find its pods"))
        })?;
        let label_selector = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let want = port_ref(&s.port)
            .ok_or_else(|| KubeError::Refused(format!("port {:?} is invalid", s.port)))?;
        let port = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .find(|p| {
                p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                    && match &want {
                        PortRef::Number(n) => p.port == i32::from(*n),
                        PortRef::Name(n) => p.name.as_deref() == Some(n.as_str()),
                    }
            })
            .ok_or_else(|| {
                KubeError::Api(format!(
                    "{what} has no TCP port {:?}: set `port` in [endpoint.kubernetes] to the port carrying the server's stream_listen",
                    s.port
                ))
            })?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &s.namespace);
        let mut ready: Vec<Pod> = pods
            .list(&ListParams::default().labels(&label_selector))
            .await
            .map_err(|e| api_error(s, &format!("pods of {what}"), e))?
            .items
            .into_iter()
            .filter(is_ready)
            .collect();
        if ready.is_empty() {
            return Err(KubeError::Api(format!(
                "no ready pod behind {what} (selector {label_selector}): kubectl -n {} get pods -l {label_selector}",
                s.namespace
            )));
        }
        ready.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let pod = &ready[self.next.fetch_add(1, Ordering::Relaxed) % ready.len()];
        let name = pod.metadata.name.clone().unwrap_or_default();
        let target = target_port(&port.target_port, port.port, pod).ok_or_else(|| {
            KubeError::Api(format!(
                "{what} port {:?} targets {:?}, which pod {name} does not declare",
                s.port, port.target_port
            ))
        })?;
        let ip = pod
            .status
            .as_ref()
            .and_then(|st| st.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let mut pf = pods
            .portforward(&name, &[target])
            .await
            .map_err(|e| api_error(s, &format!("port-forward to pod {}/{name}", s.namespace), e))?;
        let stream = pf.take_stream(target).ok_or_else(|| {
            KubeError::Api(format!(
                "port-forward to pod {}/{name}: no stream",
                s.namespace
            ))
        })?;
        let errors = pf.take_error(target);
        let label = format!("{}/{name}", s.namespace);
        let pod_label = label.clone();
        tokio::spawn(async move {
            let errors = async {
                if let Some(f) = errors {
                    if let Some(msg) = f.await {
                        tracing::warn!(pod = %pod_label, error = %msg, "port-forward error");
                    }
                }
            };
            let (_, joined) = tokio::join!(errors, pf.join());
            if let Err(e) = joined {
                tracing::info!(pod = %pod_label, error = %e, "port-forward ended");
            }
        });
        Ok(Forward {
            stream,
            pod: label,
            peer: SocketAddr::new(ip, target),
        })
    }
}

/// Running, Ready, not being deleted, with an IP.
pub(crate) fn is_ready(p: &Pod) -> bool {
    if p.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(st) = &p.status else { return false };
    st.phase.as_deref() == Some("Running")
        && st.pod_ip.is_some()
        && st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The container port a Service port reaches on `pod`.
fn target_port(target: &Option<IntOrString>, port: i32, pod: &Pod) -> Option<u16> {
    match target {
        None => u16::try_from(port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => match name.parse::<u16>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_files_are_refused() {
        let base = "apiVersion: v1\nkind: Config\ncurrent-context: n\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1\n\
                    contexts:\n- name: n\n  context: {cluster: c, user: u}\nusers:\n- name: u\n  user:\n";
        let ok = Kubeconfig::from_yaml(&format!("{base}    token: t\n")).unwrap();
        assert!(check_inline(&ok).is_ok());
        for (user, what) in [
            ("    exec:\n      command: /bin/sh\n", "exec"),
            ("    tokenFile: /etc/shadow\n", "file"),
            ("    client-key: /root/key\n", "file"),
            ("    auth-provider:\n      name: gcp\n", "auth-provider"),
            ("    client-certificate: /root/cert\n", "file"),
        ] {
            let kc = Kubeconfig::from_yaml(&format!("{base}{user}")).unwrap();
            let e = check_inline(&kc).unwrap_err().to_string();
            assert!(e.contains(what), "{user}: {e}");
        }
    }

    #[test]
    fn ca_files_are_refused() {
        let kc = Kubeconfig::from_yaml(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://x\n    certificate-authority: /etc/shadow\n",
        )
        .unwrap();
        assert!(check_inline(&kc)
            .unwrap_err()
            .to_string()
            .contains("certificate-authority"));
    }

    #[tokio::test]
    async fn a_pinned_api_server_is_enforced() {
        let access = |server: &str| KubeAccess {
            kubeconfig: serde_json::json!({
                "apiVersion": "v1", "kind": "Config", "current-context": "n",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "n", "context": {"cluster": "c", "user": "u"}}],
            })
            .to_string(),
            describe: "n (u)".into(),
            expires: None,
            hello_token: None,
        };
        let mut settings = KubeSettings::validate(
            None,
            None,
            "netmux".into(),
            "netmux-server".into(),
            "quic-stream".into(),
        )
        .unwrap();
        settings.api_server = Some("https://api.example.com:6443".into());
        assert!(
            KubeLink::new(&access("https://api.example.com:6443/"), settings.clone())
                .await
                .is_ok()
        );
        let e = KubeLink::new(&access("https://evil.example.com"), settings)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pinned") && e.contains("evil.example.com"),
            "{e}"
        );
    }

    fn pod(ready: bool, deleting: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "deletionTimestamp": if deleting { Some("2024-01-01T00:00:00Z") } else { None }},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "quic-stream", "containerPort": 7443}]}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5",
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn readiness_and_target_ports() {
        assert!(is_ready(&pod(true, false)));
        assert!(!is_ready(&pod(false, false)));
        assert!(!is_ready(&pod(true, true)));
        let p = pod(true, false);
        assert_eq!(target_port(&None, 80, &p), Some(80));
        assert_eq!(target_port(&Some(IntOrString::Int(81)), 80, &p), Some(81));
        assert_eq!(
            target_port(&Some(IntOrString::String("quic-stream".into())), 80, &p),
            Some(7443)
        );
        assert_eq!(
            target_port(&Some(IntOrString::String("nope".into())), 80, &p),
            None
        );
    }
}
