//! Health (`/live`, `/ready`) and Prometheus (`/metrics`) over HTTP.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::Server;

/// Serves until the task is aborted.
pub(crate) async fn serve(listener: tokio::net::TcpListener, server: Arc<Server>) {
    let app = Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(server);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// Ready once the runtime has published (the endpoint is bound before this
/// server starts).
async fn ready(State(server): State<Arc<Server>>) -> (StatusCode, String) {
    let services = server.catalog.borrow().len();
    (StatusCode::OK, format!("ready: {services} services\n"))
}

async fn metrics(State(server): State<Arc<Server>>) -> String {
    server.metrics.render()
}
