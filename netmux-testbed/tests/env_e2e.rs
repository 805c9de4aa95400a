//! `netmux env` and `netmux intercept --env-file` against a (fake)
//! Kubernetes cluster: the environment of the container behind a Service,
//! read by netmuxd with the credentials the developer connected with, so
//! a Secret they may not read stays out (named in a note) until RBAC
//! grants it.
//!
//! The world is `kube_e2e.rs`'s (kube_world): netmux-server with the
//! Kubernetes runtime, netmuxd, the CLI as an unprivileged user, the fake
//! API server with RBAC on Secrets. Need root; `--test-threads=1`.

use std::os::unix::fs::PermissionsExt as _;

use netmux_fakekube::app_pod;
use serde_json::{json, Value};

mod common;
mod kube_world;
use common::{on_failure_dump, sandbox, T};
use kube_world::*;
use netmux_testbed::{bin, Side};

/// `netmux LINE` (words split at spaces) as the developer.
fn user(w: &World<'_>, line: &str) -> netmux_testbed::Output {
    let args: Vec<&str> = line.split_whitespace().collect();
    w.cli_as_user(&args)
}

/// The variables of `netmux env kube web -o json`, as the developer.
fn env_json(w: &World<'_>) -> (Value, String) {
    let out = user(w, "env kube web -o json");
    assert!(out.success(), "env: {}{}", out.stdout, out.stderr);
    let vars: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("env json: {e}: {}", out.stdout));
    (vars, out.stderr)
}

#[test]
fn env_reads_the_pods_environment_with_the_developers_rights() {
    let sb = sandbox();
    let w = world(&sb);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let api = w.fake.api();
            let pod_ip = sb.cluster_addr().to_string();
            api.apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "web-config", "namespace": "apps"},
                "data": {"LOG_LEVEL": "debug", "not a name": "x"},
            }));
            api.apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "web-db", "namespace": "apps"},
                // "s3cret'x"
                "data": {"password": "czNjcmV0J3g="},
            }));
            let mut pod = app_pod(
                "apps",
                "web-7d9f",
                json!({"app": "web"}),
                &pod_ip,
                &[("http", 8080)],
            );
            pod["spec"]["containers"][0]["envFrom"] =
                json!([{"configMapRef": {"name": "web-config"}}]);
            pod["spec"]["containers"][0]["env"] = json!([
                {"name": "GREETING", "value": "hello $(LOG_LEVEL)"},
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "web-db", "key": "password"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MULTI", "value": "a\nb"},
            ]);
            // Volumes for --mount: a ConfigMap, one key of a Secret, and
            // an emptyDir (its contents live on the node: a note).
            api.apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "web-files", "namespace": "apps"},
                "data": {"app.yaml": "port: 8080\n"},
            }));
            pod["spec"]["volumes"] = json!([
                {"name": "files", "configMap": {"name": "web-files"}},
                {"name": "creds", "secret": {"secretName": "web-db",
                    "items": [{"key": "password", "path": "db/password", "mode": 0o400}]}},
                {"name": "cache", "emptyDir": {}},
            ]);
            pod["spec"]["containers"][0]["volumeMounts"] = json!([
                {"name": "files", "mountPath": "/etc/web", "readOnly": true},
                {"name": "creds", "mountPath": "/etc/secret"},
                {"name": "cache", "mountPath": "/cache"},
            ]);
            if let Some(containers) = pod["spec"]["containers"].as_array_mut() {
                containers.push(json!({"name": "proxy", "image": "proxy",
                    "env": [{"name": "PROXY_MODE", "value": "sidecar"}]}));
            }
            api.apply(pod);

            // Not connected yet: the fix is named.
            let out = user(&w, "env kube web");
            assert!(
                !out.success() && out.stderr.contains("netmux connect kube"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            let out = user(&w, "connect kube");
            assert!(out.success(), "connect: {}{}", out.stdout, out.stderr);

            // alice may not read Secrets: everything else, and a note
            // naming the variable, the Secret and the fix.
            let (vars, notes) = env_json(&w);
            assert_eq!(vars["LOG_LEVEL"], "debug", "{vars}");
            assert_eq!(vars["GREETING"], "hello debug", "{vars}");
            assert_eq!(vars["POD_NAME"], "web-7d9f", "{vars}");
            assert_eq!(vars["POD_IP"], pod_ip.as_str(), "{vars}");
            assert_eq!(vars["MULTI"], "a\nb", "{vars}");
            assert_eq!(
                vars["WEB_SERVICE_HOST"], "10.96.0.10",
                "service links: {vars}"
            );
            assert_eq!(vars["WEB_SERVICE_PORT"], "8080", "{vars}");
            assert!(vars.get("DB_PASSWORD").is_none(), "{vars}");
            assert!(vars.get("not a name").is_none(), "{vars}");
            let secret_note = notes
                .lines()
                .find(|l| l.contains("DB_PASSWORD"))
                .unwrap_or_else(|| panic!("no note for DB_PASSWORD: {notes}"));
            assert!(
                secret_note.contains("web-db") && secret_note.contains("forbidden"),
                "{secret_note}"
            );
            assert!(
                notes.contains("not a name"),
                "the skipped key is named: {notes}"
            );

            // The Service is not started here: its link host is named.
            assert!(
                notes.contains(
                    "WEB_SERVICE_HOST: the cluster addresses of Services not started here"
                ),
                "{notes}"
            );

            // Granted: the value is there, exactly.
            api.allow("alice", "get", "/secrets", "apps", "web-db");
            let (vars, notes) = env_json(&w);
            assert_eq!(vars["DB_PASSWORD"], "s3cret'x", "{vars}");
            assert!(!notes.contains("DB_PASSWORD"), "{notes}");

            // Started here (loopback backend: the cluster address is not
            // caught), the link variables hold its local address, which
            // answers.
            let out = user(&w, "start kube web");
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            let (vars, notes) = env_json(&w);
            let host = vars["WEB_SERVICE_HOST"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(host.starts_with("127.77."), "{vars}");
            assert_eq!(
                vars["WEB_PORT"],
                format!("tcp://{host}:8080").as_str(),
                "{vars}"
            );
            assert!(notes.contains("now hold its local address"), "{notes}");
            assert!(!notes.contains("WEB_SERVICE_HOST"), "{notes}");
            let out = common::curl(&sb, Side::Workstation, &format!("http://{host}:8080/env"));
            assert!(
                out.success() && out.stdout.contains("path=/env"),
                "{}{}",
                out.stdout,
                out.stderr
            );

            // Another member of the socket group may not read them with
            // alice's credentials; root may.
            let out = sb
                .process(Side::Workstation, "netmux-other-user", "setpriv")
                .args([
                    "--reuid=4242",
                    &format!("--regid={USER_ID}"),
                    "--clear-groups",
                    "--",
                ])
                .arg(bin("netmux").expect("netmux built"))
                .arg("--socket")
                .arg(&w.socket)
                .args(["env", "kube", "web"])
                .run(T)
                .expect("run netmux as another user");
            assert!(
                !out.success()
                    && out.stderr.contains(&format!("uid {USER_ID}"))
                    && out.stderr.contains("netmux connect kube"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            assert!(!out.stdout.contains("s3cret"), "{}", out.stdout);
            let out = w.cli(&["env", "kube", "web", "-o", "json"]);
            assert!(
                out.success() && out.stdout.contains("s3cret"),
                "root: {}",
                out.stderr
            );
            // `sudo netmux connect` renews them from alice's kubeconfig:
            // they stay hers, not root's.
            let kubeconfig = w.dev.kubeconfig.display().to_string();
            let out = w.cli_sudo(&["connect", "kube", "--kubeconfig", &kubeconfig]);
            assert!(out.success(), "sudo connect: {}{}", out.stdout, out.stderr);
            let (vars, _) = env_json(&w);
            assert_eq!(
                vars["DB_PASSWORD"], "s3cret'x",
                "after sudo connect: {vars}"
            );

            // --container: another container of the pod; a wrong name
            // gets the ones it has.
            let out = user(&w, "env kube web -o json --container proxy");
            let proxy: Value = serde_json::from_str(&out.stdout).expect("json");
            assert!(
                proxy["PROXY_MODE"] == "sidecar" && proxy.get("GREETING").is_none(),
                "{proxy}"
            );
            let out = user(&w, "env kube web --container nope");
            assert!(
                !out.success() && out.stderr.contains("it has app, proxy"),
                "{}",
                out.stderr
            );

            // --exclude / --include trim it (`+` is the wildcard).
            let out = user(
                &w,
                "env kube web -o json --exclude WEB_+ --exclude KUBERNETES_+",
            );
            let trimmed: Value = serde_json::from_str(&out.stdout).expect("json");
            assert!(
                trimmed.get("WEB_SERVICE_HOST").is_none() && trimmed["GREETING"] == "hello debug",
                "{trimmed}"
            );
            assert!(
                !out.stderr.contains("KUBERNETES_"),
                "its note goes too: {}",
                out.stderr
            );
            let out = user(&w, "env kube web -o json --include POD_+");
            let only: Value = serde_json::from_str(&out.stdout).expect("json");
            assert_eq!(
                only.as_object().map(|o| o.len()),
                Some(2),
                "POD_NAME, POD_IP: {only}"
            );

            // The dotenv form leaves out what it cannot carry, and says so.
            let out = user(&w, "env kube web");
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            assert!(
                out.stdout.lines().any(|l| l == "GREETING=hello debug"),
                "{}",
                out.stdout
            );
            assert!(!out.stdout.contains("MULTI"), "{}", out.stdout);
            assert!(
                out.stderr.contains("MULTI: left out of the dotenv form"),
                "{}",
                out.stderr
            );

            // A command runs with the environment added.
            let script = "printf '%s|%s' \"$GREETING\" \"$DB_PASSWORD\"; exit 3";
            let out = w.cli_as_user(&["env", "kube", "web", "--", "sh", "-c", script]);
            assert_eq!(out.stdout, "hello debug|s3cret'x", "{}", out.stderr);
            assert_eq!(out.status.code(), Some(3), "its exit status is passed on");

            // --mount: the files of its volumes at their mount paths, for
            // the developer only, named by NETMUX_ROOT; the emptyDir noted.
            let mounts = dir(sb.dir().join("mounts"), 0o777);
            let root = mounts.join("web");
            let line = format!("env kube web -o json --mount {}", root.display());
            let out = user(&w, &line);
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            let vars: Value = serde_json::from_str(&out.stdout).expect("json");
            assert_eq!(vars["NETMUX_ROOT"], root.display().to_string().as_str());
            let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap_or_default();
            assert_eq!(read("etc/web/app.yaml"), "port: 8080\n", "{}", out.stderr);
            assert_eq!(read("etc/secret/db/password"), "s3cret'x", "{}", out.stderr);
            let meta = std::fs::metadata(root.join("etc/secret/db/password")).expect("meta");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner only");
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), USER_ID);
            assert!(
                out.stderr.contains("wrote 2 files of 2 volume mounts")
                    && out.stderr.contains("/cache (volume cache)")
                    && out.stderr.contains("stay until you remove them"),
                "{}",
                out.stderr
            );
            // Under sudo, what is made belongs to the user who ran sudo
            // (their credentials read it), not to root.
            let root3 = mounts.join("web-sudo");
            let root3_arg = root3.display().to_string();
            let out = w.cli_sudo(&["env", "kube", "web", "-o", "json", "--mount", &root3_arg]);
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            for rel in ["", "etc", "etc/secret/db", "etc/secret/db/password"] {
                let meta = std::fs::symlink_metadata(root3.join(rel)).expect("written");
                assert_eq!(
                    std::os::unix::fs::MetadataExt::uid(&meta),
                    USER_ID,
                    "{rel} is the invoking user's"
                );
            }
            std::fs::remove_dir_all(&root3).expect("remove");
            // Not into a directory that holds something; with a command,
            // the files go when it exits.
            let out = user(&w, &line);
            assert!(
                !out.success() && out.stderr.contains("not an empty directory"),
                "{}",
                out.stderr
            );
            let root2 = mounts.join("web2");
            let root2_arg = root2.display().to_string();
            let script = "cat \"$NETMUX_ROOT/etc/web/app.yaml\"";
            let out = w.cli_as_user(&[
                "env", "kube", "web", "--mount", &root2_arg, "--", "sh", "-c", script,
            ]);
            assert_eq!(out.stdout, "port: 8080\n", "{}", out.stderr);
            assert!(!root2.exists(), "removed after the command: {}", out.stderr);

            // A Service outside the developer's catalog, a port it lacks.
            let out = user(&w, "env kube admin");
            assert!(
                !out.success() && out.stderr.contains("admin"),
                "{}",
                out.stderr
            );
            let out = user(&w, "env kube web --port 9999");
            assert!(
                !out.success()
                    && out.stderr.contains("no port 9999")
                    && out.stderr.contains("8080"),
                "{}",
                out.stderr
            );

            // intercept --env-file: written before the intercept is asked
            // for, private, and removed when the intercept is refused
            // (alice has no `intercept` right here).
            let envs = dir(sb.dir().join("envs"), 0o777);
            let file = envs.join("web.env");
            let file_arg = file.display().to_string();
            let kept = mounts.join("kept");
            let intercept = format!(
                "intercept kube web --to 8080 --env-file {file_arg} --mount {}",
                kept.display()
            );
            let out = user(&w, &intercept);
            assert!(!out.success(), "{}{}", out.stdout, out.stderr);
            assert!(
                out.stderr.contains("wrote ") && out.stderr.contains("removed"),
                "{}",
                out.stderr
            );
            assert!(!file.exists(), "a refused intercept leaves no env file");
            assert!(!kept.exists(), "nor volume files");
            // Granted (once the server's RBAC cache has expired), the
            // file stays, readable by its owner only.
            api.allow("alice", "intercept", "/services", "apps", "*");
            w.wait_for("the intercept right to reach the server", |w| {
                user(w, &intercept).success()
            });
            let text = std::fs::read_to_string(&file).expect("env file");
            assert!(text.lines().any(|l| l == "DB_PASSWORD=s3cret'x"), "{text}");
            let root_line = format!("NETMUX_ROOT={}", kept.display());
            assert!(text.lines().any(|l| l == root_line), "{text}");
            assert!(
                kept.join("etc/web/app.yaml").exists(),
                "kept without a command"
            );
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the env file holds a Secret: owner only");
            // While intercepted (its selector recorded, not in the spec),
            // the environment is still the pods'.
            let (vars, _) = env_json(&w);
            assert_eq!(
                vars["GREETING"], "hello debug",
                "during the intercept: {vars}"
            );
            let out = user(&w, "leave kube web");
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            // intercept --mount alone: the files stay, the notes are shown.
            let alone = mounts.join("alone");
            let out = user(
                &w,
                &format!("intercept kube web --to 8080 --mount {}", alone.display()),
            );
            assert!(
                out.success()
                    && out.stderr.contains("/cache (volume cache)")
                    && out.stderr.contains(&format!("rm -r {}", alone.display())),
                "{}{}",
                out.stdout,
                out.stderr
            );
            assert!(alone.join("etc/secret/db/password").exists());
            let out = user(&w, "leave kube web");
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            // intercept -- COMMAND: the command runs with the environment
            // while the intercept is held, and the intercept ends with it.
            let nx = bin("netmux").expect("netmux built");
            let script = format!(
                "printf '%s|' \"$GREETING\"; {} --socket {} status | grep -c 'intercept apps/web'; exit 4",
                nx.display(),
                w.socket.display()
            );
            let mut args: Vec<&str> = "intercept kube web --to 8080 -- sh -c".split(' ').collect();
            args.push(&script);
            let out = w.cli_as_user(&args);
            assert_eq!(out.stdout, "hello debug|1\n", "{}", out.stderr);
            assert_eq!(out.status.code(), Some(4), "{}", out.stderr);
            assert!(out.stderr.contains("sh exited: left"), "{}", out.stderr);
            let status = w.cli(&["status"]);
            assert!(
                !status.stdout.contains("intercept apps/web"),
                "{}",
                status.stdout
            );
            // intercept --mount -- COMMAND: the command has the volume
            // files, which go with it.
            let root3 = mounts.join("web3");
            let line = format!(
                "intercept kube web --to 8080 --mount {} -- cat",
                root3.display()
            );
            let mut args: Vec<&str> = line.split(' ').collect();
            let file = format!("{}/etc/secret/db/password", root3.display());
            args.push(&file);
            let out = w.cli_as_user(&args);
            assert_eq!(out.stdout, "s3cret'x", "{}", out.stderr);
            assert!(!root3.exists(), "removed after the command: {}", out.stderr);

            // A path that cannot be written: nothing is asked for.
            let out = user(
                &w,
                "intercept kube web --to 8080 --env-file /proc/no/such/dir/x.env",
            );
            assert!(
                !out.success()
                    && out.stderr.contains("not intercepted")
                    && out.stderr.contains("/proc/no/such/dir/x.env"),
                "{}",
                out.stderr
            );
            let status = w.cli(&["status", "-o", "json"]);
            assert!(
                !status.stdout.contains("\"intercepts\""),
                "{}",
                status.stdout
            );

            // No Ready pod (crashing, say): the spec still gives the
            // environment, with a note saying which pod and what may lack.
            let mut crashing = api.get("/pods", "apps", "web-7d9f").expect("the pod");
            crashing["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
            api.apply(crashing);
            let (vars, notes) = env_json(&w);
            assert_eq!(vars["GREETING"], "hello debug", "{vars}");
            assert!(notes.contains("pod apps/web-7d9f is not Ready"), "{notes}");

            // No pod at all (scaled to zero): the Deployment's template.
            let spec = api.get("/pods", "apps", "web-7d9f").expect("the pod")["spec"].clone();
            api.delete("v1", "Pod", "apps", "web-7d9f");
            let out = user(&w, "env kube web");
            assert!(
                !out.success() && out.stderr.contains("no pod behind Service apps/web"),
                "{}",
                out.stderr
            );
            api.apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "apps"},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}},
            }));
            let (vars, notes) = env_json(&w);
            assert_eq!(vars["GREETING"], "hello debug", "{vars}");
            assert_eq!(vars["DB_PASSWORD"], "s3cret'x", "{vars}");
            assert!(
                notes.contains("pod template of Deployment apps/web"),
                "{notes}"
            );

            // A worker no Service fronts, named as kubectl names it: its
            // pod, the pod by name, its template once it has none.
            let mut worker = app_pod(
                "apps",
                "worker-5c8d",
                json!({"app": "worker"}),
                &pod_ip,
                &[],
            );
            worker["spec"]["containers"][0]["env"] = json!([{"name": "QUEUE", "value": "jobs"}]);
            let template = json!({"metadata": {"labels": {"app": "worker"}},
                "spec": worker["spec"].clone()});
            api.apply(worker);
            api.apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "worker", "namespace": "apps"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "worker"}},
                         "template": template},
            }));
            for line in [
                "env kube apps/deploy/worker -o json",
                "env kube apps/pod/worker-5c8d -o json",
            ] {
                let out = user(&w, line);
                let vars: Value = serde_json::from_str(&out.stdout)
                    .unwrap_or_else(|e| panic!("{line}: {e}: {}{}", out.stdout, out.stderr));
                assert_eq!(vars["QUEUE"], "jobs", "{line}: {vars}");
                assert!(!out.stderr.contains("template"), "{line}: {}", out.stderr);
            }
            api.delete("v1", "Pod", "apps", "worker-5c8d");
            let out = user(&w, "env kube apps/deployment/worker -o json");
            let vars: Value = serde_json::from_str(&out.stdout).expect("json");
            assert_eq!(vars["QUEUE"], "jobs", "{vars}");
            assert!(
                out.stderr
                    .contains("no pod of deployment apps/worker to read"),
                "{}",
                out.stderr
            );
            let out = user(&w, "env kube apps/cronjob/nightly");
            assert!(
                !out.success() && out.stderr.contains("not a kind netmux env reads"),
                "{}",
                out.stderr
            );
            let out = user(&w, "env kube apps/deploy/nope");
            assert!(
                !out.success() && out.stderr.contains("deployment apps/nope: not found"),
                "{}",
                out.stderr
            );
        }),
    );
}
