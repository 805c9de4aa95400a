//! Unit tests of the volume files (kept beside `volumes.rs`).

use super::super::fields::go_quote;
use super::super::tests::{config_map, pod, secret, sources};
use super::*;
use serde_json::{json, Value};

/// A pod whose container `app` has `mounts` of the pod's `volumes`.
fn mounting(mounts: Value, volumes: Value) -> Pod {
    pod(json!({
        "serviceAccountName": "web-sa",
        "containers": [{
            "name": "app",
            "resources": {"limits": {"memory": "64Mi"}},
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    }))
}

/// One mount at /etc/app of volume `v`.
fn one(volume: Value) -> Pod {
    let mut volume = volume;
    volume["name"] = json!("v");
    mounting(
        json!([{"name": "v", "mountPath": "/etc/app"}]),
        json!([volume]),
    )
}

fn file(path: &str, mode: u32, data: &[u8]) -> File {
    File {
        path: path.into(),
        mode,
        data: data.to_vec(),
    }
}

/// The files of the only mount, or the notes when there is none.
fn files_of(pod: &Pod, sources: &Sources) -> (Result<Vec<File>, ()>, Vec<String>) {
    let (mut mounts, notes) = mounts(pod, "app", sources);
    assert!(mounts.len() <= 1, "{mounts:?}");
    (mounts.pop().map(|m| m.files).ok_or(()), notes)
}

/// Sources with ConfigMap `app-config`: data, binaryData and a bad key.
fn app_config() -> Sources {
    let mut s = sources();
    s.config_maps.insert(
        "app-config".into(),
        config_map(json!({
            "data": {"app.yaml": "port: 80\n", "log.level": "debug", "bad key": "x", "..data": "x"},
            "binaryData": {"logo.png": "iVBORw=="},
        })),
    );
    s
}

#[test]
fn a_config_map_gives_every_key_with_the_default_mode() {
    let p = one(json!({"configMap": {"name": "app-config", "defaultMode": 0o440}}));
    let (mounts, notes) = mounts(&p, "app", &app_config());
    assert_eq!(
        mounts,
        [Mount {
            mount_path: "/etc/app".into(),
            volume: "v".into(),
            read_only: true,
            files: vec![
                file("app.yaml", 0o440, b"port: 80\n"),
                file("log.level", 0o440, b"debug"),
                file("logo.png", 0o440, &[0x89, b'P', b'N', b'G']),
            ],
        }]
    );
    assert_eq!(
        notes,
        [
            "/etc/app (volume v): left out `..data` (configmap app-config): the path starts with `..`",
            "/etc/app (volume v): left out key `bad key` of configmap app-config: not a valid key ([-._a-zA-Z0-9], 1 to 253 characters)",
        ]
    );
    // Without a defaultMode: 0644. A mode beyond 0777 is masked.
    let p = one(json!({"configMap": {"name": "app-config", "items": [
        {"key": "app.yaml", "path": "a"},
        {"key": "app.yaml", "path": "b", "mode": 0o4755},
    ]}}));
    let (files, _) = files_of(&p, &app_config());
    assert_eq!(
        files.unwrap(),
        [
            file("a", 0o644, b"port: 80\n"),
            file("b", 0o755, b"port: 80\n")
        ]
    );
}

#[test]
fn items_pick_keys_paths_and_modes() {
    let p = one(
        json!({"configMap": {"name": "app-config", "defaultMode": 0o600, "items": [
            {"key": "log.level", "path": "conf/level", "mode": 0o400},
            {"key": "logo.png", "path": "static/logo.png"},
            {"key": "app.yaml", "path": "app.yaml"},
        ]}}),
    );
    let (files, notes) = files_of(&p, &app_config());
    assert_eq!(
        files.unwrap(),
        [
            file("app.yaml", 0o600, b"port: 80\n"),
            file("conf/level", 0o400, b"debug"),
            file("static/logo.png", 0o600, &[0x89, b'P', b'N', b'G']),
        ]
    );
    assert!(notes.is_empty(), "{notes:?}");

    // A missing key fails the kubelet's mount, unless the volume is optional.
    let items = json!([{"key": "app.yaml", "path": "a"}, {"key": "absent", "path": "b"}]);
    let p = one(json!({"configMap": {"name": "app-config", "items": items}}));
    let (files, notes) = files_of(&p, &app_config());
    assert!(files.is_err());
    assert_eq!(
        notes,
        ["/etc/app (volume v): left out: configmap app-config has no key `absent`, which the kubelet fails the mount for; fix: add it, or provide the files yourself"]
    );
    let p = one(json!({"configMap": {"name": "app-config", "items": items, "optional": true}}));
    let (files, notes) = files_of(&p, &app_config());
    assert_eq!(files.unwrap(), [file("a", 0o644, b"port: 80\n")]);
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn a_missing_object_is_empty_when_optional_and_noted_otherwise() {
    let mut s = sources();
    s.config_maps
        .insert("gone".into(), Err("configmaps \"gone\" not found".into()));
    let p = one(json!({"configMap": {"name": "gone", "optional": true}}));
    let (files, notes) = files_of(&p, &s);
    assert_eq!(files.unwrap(), []);
    assert!(notes.is_empty(), "{notes:?}");

    let p = one(json!({"configMap": {"name": "gone"}}));
    let (files, notes) = files_of(&p, &s);
    assert!(files.is_err());
    assert_eq!(
        notes,
        ["/etc/app (volume v): left out: configmap gone: configmaps \"gone\" not found; fix: create configmap gone in namespace apps, or provide the files yourself"]
    );

    // Optional does not cover an object that was not handed over.
    let p = one(json!({"configMap": {"name": "unfetched", "optional": true}}));
    let (files, notes) = files_of(&p, &s);
    assert!(files.is_err());
    assert_eq!(
        notes,
        ["/etc/app (volume v): left out: configmap unfetched: it was not fetched; fix: try again, or provide the files yourself"]
    );
}

#[test]
fn secrets_are_bytes_and_a_forbidden_one_leaves_the_mount_out() {
    let mut s = sources();
    // base64 of "s3cret" and of bytes ff fe; stringData is not read.
    s.secrets.insert(
        "tls".into(),
        secret(json!({
            "data": {"tls.key": "czNjcmV0", "raw": "//4="},
            "stringData": {"extra": "x"},
        })),
    );
    let forbidden = "secrets \"db-creds\" is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \"\" in the namespace \"apps\"";
    s.secrets.insert("db-creds".into(), Err(forbidden.into()));
    let p = mounting(
        json!([
            {"name": "tls", "mountPath": "/tls", "readOnly": false},
            {"name": "db", "mountPath": "/db"},
        ]),
        json!([
            {"name": "tls", "secret": {"secretName": "tls", "defaultMode": 0o400}},
            {"name": "db", "secret": {"secretName": "db-creds"}},
        ]),
    );
    let (mounts, notes) = mounts(&p, "app", &s);
    assert_eq!(
        mounts,
        [Mount {
            mount_path: "/tls".into(),
            volume: "tls".into(),
            // The kubelet mounts secrets read-only whatever the spec says.
            read_only: true,
            files: vec![
                file("raw", 0o400, &[0xff, 0xfe]),
                file("tls.key", 0o400, b"s3cret")
            ],
        }]
    );
    assert_eq!(
        notes,
        [format!("/db (volume db): left out: secret db-creds: {forbidden}; fix: ask for `get secrets` in namespace apps, or provide the files yourself")]
    );
    // Debug shows paths and modes, never data.
    let shown = format!("{mounts:?}");
    assert!(
        shown.contains("tls.key") && shown.contains("0o400"),
        "{shown}"
    );
    assert!(
        !shown.contains("s3cret") && !shown.contains("115"),
        "{shown}"
    );
}

#[test]
fn downward_api_files_read_the_pod() {
    let mut p = one(json!({"downwardAPI": {"defaultMode": 0o444, "items": [
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}, "mode": 0o400},
        {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
        {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}},
        {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
        {"path": "cpu", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu"}},
        {"path": "empty"},
    ]}}));
    p.metadata.labels = Some(BTreeMap::from([
        ("tier".into(), "web".into()),
        ("app".into(), "web".into()),
    ]));
    let note = "multi\nline \"quoted\" \\ tab\t bell\x07 del\x7f é nbsp\u{a0} zwsp\u{200b} e\u{301} 🚀 private\u{e000} it's";
    p.metadata.annotations = Some(BTreeMap::from([
        ("team".into(), "core".into()),
        ("note".into(), note.into()),
        ("empty".into(), String::new()),
    ]));
    let (files, notes) = files_of(&p, &sources());
    let annotations = concat!(
        "empty=\"\"\n",
        "note=\"multi\\nline \\\"quoted\\\" \\\\ tab\\t bell\\a del\\x7f é nbsp\\u00a0 zwsp\\u200b e\u{301} 🚀 private\\ue000 it's\"\n",
        "team=\"core\"",
    );
    assert_eq!(
        files.unwrap(),
        [
            file("annotations", 0o444, annotations.as_bytes()),
            file("app", 0o444, b"web"),
            file("empty", 0o444, b""),
            file("labels", 0o444, b"app=\"web\"\ntier=\"web\""),
            file("mem", 0o444, b"64"),
            file("name", 0o444, b"web-7f9c"),
            file("ns", 0o400, b"apps"),
            file("uid", 0o444, b"0b1c-22"),
        ]
    );
    assert_eq!(
        notes,
        [
            "/etc/app (volume v): left out `node` (downwardAPI): fieldRef `spec.nodeName` is not a field the kubelet gives to a downwardAPI volume; fix: set it yourself",
            "/etc/app (volume v): left out `cpu` (downwardAPI): container app sets no limits.cpu, so the kubelet gives the node's allocatable, which netmux does not know; fix: set it yourself",
        ]
    );
    // No labels at all: an empty file.
    p.metadata.labels = None;
    let (files, _) = files_of(&p, &sources());
    assert!(files.unwrap().contains(&file("labels", 0o444, b"")));
}

#[test]
fn go_quoting_matches_strconv_quote() {
    assert_eq!(go_quote(""), "\"\"");
    assert_eq!(go_quote("a\u{0}b\u{1b}"), "\"a\\x00b\\x1b\"");
    assert_eq!(go_quote("\u{0301}x"), "\"\u{0301}x\"");
    assert_eq!(go_quote("\u{2028}\u{feff}"), "\"\\u2028\\ufeff\"");
    assert_eq!(
        go_quote("\u{10ffff}\u{f0000}"),
        "\"\\U0010ffff\\U000f0000\""
    );
    assert_eq!(
        go_quote("\u{1f600}日本 \u{3000}"),
        "\"\u{1f600}日本 \\u3000\""
    );
}

#[test]
fn projected_volumes_merge_sources_and_skip_the_token() {
    let mut s = app_config();
    s.secrets.insert(
        "tls".into(),
        secret(json!({"data": {"ca.crt": "Q0E=", "app.yaml": "c2VjcmV0"}})),
    );
    let p = one(json!({"projected": {"defaultMode": 0o420, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "app-config", "items": [{"key": "app.yaml", "path": "app.yaml"}]}},
        {"secret": {"name": "tls", "items": [
            {"key": "ca.crt", "path": "ca.crt", "mode": 0o400},
            {"key": "app.yaml", "path": "app.yaml"},
        ]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        {"secret": {"name": "gone", "optional": true}},
        {"clusterTrustBundle": {"path": "bundle.pem", "signerName": "example.com/signer"}},
    ]}}));
    let mut s2 = s.clone();
    s2.secrets
        .insert("gone".into(), Err("secrets \"gone\" not found".into()));
    let (files, notes) = files_of(&p, &s2);
    assert_eq!(
        files.unwrap(),
        [
            // The secret's app.yaml replaces the ConfigMap's, as in the kubelet's payload.
            file("app.yaml", 0o420, b"secret"),
            file("ca.crt", 0o400, b"CA"),
            file("namespace", 0o420, b"apps"),
        ]
    );
    assert_eq!(
        notes,
        [
            "/etc/app (volume v): not copied: serviceAccountToken `token`: a token of the pod's service account (web-sa) is not given out; fix: use your own credentials, or put a token there yourself",
            "/etc/app (volume v): not copied: clusterTrustBundle `bundle.pem`: the kubelet builds it from ClusterTrustBundle objects; fix: set that file yourself",
        ]
    );
    // One failed source fails the whole projected volume, as in the kubelet.
    let (files, notes) = files_of(&p, &s);
    assert!(files.is_err());
    assert_eq!(
        notes.last().unwrap(),
        "/etc/app (volume v): left out: secret gone: it was not fetched; fix: try again, or provide the files yourself"
    );
}

#[test]
fn sub_paths_mount_a_directory_or_one_file() {
    let volume = json!({"name": "v", "configMap": {"name": "app-config", "items": [
        {"key": "app.yaml", "path": "conf/app.yaml"},
        {"key": "log.level", "path": "conf/deep/level"},
        {"key": "log.level", "path": "confx"},
    ]}});
    let p = mounting(
        json!([
            {"name": "v", "mountPath": "/etc/conf", "subPath": "conf"},
            {"name": "v", "mountPath": "/etc/app.yaml", "subPath": "conf/app.yaml"},
            {"name": "v", "mountPath": "/etc/none", "subPath": "nope"},
            {"name": "v", "mountPath": "/etc/all", "subPath": ""},
        ]),
        json!([volume]),
    );
    let (mounts, notes) = mounts(&p, "app", &app_config());
    let got: Vec<(&str, &[File])> = mounts
        .iter()
        .map(|m| (m.mount_path.as_str(), m.files.as_slice()))
        .collect();
    let level = || file("deep/level", 0o644, b"debug");
    let yaml = |path: &str| file(path, 0o644, b"port: 80\n");
    assert_eq!(
        got,
        [
            ("/etc/conf", &[yaml("app.yaml"), level()][..]),
            ("/etc/app.yaml", &[yaml("")][..]),
            ("/etc/none", &[][..]),
            (
                "/etc/all",
                &[
                    yaml("conf/app.yaml"),
                    file("conf/deep/level", 0o644, b"debug"),
                    file("confx", 0o644, b"debug"),
                ][..]
            ),
        ]
    );
    assert_eq!(
        notes,
        ["/etc/none (volume v): subPath `nope` is not in the volume, so the kubelet mounts an empty directory"]
    );
}

#[test]
fn paths_that_would_leave_the_mount_are_left_out() {
    let items = json!([
        {"key": "app.yaml", "path": "../../etc/passwd"},
        {"key": "app.yaml", "path": "/etc/passwd"},
        {"key": "app.yaml", "path": "a//b"},
        {"key": "app.yaml", "path": "./a"},
        {"key": "app.yaml", "path": "a/.."},
        {"key": "app.yaml", "path": "..data/x"},
        {"key": "app.yaml", "path": "..\\..\\x"},
        {"key": "app.yaml", "path": ""},
        {"key": "app.yaml", "path": "ok/..x"},
    ]);
    let p = mounting(
        json!([
            {"name": "v", "mountPath": "/etc/app"},
            {"name": "v", "mountPath": "/etc/up", "subPath": "../secrets"},
            {"name": "v", "mountPath": "/etc/abs", "subPath": "/etc"},
        ]),
        json!([{"name": "v", "configMap": {"name": "app-config", "items": items}}]),
    );
    let (mounts, notes) = mounts(&p, "app", &app_config());
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].files, [file("ok/..x", 0o644, b"port: 80\n")]);
    let from = "(key `app.yaml` of configmap app-config): the path";
    assert_eq!(
        notes,
        [
            format!("/etc/app (volume v): left out `../../etc/passwd` {from} has a `..` component"),
            format!("/etc/app (volume v): left out `/etc/passwd` {from} is absolute"),
            format!("/etc/app (volume v): left out `a//b` {from} has an empty component"),
            format!("/etc/app (volume v): left out `./a` {from} has a `.` component"),
            format!("/etc/app (volume v): left out `a/..` {from} has a `..` component"),
            format!("/etc/app (volume v): left out `..data/x` {from} starts with `..`"),
            format!("/etc/app (volume v): left out `..\\..\\x` {from} holds a backslash or NUL"),
            format!("/etc/app (volume v): left out `` {from} is empty"),
            "/etc/up (volume v): left out: subPath `../secrets` has a `..` component".into(),
            "/etc/abs (volume v): left out: subPath `/etc` is absolute".into(),
        ]
    );
    // A key that is not a file name, without items.
    let mut s = sources();
    s.config_maps.insert(
        "odd".into(),
        config_map(json!({"data": {"../x": "1", "a/b": "2", ".": "3", "ok": "4"}})),
    );
    let (files, notes) = files_of(&one(json!({"configMap": {"name": "odd"}})), &s);
    assert_eq!(files.unwrap(), [file("ok", 0o644, b"4")]);
    assert_eq!(
        notes,
        [
            "/etc/app (volume v): left out `.` (configmap odd): the path has a `.` component",
            "/etc/app (volume v): left out key `../x` of configmap odd: not a valid key ([-._a-zA-Z0-9], 1 to 253 characters)",
            "/etc/app (volume v): left out key `a/b` of configmap odd: not a valid key ([-._a-zA-Z0-9], 1 to 253 characters)",
        ]
    );
}

#[test]
fn a_file_that_is_also_a_directory_fails_the_mount() {
    let p = one(json!({"configMap": {"name": "app-config", "items": [
        {"key": "app.yaml", "path": "conf"},
        {"key": "log.level", "path": "conf-2"},
        {"key": "log.level", "path": "conf/level"},
    ]}}));
    let (files, notes) = files_of(&p, &app_config());
    assert!(files.is_err());
    assert_eq!(
        notes,
        ["/etc/app (volume v): left out: `conf` is both a file and the directory of `conf/level`, which the kubelet fails to write; fix: provide the files yourself"]
    );
}

#[test]
fn other_volumes_unknown_volumes_and_containers_are_notes() {
    let p = mounting(
        json!([
            {"name": "scratch", "mountPath": "/tmp"},
            {"name": "data", "mountPath": "/data"},
            {"name": "ghost", "mountPath": "/ghost"},
            {"name": "cfg", "mountPath": "/logs", "subPathExpr": "$(POD_NAME)"},
        ]),
        json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-0"}},
            {"name": "cfg", "configMap": {"name": "app-config"}},
        ]),
    );
    let (mounts, notes) = mounts(&p, "app", &app_config());
    assert!(mounts.is_empty(), "{mounts:?}");
    assert_eq!(
        notes,
        [
            "/tmp (volume scratch): left out: emptyDir volume: its contents live in the cluster or on the node, and are not copied; fix: copy what you need yourself (e.g. kubectl cp)",
            "/data (volume data): left out: persistentVolumeClaim volume: its contents live in the cluster or on the node, and are not copied; fix: copy what you need yourself (e.g. kubectl cp)",
            "/ghost (volume ghost): left out: the pod has no volume ghost; fix: mount one of its volumes",
            "/logs (volume cfg): left out: subPathExpr `$(POD_NAME)` is expanded from the container's environment, which netmux does not do for mounts; fix: provide the files yourself",
        ]
    );
    let (mounts, notes) = super::mounts(&p, "db", &app_config());
    assert!(mounts.is_empty());
    assert_eq!(
        notes,
        ["container db: not in pod apps/web-7f9c (it has: app); fix: name one of those"]
    );
}

#[test]
fn references_name_what_mounted_volumes_need() {
    let p = pod(json!({
        "containers": [
            {"name": "app", "volumeMounts": [
                {"name": "cfg", "mountPath": "/a"},
                {"name": "cfg", "mountPath": "/b", "subPath": "x"},
                {"name": "tls", "mountPath": "/tls"},
                {"name": "all", "mountPath": "/all"},
                {"name": "scratch", "mountPath": "/tmp"},
                {"name": "expr", "mountPath": "/e", "subPathExpr": "$(X)"},
            ]},
            {"name": "other", "volumeMounts": [{"name": "unmounted", "mountPath": "/u"}]},
        ],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "settings"}},
            {"name": "tls", "secret": {"secretName": "tls"}},
            {"name": "all", "projected": {"sources": [
                {"configMap": {"name": "kube-root-ca.crt"}},
                {"secret": {"name": "tls"}},
                {"secret": {"name": "extra"}},
                {"configMap": {"name": ""}},
                {"serviceAccountToken": {"path": "token"}},
            ]}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "expr", "configMap": {"name": "by-expr"}},
            {"name": "unmounted", "secret": {"secretName": "not-ours"}},
        ],
    }));
    let refs = references(&p, "app");
    assert_eq!(refs.config_maps, ["kube-root-ca.crt", "settings"]);
    assert_eq!(refs.secrets, ["extra", "tls"]);
    assert_eq!(references(&p, "nope"), References::default());
}
