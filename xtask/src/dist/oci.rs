//! The netmux-server image, assembled here with no base image to pull: one
//! layer holding the static binary, the CA certificates and passwd/group
//! entries for the non-root user, a config with the version labels, and
//! the whole written as one tarball that is both an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/`) and a docker-archive
//! (`manifest.json` naming the same blobs), so `docker load` (any version),
//! `podman load` and `skopeo copy oci-archive:` all read it.
//!
//! Every byte is a function of the inputs and `created` (the commit time):
//! rebuilding the same commit gives the same image digest.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::tar::{Meta, Tar};

/// Repository the image is tagged as; the Dockerfile and
/// manifests/base/deployment.yaml name the same (checked by a unit test).
pub(crate) const IMAGE_REPO: &str = "netmux/netmux-server";
/// The user and group the server runs as (distroless's `nonroot`; the
/// Deployment's securityContext uses the same numbers).
pub(crate) const UID: u32 = 65532;
/// Where the binary goes.
const BINARY_PATH: &str = "usr/local/bin/netmux-server";
/// Debian's bundle path, which rustls-native-certs and OpenSSL both read.
const CA_PATH: &str = "etc/ssl/certs/ca-certificates.crt";

/// What goes into the image.
#[derive(Debug, Clone)]
pub(crate) struct ImageSpec<'a> {
    /// Version (the tag and `org.opencontainers.image.version`).
    pub version: &'a str,
    /// Git commit (`org.opencontainers.image.revision`).
    pub revision: &'a str,
    /// Seconds since the epoch for every timestamp (SOURCE_DATE_EPOCH).
    pub created: u64,
    /// The static netmux-server binary.
    pub binary: &'a Path,
    /// The CA certificate bundle to ship.
    pub ca_bundle: &'a Path,
}

/// The built image.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    /// `netmux/netmux-server:VERSION`.
    pub reference: String,
    /// `sha256:...` of the image manifest.
    pub manifest_digest: String,
    /// `sha256:...` of the config (docker's image ID).
    pub config_digest: String,
}

/// The tag `dist` gives the image.
pub(crate) fn reference(version: &str) -> String {
    format!("{IMAGE_REPO}:{version}")
}

fn passwd() -> String {
    format!(
        "root:x:0:0:root:/root:/sbin/nologin\n\
         nonroot:x:{UID}:{UID}:nonroot:/nonexistent:/sbin/nologin\n"
    )
}

fn group() -> String {
    format!("root:x:0:\nnonroot:x:{UID}:\n")
}

/// The root filesystem layer: directories, binary, CA bundle, passwd, group.
/// Tar entry metadata of a directory and of a file, owned by root, dated
/// `mtime` (the image's creation time: the same bytes every build).
fn root_owned(mtime: u64) -> (Meta, Meta) {
    let dir = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime,
    };
    (dir, Meta { mode: 0o644, ..dir })
}

fn layer(spec: &ImageSpec) -> Result<Vec<u8>> {
    let binary =
        std::fs::read(spec.binary).with_context(|| format!("reading {}", spec.binary.display()))?;
    let ca = std::fs::read(spec.ca_bundle).with_context(|| {
        format!(
            "reading the CA bundle {} (apt-get install ca-certificates)",
            spec.ca_bundle.display()
        )
    })?;
    let (dir, file) = root_owned(spec.created);
    let mut t = Tar::default();
    for d in [
        "etc",
        "etc/ssl",
        "etc/ssl/certs",
        "usr",
        "usr/local",
        "usr/local/bin",
    ] {
        t.dir(d, dir)?;
    }
    t.file("etc/group", group().as_bytes(), file)?;
    t.file("etc/passwd", passwd().as_bytes(), file)?;
    t.file(CA_PATH, &ca, file)?;
    t.file(BINARY_PATH, &binary, dir)?;
    Ok(t.finish())
}

fn rfc3339(epoch: u64) -> Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .context("running date")?;
    anyhow::ensure!(out.status.success(), "date -d @{epoch} failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Result<(serde_json::Value, String)> {
    let digest = format!("sha256:{}", super::sha256_hex(bytes)?);
    Ok((
        json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() }),
        digest,
    ))
}

/// Builds the image tarball at `out`.
pub(crate) fn build(spec: &ImageSpec, out: &Path) -> Result<Image> {
    let reference = reference(spec.version);
    let created = rfc3339(spec.created)?;
    let layer = layer(spec)?;
    let diff_id = format!("sha256:{}", super::sha256_hex(&layer)?);
    let labels = json!({
        "org.opencontainers.image.title": "netmux-server",
        "org.opencontainers.image.description": "netmux cluster-side server (QUIC tunnel endpoint)",
        "org.opencontainers.image.version": spec.version,
        "org.opencontainers.image.revision": spec.revision,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": created,
    });
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": format!("{UID}:{UID}"),
            "Entrypoint": ["/usr/local/bin/netmux-server"],
            "Cmd": ["--config", "/etc/netmux/server.toml"],
            "Env": [
                "PATH=/usr/local/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            ],
            // QUIC (UDP), QUIC over TCP streams, health and metrics.
            "ExposedPorts": { "7443/udp": {}, "7443/tcp": {}, "7080/tcp": {} },
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": created,
            "created_by": "cargo xtask dist (netmux-server, CA certificates, passwd/group; no base image)",
        }],
    });
    let config = serde_json::to_vec(&config)?;
    let (config_desc, config_digest) =
        descriptor("application/vnd.oci.image.config.v1+json", &config)?;
    let (layer_desc, layer_digest) = descriptor("application/vnd.oci.image.layer.v1.tar", &layer)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
        "annotations": labels,
    }))?;
    let (mut manifest_desc, manifest_digest) =
        descriptor("application/vnd.oci.image.manifest.v1+json", &manifest)?;
    manifest_desc["annotations"] = json!({
        "org.opencontainers.image.ref.name": spec.version,
        "io.containerd.image.name": format!("docker.io/{reference}"),
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc],
    }))?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": [reference],
        "Layers": [blob(&layer_digest)],
    }]))?;

    let (dir, file) = root_owned(spec.created);
    let mut t = Tar::default();
    t.dir("blobs", dir)?;
    t.dir("blobs/sha256", dir)?;
    let mut blobs = [
        (blob(&config_digest), config.as_slice()),
        (blob(&layer_digest), layer.as_slice()),
        (blob(&manifest_digest), manifest.as_slice()),
    ];
    blobs.sort();
    for (path, bytes) in blobs {
        t.file(&path, bytes, file)?;
    }
    t.file("index.json", &index, file)?;
    t.file("manifest.json", &docker_manifest, file)?;
    t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, file)?;
    std::fs::write(out, t.finish()).with_context(|| format!("writing {}", out.display()))?;
    Ok(Image {
        reference,
        manifest_digest,
        config_digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dockerfile_and_the_deployment_name_the_image_dist_builds() {
        let root = crate::util::root();
        let want = reference(env!("CARGO_PKG_VERSION"));
        for f in ["Dockerfile", "manifests/base/deployment.yaml"] {
            let text = std::fs::read_to_string(root.join(f)).expect("read");
            assert!(text.contains(&want), "{f} does not name {want}");
        }
        let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("read");
        assert!(
            dockerfile.contains(&format!("USER {UID}:{UID}")),
            "Dockerfile user"
        );
    }

    #[test]
    fn the_image_is_reproducible_and_loadable_by_layout() {
        let dir = std::env::temp_dir().join(format!("xtask-oci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let bin = dir.join("netmux-server");
        let ca = dir.join("ca.crt");
        std::fs::write(&bin, b"\x7fELF not really").expect("write");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\n").expect("write");
        let spec = ImageSpec {
            version: "1.2.3",
            revision: "abc",
            created: 1_700_000_000,
            binary: &bin,
            ca_bundle: &ca,
        };
        let a = build(&spec, &dir.join("a.tar")).expect("build a");
        let b = build(&spec, &dir.join("b.tar")).expect("build b");
        assert_eq!(a.manifest_digest, b.manifest_digest);
        let bytes_a = std::fs::read(dir.join("a.tar")).expect("read");
        assert_eq!(bytes_a, std::fs::read(dir.join("b.tar")).expect("read"));
        let out = std::process::Command::new("tar")
            .arg("-tf")
            .arg(dir.join("a.tar"))
            .output()
            .expect("tar");
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = std::fs::remove_dir_all(&dir);
        for f in ["index.json", "manifest.json", "oci-layout"] {
            assert!(listing.lines().any(|l| l == f), "{f} missing: {listing}");
        }
        let config_blob = format!(
            "blobs/sha256/{}",
            a.config_digest.trim_start_matches("sha256:")
        );
        assert!(listing.contains(&config_blob), "{listing}");
        assert_eq!(a.reference, "netmux/netmux-server:1.2.3");
    }
}
