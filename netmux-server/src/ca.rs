//! The server's own certificate authority.
//!
//! Created on first start and persisted in the state directory (`ca.pem`,
//! `ca.key` mode 0600); the server certificate is issued by it at every start
//! for the configured names. Daemons trust `ca.pem` and nothing else.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why the CA or certificate could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Filesystem problem with the state directory.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A configured server name is neither a DNS name nor an IP address.
    #[error("server name {0:?} is neither a DNS name nor an IP address")]
    BadName(String),
}

/// The TLS identity the QUIC endpoint presents.
pub struct ServerIdentity {
    /// PEM of the CA, what daemons must trust.
    pub ca_pem: String,
    /// Server certificate chain (leaf, then CA).
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// Server private key.
    pub(crate) key: PrivateKeyDer<'static>,
    /// The CA certificate (replicas verify each other against it).
    pub(crate) ca_der: CertificateDer<'static>,
    /// This replica's certificate for replica-to-replica connections (both
    /// TLS client and server, name [`REPLICA_NAME`]), leaf then CA.
    pub(crate) replica_chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub(crate) replica_key: PrivateKeyDer<'static>,
}

/// The name replicas present to each other (only the holders of the CA
/// key can issue a certificate with it and client authentication).
pub const REPLICA_NAME: &str = "netmux-replica.invalid";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The CA's fixed identity: the issuer is rebuilt from it and the stored key.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "netmux server CA");
    dn.push(DnType::OrganizationName, "netmux");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

fn write_private(path: &Path, contents: &str) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

impl ServerIdentity {
    /// Loads the CA from `dir` (creating it on first start) and issues a
    /// fresh server certificate for `names`.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Self, CaError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.pem");
        let (ca_key, ca_pem) = if key_path.exists() && cert_path.exists() {
            let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            let ca_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
            (KeyPair::from_pem(&key_pem)?, ca_pem)
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&key_path, &key.serialize_pem())?;
            write_private(&cert_path, &cert.pem())?;
            tracing::info!(path = %cert_path.display(), "created server CA");
            (key, cert.pem())
        };
        let ca_der = pem_to_der(&ca_pem).ok_or_else(|| CaError::Io {
            path: cert_path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no certificate in PEM"),
        })?;
        let issuer = Issuer::new(ca_params(), &ca_key);

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("netmux-server"),
        );
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_)
                    if !netmux_common::proto::catalog::valid_dns_name(
                        &name.to_ascii_lowercase(),
                    ) =>
                {
                    return Err(CaError::BadName(name.clone()))
                }
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| CaError::BadName(name.clone()))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let leaf_key = KeyPair::generate()?;
        let leaf = params.signed_by(&leaf_key, &issuer)?;
        let chain = vec![leaf.der().clone(), ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        // Also leave the current leaf for operators (not needed to restart).
        write_private(&dir.join("server.pem"), &leaf.pem())?;
        let (replica_leaf, replica_key) = replica_certificate(&issuer)?;
        Ok(ServerIdentity {
            ca_pem,
            chain,
            key,
            replica_chain: vec![replica_leaf, ca_der.clone()],
            ca_der,
            replica_key,
        })
    }
}

/// A certificate for [`REPLICA_NAME`] usable as TLS server and client:
/// what replicas authenticate each other with (daemons never get one; the
/// daemon-facing certificate is for server authentication only).
fn replica_certificate(
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CaError> {
    let mut params = CertificateParams::new(vec![REPLICA_NAME.to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "netmux replica");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    let mut reader = pem.as_bytes();
    let first = rustls_pemfile::certs(&mut reader).next()?;
    first.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["netmux-server".to_string(), "127.0.0.1".to_string()];
        let a = ServerIdentity::load_or_create(dir.path(), &names).unwrap();
        let b = ServerIdentity::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.chain.len(), 2);
        let mode = fs::metadata(dir.path().join("ca.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn bad_name_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ServerIdentity::load_or_create(dir.path(), &["bad name!".into()]).is_err());
    }
}
