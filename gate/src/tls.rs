//! TLS configuration: the PEM certificate chain and private key read from files, and the rustls
//! configurations built on them — the gate's server side (`gate.tls_*`) and the client side of
//! [`crate::client::Client::connect_tls`].
//!
//! Owns no connection and keeps nothing at run time: it is called once at start (by
//! `Config::validate`) or once per client, and every failure is a [`TlsConfigError`] that says
//! which file is at fault, so the configuration error can name its key. The crypto provider is
//! rustls' `ring` one, chosen explicitly (never a process-wide default): ring builds with a C
//! compiler alone, where aws-lc-rs, rustls' default, needs cmake.
//!
//! The per-connection layer (ciphertext in, plaintext out and back) is the shard's:
//! `shard/conn/tls.rs`.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Which of the two files a [`TlsConfigError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// The certificate chain (`gate.tls_cert`).
    Cert,
    /// The private key (`gate.tls_key`).
    Key,
}

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        file: PemFile,
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not PEM: {reason}")]
    NotPem {
        file: PemFile,
        path: String,
        reason: String,
    },
    #[error("{path} holds no CERTIFICATE section")]
    NoCertificate { path: String },
    #[error(
        "{path} holds no private key (a PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section)"
    )]
    NoKey { path: String },
    /// rustls refused the pair: most often the key does not belong to the certificate.
    #[error("{path} cannot serve the certificate: {source}")]
    Rejected { path: String, source: rustls::Error },
    /// A root certificate the client was given does not parse as one.
    #[error("root certificate refused: {0}")]
    BadRoot(rustls::Error),
}

impl TlsConfigError {
    /// The file at fault.
    pub fn file(&self) -> PemFile {
        match self {
            Self::Read { file, .. } | Self::NotPem { file, .. } => *file,
            Self::NoCertificate { .. } | Self::BadRoot(_) => PemFile::Cert,
            Self::NoKey { .. } | Self::Rejected { .. } => PemFile::Key,
        }
    }
}

/// rustls' ring provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every CERTIFICATE section of `pem`, in order (the server's own first).
pub fn certificates_from_pem(
    pem: &[u8],
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::NotPem {
            file: PemFile::Cert,
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

/// The first private key of `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key_from_pem(
    pem: &[u8],
    path: &str,
) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            Err(TlsConfigError::NoKey { path: path.into() })
        }
        Err(e) => Err(TlsConfigError::NotPem {
            file: PemFile::Key,
            path: path.into(),
            reason: e.to_string(),
        }),
    }
}

fn read(path: &str, file: PemFile) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        file,
        path: path.into(),
        source,
    })
}

/// The gate's server configuration from the PEM files at `cert_path` and `key_path`: TLS 1.2
/// and 1.3 with rustls' safe defaults, no client certificates. rustls checks that the key
/// belongs to the certificate (`CertifiedKey::keys_match`).
pub fn server_config(
    cert_path: &str,
    key_path: &str,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let certs = certificates_from_pem(&read(cert_path, PemFile::Cert)?, cert_path)?;
    let key = private_key_from_pem(&read(key_path, PemFile::Key)?, key_path)?;
    server_config_from(certs, key).map_err(|source| TlsConfigError::Rejected {
        path: key_path.into(),
        source,
    })
}

/// [`server_config`] from parsed parts.
pub fn server_config_from(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
}

/// A client configuration that trusts only the certificates in `root_pem` (a self-signed server
/// certificate, or the CA that signed the gate's).
pub fn client_config(root_pem: &[u8]) -> Result<rustls::ClientConfig, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates_from_pem(root_pem, "root certificate")? {
        roots.add(cert).map_err(TlsConfigError::BadRoot)?;
    }
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::BadRoot)
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn matching_pem_pair_builds_a_server_and_a_client_config() {
        let (cert, key) = pair("gate.test");
        let certs = certificates_from_pem(cert.as_bytes(), "c").expect("certs");
        let key = private_key_from_pem(key.as_bytes(), "k").expect("key");
        server_config_from(certs, key).expect("server config");
        client_config(cert.as_bytes()).expect("client config");
    }

    #[test]
    fn key_of_another_certificate_is_rejected() {
        let (cert, _) = pair("a.test");
        let (_, other_key) = pair("b.test");
        let certs = certificates_from_pem(cert.as_bytes(), "c").expect("certs");
        let key = private_key_from_pem(other_key.as_bytes(), "k").expect("key");
        assert!(server_config_from(certs, key).is_err());
    }

    #[test]
    fn missing_sections_and_non_pem_name_their_file() {
        let (cert, key) = pair("a.test");
        let err = certificates_from_pem(key.as_bytes(), "k.pem").unwrap_err();
        assert!(matches!(err, TlsConfigError::NoCertificate { .. }), "{err}");
        assert_eq!(err.file(), PemFile::Cert);
        let err = private_key_from_pem(cert.as_bytes(), "c.pem").unwrap_err();
        assert!(matches!(err, TlsConfigError::NoKey { .. }), "{err}");
        assert_eq!(err.file(), PemFile::Key);
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = certificates_from_pem(broken.as_bytes(), "x.pem").unwrap_err();
        assert!(matches!(err, TlsConfigError::NotPem { .. }), "{err}");
        let err = certificates_from_pem(b"just some text", "x.pem").unwrap_err();
        assert!(err.to_string().contains("x.pem"), "{err}");
    }
}
