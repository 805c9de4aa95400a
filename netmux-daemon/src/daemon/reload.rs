//! Reload: a new configuration applied without dropping tunnels.

use std::collections::BTreeMap;
use std::sync::Arc;

use netmux_common::sync::{read, write};

use super::Daemon;
use crate::api::Reply;
use crate::config::Config;

/// The configuration in force, replaced by [`Daemon::reload`].
///
/// Readers get a plain `&Config` (through `Deref`) that stays consistent for
/// as long as they hold it, without a lock across `.await`s and without
/// changing any reader. To make that safe each configuration is leaked:
/// a reload keeps the previous one alive. That is a few KiB per reload, and
/// reloads are operator actions.
pub(crate) struct LiveConfig(std::sync::RwLock<&'static Config>);

impl LiveConfig {
    pub(crate) fn new(config: Config) -> Self {
        LiveConfig(std::sync::RwLock::new(Box::leak(Box::new(config))))
    }

    fn get(&self) -> &'static Config {
        *read(&self.0)
    }

    fn set(&self, config: Config) {
        let leaked: &'static Config = Box::leak(Box::new(config));
        *write(&self.0) = leaked;
    }
}

impl std::ops::Deref for LiveConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        self.get()
    }
}

/// Settings that only take effect when the daemon restarts.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.socket != new.socket || old.socket_group != new.socket_group {
        v.push("socket");
    }
    if old.hosts_file != new.hosts_file {
        v.push("hosts_file");
    }
    if old.address_range != new.address_range {
        v.push("address_range");
    }
    if old.metrics != new.metrics {
        v.push("metrics");
    }
    if old.redirect != new.redirect || old.cgroup != new.cgroup {
        v.push("redirect");
    }
    if old.worker_threads != new.worker_threads {
        v.push("worker_threads");
    }
    // Endpoints' domains and default namespaces follow a reload; where the
    // server listens and how the system is pointed at it do not.
    let dns = |c: &Config| {
        (
            c.dns.enabled,
            c.dns.listen,
            c.dns.method,
            c.dns.link.clone(),
            c.dns.resolver_dir.clone(),
        )
    };
    if dns(old) != dns(new) {
        v.push("[dns]");
    }
    v
}

impl Daemon {
    /// Re-reads the configuration file and applies it ([`Self::reload`]).
    pub async fn reload_from_disk(self: &Arc<Self>) -> Result<Reply, String> {
        let path = self.config.path.clone();
        let new = Config::load(&path).map_err(|e| {
            format!("{e}; the running configuration is unchanged (fix the file and reload again)")
        })?;
        self.reload(new).await
    }

    /// Applies a new configuration without dropping tunnels: connected
    /// endpoints whose settings are unchanged keep their connection and
    /// running services; changed ones are reconnected (their started
    /// services restart once the new catalog arrives); removed ones are
    /// disconnected; new `autostart` ones are connected.
    pub(crate) async fn reload(self: &Arc<Self>, new: Config) -> Result<Reply, String> {
        let old = self.config.get();
        let restart = restart_only_changes(old, &new);
        let mut kept = Vec::new();
        let mut reconnect = Vec::new();
        let mut removed = Vec::new();
        let mut kube_links = BTreeMap::new();
        {
            let mut state = self.state.lock().await;
            for (name, c) in &state.endpoints {
                match new.endpoint(name) {
                    None => removed.push(name.clone()),
                    Some(cfg) if *cfg != c.endpoint.config => reconnect.push(name.clone()),
                    Some(_) => kept.push(name.clone()),
                }
            }
            for name in &removed {
                state.endpoints.remove(name);
                state.wanted.retain(|(ep, _)| ep != name);
            }
            for name in &reconnect {
                // Started services stay wanted: reconcile stops them now (no
                // endpoint) and starts them again on the new connection.
                // The user's Kubernetes credentials are kept when the
                // endpoint still points at the same place.
                if let Some(c) = state.endpoints.remove(name) {
                    if let Some(k) = c.endpoint.kube() {
                        if new.endpoint(name).and_then(|e| e.kubernetes.as_ref())
                            == Some(k.settings())
                        {
                            kube_links.insert(name.clone(), k);
                        }
                    }
                }
            }
            self.config.set(new);
            self.reconcile_locked(&mut state).await;
        }
        let new = self.config.get();
        // Gone from the configuration, connected or not: its series too.
        for e in &old.endpoints {
            if new.endpoint(&e.name).is_none() {
                self.metrics.forget_endpoint(&e.name);
            }
        }
        let added: Vec<String> = new
            .endpoints
            .iter()
            .filter(|e| e.autostart && old.endpoint(&e.name).is_none())
            .map(|e| e.name.clone())
            .collect();
        let mut not_reconnected = Vec::new();
        for name in reconnect.iter().chain(&added) {
            if let Err(e) = self.connect(name, kube_links.remove(name)).await {
                tracing::error!(endpoint = %name, error = %e, "reconnect after reload failed");
                not_reconnected.push(format!("{name} ({e})"));
            }
        }
        tracing::info!(
            ?kept,
            ?reconnect,
            ?removed,
            ?added,
            "configuration reloaded"
        );
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        let mut message = format!(
            "reloaded {}: kept {}; reconnected {}; disconnected {}; connected {}",
            new.path.display(),
            list(&kept),
            list(&reconnect),
            list(&removed),
            list(&added)
        );
        if !restart.is_empty() {
            message.push_str(&format!(
                "; changes to {} take effect after a restart (systemctl restart netmuxd)",
                restart.join(", ")
            ));
        }
        if !not_reconnected.is_empty() {
            message.push_str(&format!(
                "; not reconnected: {}",
                not_reconnected.join("; ")
            ));
        }
        Ok(Reply::Done { message })
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn a_removed_endpoints_metric_series_are_deleted() {
        const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let dir = tempfile::tempdir().unwrap();
        let config = |names: &[&str]| {
            let mut text = format!(
                "hosts_file = \"{}/hosts\"\nredirect = \"loopback\"\n",
                dir.path().display()
            );
            for n in names {
                text.push_str(&format!(
                    "[[endpoint]]\nname = \"{n}\"\nserver = \"127.0.0.1:9\"\nca_pem = \"\"\"{PEM}\"\"\"\n"
                ));
            }
            Config::parse(&dir.path().join("c.toml"), &text).expect("config")
        };
        let metrics = Metrics::new();
        let d = Daemon::new(config(&["gone", "kept"]), metrics.clone());
        crate::metrics::tests::touch_every_series(&metrics, "gone");
        crate::metrics::tests::touch_every_series(&metrics, "kept");
        d.reload(config(&["kept"])).await.expect("reload");
        let text = metrics.render();
        assert!(!text.contains("endpoint=\"gone\""), "{text}");
        assert!(text.contains("endpoint=\"kept\""), "{text}");
    }

    #[test]
    fn settings_that_need_a_restart_are_named() {
        let parse = |extra: &str| {
            Config::parse(
                std::path::Path::new("/t/c.toml"),
                &format!("hosts_file = \"/t/hosts\"\n{extra}"),
            )
            .expect("config")
        };
        let base = parse("");
        assert!(restart_only_changes(&base, &parse("")).is_empty());
        assert_eq!(
            restart_only_changes(&base, &parse("[dns]\nmethod = \"hosts\"\n")),
            ["[dns]"]
        );
        assert_eq!(
            restart_only_changes(&base, &parse("redirect = \"loopback\"\n")),
            ["redirect"]
        );
        assert_eq!(
            restart_only_changes(&base, &parse("worker_threads = 2\n")),
            ["worker_threads"]
        );
    }
}
