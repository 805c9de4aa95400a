//! `netmux env` (and `netmux intercept --env-file`): the environment of
//! the container behind a cluster Service, read with the credentials the
//! user connected the endpoint with ([`crate::cluster::workload`]), so it
//! shows exactly what that user may read and nothing more, and only to
//! that user (or root): another member of the socket group connects with
//! their own credentials first.

use super::Daemon;
use crate::api::{EnvironmentView, Reply};

impl Daemon {
    /// The environment of `service`'s container for `port` (or the one
    /// named `container`) on `ep`.
    pub async fn environment(
        &self,
        ep: &str,
        service: &str,
        port: Option<u16>,
        container: Option<&str>,
        uid: u32,
    ) -> Result<Reply, String> {
        let (svc, kube) = {
            let state = self.state.lock().await;
            let svc = self.cluster_service(&state, ep, service)?;
            let kube = self.connected(&state, ep)?.endpoint.kube();
            (svc, kube)
        };
        let Some(kube) = kube else {
            return Err(format!(
                "endpoint {ep} is not a Kubernetes endpoint connected with your credentials: a pod's environment is read with them ([endpoint.kubernetes] in the config, then `netmux connect {ep}`)"
            ));
        };
        // Secrets are read with these credentials: only for their owner.
        if let Some(owner) = kube.owner.filter(|o| *o != uid && uid != 0) {
            return Err(format!(
                "endpoint {ep} is connected with the Kubernetes credentials of uid {owner} ({}); a pod's environment, Secrets included, is read with them for that user only; fix: run `netmux connect {ep}` as yourself first",
                kube.describe
            ));
        }
        let w = kube
            .workload(&svc.namespace, &svc.name, port, container)
            .await
            .map_err(|e| format!("{ep}: {e}"))?;
        Ok(Reply::Environment(EnvironmentView {
            service: svc.key(),
            pod: w.pod,
            container: w.container,
            vars: w.environment.vars,
            notes: w.environment.notes,
        }))
    }
}
