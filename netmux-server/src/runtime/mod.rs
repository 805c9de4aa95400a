//! Service discovery backends.
//!
//! A runtime turns its source of truth into complete service lists for the
//! [`CatalogStore`]: [`static_file`] (bare metal, tests, demo) and
//! [`kubernetes`] (Services and EndpointSlices).

pub(crate) mod docker;
pub mod kubernetes;
pub(crate) mod static_file;

use std::sync::Arc;

use netmux_common::proto::catalog::{Direction, Service, ServiceId, ServicePort};

use crate::catalog::CatalogStore;
use crate::config::RuntimeConfig;

/// A catalog entry `ns/name` as a runtime builds it: the catalog store
/// gives it its id.
pub(crate) fn entry(
    name: &str,
    ns: &str,
    aliases: Vec<String>,
    addresses: Vec<std::net::IpAddr>,
    ports: Vec<ServicePort>,
    direction: Direction,
) -> Service {
    Service {
        id: ServiceId(0),
        name: name.to_owned(),
        namespace: ns.to_owned(),
        aliases,
        addresses,
        ports,
        direction,
    }
}

/// A running runtime; dropping it stops discovery.
pub struct RuntimeHandle {
    _task: tokio::task::JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl RuntimeHandle {
    /// The handle of a watching runtime's `task` once it published its
    /// first catalog (`first`); if that takes longer than `timeout`, the
    /// task is stopped and the error is the last one it saw.
    async fn after_first_sync(
        task: tokio::task::JoinHandle<()>,
        first: tokio::sync::oneshot::Receiver<()>,
        timeout: std::time::Duration,
        last_error: &std::sync::Mutex<String>,
    ) -> Result<RuntimeHandle, String> {
        match tokio::time::timeout(timeout, first).await {
            Ok(Ok(())) => Ok(RuntimeHandle {
                _task: task,
                _watcher: None,
            }),
            _ => {
                task.abort();
                Err(netmux_common::sync::lock(last_error).clone())
            }
        }
    }
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// Why a runtime did not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// The services file is unusable.
    #[error(transparent)]
    Static(#[from] static_file::ServicesError),
    /// The cluster could not be watched.
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::Error),
    /// The Docker API could not be followed.
    #[error(transparent)]
    Docker(#[from] docker::Error),
}

/// Starts the configured runtime after publishing its first catalog.
///
/// `server_addresses` are the server's own addresses, at which no
/// runtime's catalog ever points ([`crate::policy`]).
pub(crate) async fn start(
    config: &RuntimeConfig,
    server_addresses: Vec<std::net::IpAddr>,
    store: Arc<CatalogStore>,
) -> Result<RuntimeHandle, StartError> {
    match config {
        RuntimeConfig::Docker(settings) => {
            Ok(docker::start(settings, server_addresses, store).await?)
        }
        RuntimeConfig::Static {
            services,
            allowed_target_cidrs,
            allow_unsafe_targets,
        } => {
            let policy = crate::policy::TargetPolicy {
                allowed: allowed_target_cidrs.clone(),
                allow_unsafe: allow_unsafe_targets.clone(),
                server_addresses,
            };
            Ok(static_file::start(services.clone(), policy, store).await?)
        }
        RuntimeConfig::Kubernetes {
            namespaces,
            publish_unannotated,
            cluster_domain,
            initial_sync_timeout_ms,
            allowed_target_cidrs,
            allow_unsafe_targets,
        } => {
            let options = kubernetes::Options {
                namespaces: namespaces.clone(),
                catalog: kubernetes::CatalogOptions {
                    publish_unannotated: *publish_unannotated,
                    cluster_domain: cluster_domain.clone(),
                    policy: crate::policy::TargetPolicy {
                        allowed: allowed_target_cidrs.clone(),
                        allow_unsafe: allow_unsafe_targets.clone(),
                        server_addresses,
                    },
                },
                initial_sync_timeout: std::time::Duration::from_millis(*initial_sync_timeout_ms),
            };
            let client = kube::Client::try_default()
                .await
                .map_err(kubernetes::Error::Client)?;
            Ok(kubernetes::start(client, &options, store).await?)
        }
    }
}
