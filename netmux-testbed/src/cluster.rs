//! The cluster side of a test world in one call: the fake API server with
//! its EndpointSlice controller, a kube-proxy and pod backends, all in the
//! sandbox's cluster namespace.
//!
//! ```no_run
//! use netmux_testbed::cluster::{AppSpec, FakeCluster};
//! use netmux_testbed::Sandbox;
//!
//! let sb = Sandbox::new().expect("sandbox (needs root)");
//! let cluster = FakeCluster::start(&sb).expect("fake cluster");
//! let web = cluster
//!     .deploy(&AppSpec::new("apps", "web", "10.96.0.20".parse().unwrap(), 80, 8080, 2))
//!     .expect("deploy web");
//! // From the cluster namespace, `curl http://10.96.0.20/` reaches web-0,
//! // then web-1, then web-0... and `cluster.counts()` says so.
//! # let _ = web;
//! ```
//!
//! Addresses: Services in `10.96.0.0/12`, pods in `10.244.0.0/16`, both
//! local to the cluster namespace (a `local` route on `lo`, so anything
//! there is bindable and an address nobody serves refuses at once); the
//! API server on the cluster side's veth address, port
//! [`API_PORT`]. The workstation has no route to any of them.
//!
//! Everything runs on one thread inside the cluster namespace (a
//! current-thread tokio runtime, as a namespace holds per thread); it
//! stops, and every socket closes, when the [`FakeCluster`] is dropped,
//! also while a failed test unwinds.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use netmux_fakekube::{app_pod, FakeApi};
use serde_json::{json, Value};

use crate::backends::{Counts, Tally};
use crate::kubeproxy::Serving;
use crate::{Error, Result, Sandbox};

/// The fake API server's port on the cluster side's veth address.
pub const API_PORT: u16 = 6443;
/// Where Services get their ClusterIPs.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Where pods get their addresses.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The first pod address handed out (`10.244.0.10`).
const FIRST_POD: u32 = u32::from_be_bytes([10, 244, 0, 10]);
/// Bound for the cluster thread to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// A pod of the fake cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name (what its backend answers with).
    pub name: String,
    /// Its `status.podIP`.
    pub ip: IpAddr,
}

/// An app to [`FakeCluster::deploy`]: `replicas` pods `<name>-<i>`
/// labelled `app: <name>` with a container port named `http` on
/// `target_port`, and a Service `<name>` selecting them whose port `http`
/// (`port`) has `targetPort: http`, by name.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// Namespace of the pods and the Service.
    pub namespace: String,
    /// The app's (and Service's) name.
    pub name: String,
    /// The Service's ClusterIP (in [`SERVICE_CIDR`] for a local address).
    pub cluster_ip: IpAddr,
    /// The Service port.
    pub port: u16,
    /// The pods' container port.
    pub target_port: u16,
    /// How many pods.
    pub replicas: usize,
}

impl AppSpec {
    /// An app spec (see the type doc).
    pub fn new(
        namespace: &str,
        name: &str,
        cluster_ip: IpAddr,
        port: u16,
        target_port: u16,
        replicas: usize,
    ) -> AppSpec {
        AppSpec {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            cluster_ip,
            port,
            target_port,
            replicas,
        }
    }
}

/// A deployed app.
#[derive(Debug, Clone)]
pub struct App {
    /// The spec it was deployed from.
    pub spec: AppSpec,
    /// Its pods, in name order.
    pub pods: Vec<PodInfo>,
    /// The Service object as first applied (for byte-identical restore
    /// checks, read the API's copy with `cluster.api().get(..)`).
    pub service: Value,
}

impl App {
    /// `ClusterIP:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.spec.cluster_ip, self.spec.port)
    }

    /// `http://ClusterIP:port<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// The pods' names.
    pub fn pod_names(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.name.clone()).collect()
    }
}

/// Whether a [`FakeCluster`] runs what makes workloads reachable: the
/// EndpointSlice controller, the kube-proxy and the Service and pod routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workloads {
    Run,
    Off,
}

struct Pod {
    info: PodInfo,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

/// The cluster side of a test world; see the [module docs](self).
pub struct FakeCluster {
    api: FakeApi,
    api_addr: SocketAddr,
    netns: String,
    handle: tokio::runtime::Handle,
    serving: Serving,
    tally: Tally,
    pods: Mutex<BTreeMap<(String, String), Pod>>,
    next_pod: AtomicU32,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCluster")
            .field("api_addr", &self.api_addr)
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

impl FakeCluster {
    /// Starts the fake API server (on `sb.cluster_addr():6443`, the
    /// EndpointSlice controller on), the kube-proxy and nothing else yet,
    /// inside `sb`'s cluster namespace.
    pub fn start(sb: &Sandbox) -> Result<FakeCluster> {
        FakeCluster::launch(sb, Workloads::Run)
    }

    /// Starts the fake API server alone (on `sb.cluster_addr():6443`),
    /// inside `sb`'s cluster namespace: no EndpointSlice controller, no
    /// kube-proxy, no Service or pod routes. The API holds what the test
    /// applies and serves port-forwards; the test runs the workloads
    /// itself (so [`FakeCluster::deploy`], which waits for the kube-proxy,
    /// is not for this one).
    pub fn start_api_only(sb: &Sandbox) -> Result<FakeCluster> {
        FakeCluster::launch(sb, Workloads::Off)
    }

    fn launch(sb: &Sandbox, workloads: Workloads) -> Result<FakeCluster> {
        let netns = sb.cluster().name().to_owned();
        if workloads == Workloads::Run {
            for cidr in [SERVICE_CIDR, POD_CIDR] {
                sb.cluster()
                    .ip(["route", "replace", "local", cidr, "dev", "lo"])?;
            }
        }
        let api_addr = SocketAddr::new(sb.cluster_addr().into(), API_PORT);
        let serving = Serving::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ns_name, proxy_serving) = (netns.clone(), serving.clone());
        let thread = std::thread::Builder::new()
            .name("fake-cluster".into())
            .spawn(move || {
                let started = crate::netns::runtime_in(&ns_name);
                let rt = match started {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let api = match tokio::net::TcpListener::bind(api_addr).await {
                        // Bound here first so a taken port is an error, not a panic.
                        Ok(probe) => {
                            drop(probe);
                            FakeApi::start_on(api_addr).await
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(Error::Io {
                                context: format!("binding the fake API server to {api_addr}"),
                                source: e,
                            }));
                            return;
                        }
                    };
                    let proxy = (workloads == Workloads::Run).then(|| {
                        api.run_endpoint_controller();
                        tokio::spawn(crate::kubeproxy::run(api.clone(), ns_name, proxy_serving))
                    });
                    let _ = ready_tx.send(Ok((api, tokio::runtime::Handle::current())));
                    let _ = stopped.await;
                    if let Some(proxy) = proxy {
                        proxy.abort();
                    }
                });
            })
            .map_err(Error::io("starting the fake cluster's thread"))?;
        let (api, handle) = match ready_rx.recv_timeout(ANSWER_TIMEOUT) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                return Err(Error::Check(
                    "the fake cluster's thread did not start".into(),
                ))
            }
        };
        Ok(FakeCluster {
            api,
            api_addr,
            netns,
            handle,
            serving,
            tally: Tally::default(),
            pods: Mutex::new(BTreeMap::new()),
            next_pod: AtomicU32::new(FIRST_POD),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The fake API server (apply, get, delete objects; tokens; RBAC).
    pub fn api(&self) -> &FakeApi {
        &self.api
    }

    /// Where the API server listens (cluster namespace).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// A kubeconfig (YAML) for `user` authenticating with `token`, default
    /// namespace `namespace`, pointing at this API server.
    pub fn kubeconfig(&self, user: &str, token: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {user}\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: {user}\n  user:\n    token: {token}\n\
             contexts:\n- name: {user}\n  context: {{cluster: fake, user: {user}, namespace: {namespace}}}\n",
            self.api_addr
        )
    }

    /// Runs `fut` on the cluster thread (its sockets are in the cluster
    /// namespace) and returns its output. Call from synchronous code.
    fn on_cluster<F, T>(&self, what: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(ANSWER_TIMEOUT)
            .map_err(|_| Error::Check(format!("the fake cluster did not {what} in time")))
    }

    fn next_pod_ip(&self) -> Result<IpAddr> {
        let n = self.next_pod.fetch_add(1, Ordering::Relaxed);
        // 10.244.0.0/16 ends at 10.244.255.255.
        if n > u32::from_be_bytes([10, 244, 255, 254]) {
            return Err(Error::Check(
                "the fake cluster ran out of pod addresses".into(),
            ));
        }
        Ok(IpAddr::V4(Ipv4Addr::from(n)))
    }

    /// Starts pod `name` in `namespace`: a backend on each of `ports`
    /// (name, number) at a fresh pod address, then its Pod object, Running
    /// and Ready, labelled `labels` (so Services selecting it list it).
    pub fn add_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        ports: &[(&str, u16)],
    ) -> Result<PodInfo> {
        let ip = self.next_pod_ip()?;
        let (pod, tally) = (name.to_owned(), self.tally.clone());
        let addrs: Vec<SocketAddr> = ports.iter().map(|(_, p)| SocketAddr::new(ip, *p)).collect();
        let servers = self.on_cluster("start a pod", async move {
            let mut servers = Vec::new();
            for addr in addrs {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        for s in &servers {
                            tokio::task::JoinHandle::abort(s);
                        }
                        return Err(Error::Io {
                            context: format!("binding pod {pod}'s port {addr}"),
                            source: e,
                        });
                    }
                };
                let task =
                    tokio::spawn(crate::backends::serve(listener, pod.clone(), tally.clone()));
                servers.push(task);
            }
            Ok(servers)
        })??;
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        self.api.apply(app_pod(
            namespace,
            name,
            Value::Object(labels),
            &ip.to_string(),
            ports,
        ));
        let info = PodInfo {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip,
        };
        self.lock_pods().insert(
            (namespace.to_owned(), name.to_owned()),
            Pod {
                info: info.clone(),
                servers,
            },
        );
        Ok(info)
    }

    fn lock_pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Pod>> {
        crate::lock(&self.pods)
    }

    /// Deploys `spec` (see [`AppSpec`]) and waits until the kube-proxy
    /// serves its ClusterIP:port.
    pub fn deploy(&self, spec: &AppSpec) -> Result<App> {
        let mut pods = Vec::new();
        for i in 0..spec.replicas {
            pods.push(self.add_pod(
                &spec.namespace,
                &format!("{}-{i}", spec.name),
                &[("app", &spec.name)],
                &[("http", spec.target_port)],
            )?);
        }
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": spec.name, "namespace": spec.namespace,
                         "labels": {"app": spec.name}},
            "spec": {"type": "ClusterIP", "clusterIP": spec.cluster_ip.to_string(),
                     "clusterIPs": [spec.cluster_ip.to_string()],
                     "selector": {"app": spec.name},
                     "ports": [{"name": "http", "port": spec.port, "targetPort": "http",
                                "protocol": "TCP"}]},
        });
        self.api.apply(service.clone());
        let app = App {
            spec: spec.clone(),
            pods,
            service,
        };
        self.wait_for_service(app.addr(), ANSWER_TIMEOUT)?;
        Ok(app)
    }

    /// Waits until the kube-proxy listens on `addr` (a Service's
    /// `ClusterIP:port`), without making a connection.
    pub fn wait_for_service(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        crate::wait_until(
            &format!("the fake cluster's kube-proxy to serve {addr}"),
            timeout,
            || self.serving.contains(&addr),
        )
    }

    /// Sets pod `name`'s Ready condition (its backend keeps running): the
    /// controller lists it as (not) ready and the kube-proxy follows.
    pub fn set_pod_ready(&self, namespace: &str, name: &str, ready: bool) -> Result<()> {
        let mut pod = self
            .api
            .get("/pods", namespace, name)
            .ok_or_else(|| Error::Check(format!("no pod {namespace}/{name}")))?;
        pod["status"]["conditions"] =
            json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
        self.api.apply(pod);
        Ok(())
    }

    /// Stops pod `name`'s backends at once (open connections close, new
    /// ones are refused) and leaves its Pod object as it is: a crash the
    /// cluster has not noticed yet.
    pub fn crash_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let servers: Vec<_> = self
            .lock_pods()
            .get_mut(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| Error::Check(format!("no pod {namespace}/{name} started here")))?
            .servers
            .drain(..)
            .collect();
        // Returns once the listeners are closed, so the next connection
        // is refused.
        self.on_cluster("stop a pod", async move {
            for s in servers {
                s.abort();
                let _ = s.await;
            }
        })
    }

    /// Stops pod `name`'s backends and deletes its Pod object.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        self.crash_pod(namespace, name)?;
        self.lock_pods()
            .remove(&(namespace.to_owned(), name.to_owned()));
        self.api.delete("v1", "Pod", namespace, name);
        Ok(())
    }

    /// The pods started here.
    pub fn pods(&self) -> Vec<PodInfo> {
        self.lock_pods().values().map(|p| p.info.clone()).collect()
    }

    /// Requests each pod answered so far, by pod name.
    pub fn counts(&self) -> BTreeMap<String, Counts> {
        self.tally.snapshot()
    }

    /// Requests pod `name` answered so far.
    pub fn requests(&self, name: &str) -> u64 {
        self.counts().get(name).map(Counts::total).unwrap_or(0)
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
