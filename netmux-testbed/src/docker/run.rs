//! What `docker run` gets ([`RunSpec`]).

use std::net::IpAddr;

/// What `docker run --detach` gets.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    image: String,
    name: Option<String>,
    networks: Vec<String>,
    aliases: Vec<String>,
    ip: Option<IpAddr>,
    labels: Vec<(String, String)>,
    env: Vec<(String, String)>,
    health_cmd: Option<String>,
    restart: Option<String>,
    extra: Vec<String>,
    args: Vec<String>,
}

impl RunSpec {
    /// A container of `image`.
    pub fn new(image: &str) -> Self {
        RunSpec {
            image: image.to_owned(),
            ..Default::default()
        }
    }

    /// `--name`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// `--network` (the first one given; a container joins one network at
    /// start, others later with `docker network connect`).
    pub fn network(mut self, network: &str) -> Self {
        self.networks.push(network.to_owned());
        self
    }

    /// `--network-alias`.
    pub fn alias(mut self, alias: &str) -> Self {
        self.aliases.push(alias.to_owned());
        self
    }

    /// `--ip` on the network.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// `--label KEY=VALUE`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `--env KEY=VALUE`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// A health check run by `/bin/sh -c` every second (the image needs a
    /// shell: [`ImageSpec::busybox`]).
    pub fn health_cmd(mut self, cmd: &str) -> Self {
        self.health_cmd = Some(cmd.to_owned());
        self
    }

    /// `--restart POLICY` (`always`, `unless-stopped`...).
    pub fn restart(mut self, policy: &str) -> Self {
        self.restart = Some(policy.to_owned());
        self
    }

    /// Any other `docker run` option, before the image.
    pub fn option(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// The command and its arguments (after the image).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub(super) fn args_vec(&self) -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into(), "--detach".into()];
        if let Some(n) = &self.name {
            v.extend(["--name".into(), n.clone()]);
        }
        if let Some(n) = self.networks.first() {
            v.extend(["--network".into(), n.clone()]);
        }
        for a in &self.aliases {
            v.extend(["--network-alias".into(), a.clone()]);
        }
        if let Some(ip) = self.ip {
            v.extend(["--ip".into(), ip.to_string()]);
        }
        for (k, val) in &self.labels {
            v.extend(["--label".into(), format!("{k}={val}")]);
        }
        for (k, val) in &self.env {
            v.extend(["--env".into(), format!("{k}={val}")]);
        }
        if let Some(h) = &self.health_cmd {
            v.extend([
                "--health-cmd".into(),
                h.clone(),
                "--health-interval".into(),
                "1s".into(),
                "--health-retries".into(),
                "1".into(),
                "--health-timeout".into(),
                "2s".into(),
            ]);
        }
        if let Some(r) = &self.restart {
            v.extend(["--restart".into(), r.clone()]);
        }
        v.extend(self.extra.iter().cloned());
        v.push(self.image.clone());
        v.extend(self.args.iter().cloned());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_spec_puts_options_before_the_image() {
        let v = RunSpec::new("img:1")
            .name("web")
            .network("apps")
            .label("netmux.publish", "true")
            .health_cmd("true")
            .args(["/nx-echo", "http"])
            .args_vec();
        let img = v.iter().position(|a| a == "img:1").unwrap();
        assert!(
            v[..img].contains(&"netmux.publish=true".to_owned()),
            "{v:?}"
        );
        assert_eq!(&v[img + 1..], ["/nx-echo", "http"]);
    }
}
