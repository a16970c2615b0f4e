//! TLS settings shared by the relay and the client library: PEM files read into rustls
//! configurations (ring provider), and the names a verified certificate carries.
//!
//! Owns reading the certificate, key and CA files and turning every problem with them into
//! an error naming the file and the reason. Never opens a socket and never decides who may
//! do what: the runtime passes the verified names to the core, which decides.

mod names;

pub use names::cert_names;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

pub use rustls::pki_types::ServerName;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The first byte of every TLS connection (a handshake record). A msgc frame never starts
/// with it: its first byte is the top byte of a length of at most 64 MiB (0x00 to 0x04).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// What is wrong with a TLS setting; every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{} and {}: {reason}", .certificate.display(), .key.display())]
    KeyMismatch { certificate: PathBuf, key: PathBuf, reason: String },
    #[error("{0}")]
    Setting(String),
}

/// The certificate chain in a PEM file (at least one certificate).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(path, format!("not a valid PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "no certificate found (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            invalid(path, "no private key found (expected -----BEGIN PRIVATE KEY----- or similar)")
        }
        e => invalid(path, format!("not a valid PEM private key: {e}")),
    })
}

/// The CA certificates in a PEM file, as trust anchors.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots.add(cert).map_err(|e| invalid(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The crypto provider: ring, chosen explicitly so that nothing depends on a process default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How a TLS server treats client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Not asked for.
    Off,
    /// Asked for; a presented one must check out against the CA.
    Optional,
    /// Required and checked against the CA.
    Required,
}

/// A TLS server configuration: this side's chain and key, and how clients are checked.
pub fn server_config(
    certificate: &Path,
    key: &Path,
    ca: Option<&Path>,
    auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certificates(certificate)?;
    let secret = load_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setting(format!("TLS protocol versions: {e}")))?;
    let builder = match (auth, ca) {
        (ClientAuth::Off, _) => builder.with_no_client_auth(),
        (_, None) => return Err(TlsError::Setting("checking client certificates needs tls_ca".into())),
        (auth, Some(ca)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider());
            let verifier =
                if auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
            let verifier = verifier
                .build()
                .map_err(|e| invalid(ca, format!("cannot check client certificates: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, secret).map_err(|e| TlsError::KeyMismatch {
        certificate: certificate.to_path_buf(),
        key: key.to_path_buf(),
        reason: format!("unusable certificate and key: {e}"),
    })?;
    Ok(Arc::new(config))
}

/// A TLS client configuration: the CA the server is checked against and, if given, this
/// side's chain and key (`(certificate, key)`).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setting(format!("TLS protocol versions: {e}")))?
        .with_root_certificates(load_roots(ca)?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((certificate, key)) => builder
            .with_client_auth_cert(load_certificates(certificate)?, load_key(key)?)
            .map_err(|e| TlsError::KeyMismatch {
                certificate: certificate.to_path_buf(),
                key: key.to_path_buf(),
                reason: format!("unusable certificate and key: {e}"),
            })?,
    };
    Ok(Arc::new(config))
}

/// The name a server's certificate is checked against.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string())
        .map_err(|e| TlsError::Setting(format!("`{name}` cannot be checked against a certificate: {e}")))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn invalid(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid { path: path.to_path_buf(), reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("msgc-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_name_the_file_and_the_reason() {
        let missing = Path::new("/nonexistent/msgc/cert.pem");
        let e = load_certificates(missing).unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/msgc/cert.pem: cannot read:"), "{e}");

        let empty = temp("empty.pem", "hello\n");
        let e = load_certificates(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem: no certificate found"), "{e}");

        let garbage = temp("garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
        let e = load_certificates(&garbage).unwrap_err().to_string();
        assert!(e.contains("garbage.pem: not a valid PEM certificate file"), "{e}");

        let e = load_key(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem: no private key found"), "{e}");

        // Base64 that decodes, but to bytes no parser accepts as a CA certificate.
        let junk = temp("junk-ca.pem", "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n");
        let e = load_roots(&junk).unwrap_err().to_string();
        assert!(e.contains("junk-ca.pem: unusable CA certificate"), "{e}");
    }

    #[test]
    fn node_names_are_valid_server_names() {
        assert!(server_name("node1").is_ok());
        assert!(server_name("relay-a.example.com").is_ok());
        assert!(server_name("not a name").is_err());
    }
}
