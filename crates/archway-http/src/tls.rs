//! TLS for a listener: a certificate chain and its private key from PEM files (rustls),
//! offered with HTTP/2 and HTTP/1.1 through ALPN, and reloaded from the same files on
//! `SIGHUP` without dropping a connection: a reload only changes what new handshakes get.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Where a server's certificate and key live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM: the server certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)", .0.display())]
    NoCertificate(PathBuf),
    #[error("the key in {} cannot be used with the certificate in {}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("building the TLS configuration")]
    Config(#[source] rustls::Error),
}

impl TlsConfig {
    /// Reads and checks the certificate and key (they must belong together).
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |e: rustls::pki_types::pem::Error| TlsError::Read {
                message: match e {
                    rustls::pki_types::pem::Error::Io(io) => io.to_string(),
                    other => other.to_string(),
                },
                path,
            }
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(read_err(&self.cert))?
            .collect::<Result<_, _>>()
            .map_err(read_err(&self.cert))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(self.cert.clone()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(read_err(&self.key))?;
        let provider = provider();
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|source| TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
            })?;
        Ok(Arc::new(certified))
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The certificate new handshakes get; replaced by [`ReloadableCert::reload`].
pub(crate) struct ReloadableCert {
    config: TlsConfig,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ReloadableCert {
    pub(crate) fn new(config: TlsConfig) -> Result<ReloadableCert, TlsError> {
        let current = RwLock::new(config.load()?);
        Ok(ReloadableCert { config, current })
    }

    /// Reads the files again; on any problem the certificate in use stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let fresh = self.config.load()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    pub(crate) fn config(&self) -> &TlsConfig {
        &self.config
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// ALPN protocol id of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// The rustls server configuration over a reloadable certificate: TLS 1.2 and 1.3, no client
/// certificates, `h2` preferred over `http/1.1`.
pub(crate) fn server_config(
    cert: Arc<ReloadableCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (TlsConfig, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cfg = TlsConfig {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&cfg.cert, cert.pem()).unwrap();
        std::fs::write(&cfg.key, key.serialize_pem()).unwrap();
        (cfg, cert.der().to_vec())
    }

    #[test]
    fn loads_checks_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_der) = write_pair(dir.path(), "a");
        let (b, b_der) = write_pair(dir.path(), "b");
        assert_eq!(a.load().unwrap().cert[0].as_ref(), &a_der[..]);
        // A key that is not the certificate's is refused, naming both files.
        let mixed = TlsConfig {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = mixed.load().unwrap_err().to_string();
        assert!(e.contains("a.crt") && e.contains("b.key"), "{e}");
        // Missing files and files without a certificate say which file.
        let missing = TlsConfig {
            cert: dir.path().join("nope.crt"),
            key: a.key.clone(),
        };
        assert!(missing.load().unwrap_err().to_string().contains("nope.crt"));
        let not_cert = TlsConfig {
            cert: a.key.clone(),
            key: a.key.clone(),
        };
        assert!(matches!(
            not_cert.load().unwrap_err(),
            TlsError::NoCertificate(_)
        ));

        // Reloading picks up new files; a broken pair keeps the certificate in use.
        let live = ReloadableCert::new(a.clone()).unwrap();
        let current = || live.current.read().unwrap().cert[0].as_ref().to_vec();
        std::fs::copy(&b.cert, &a.cert).unwrap();
        assert!(live.reload().is_err(), "b's certificate with a's key");
        assert_eq!(current(), a_der);
        std::fs::copy(&b.key, &a.key).unwrap();
        live.reload().unwrap();
        assert_eq!(current(), b_der);
        assert_eq!(live.config(), &a);
    }
}
