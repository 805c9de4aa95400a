//! Service discovery backends.
//!
//! A runtime turns its source of truth into complete service lists for the
//! [`CatalogStore`]. Today: [`static_file`] (bare metal, tests, demo).

pub mod static_file;

use std::sync::Arc;

use crate::catalog::CatalogStore;
use crate::config::RuntimeConfig;

/// A running runtime; dropping it stops discovery.
pub struct RuntimeHandle {
    _task: tokio::task::JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// Starts the configured runtime after publishing its first catalog.
pub async fn start(
    config: &RuntimeConfig,
    store: Arc<CatalogStore>,
) -> Result<RuntimeHandle, static_file::ServicesError> {
    match config {
        RuntimeConfig::Static { services } => static_file::start(services.clone(), store).await,
    }
}
