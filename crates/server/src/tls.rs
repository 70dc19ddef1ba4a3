//! Built-in TLS (`wss://`, `https://`): a certificate chain and key from PEM files,
//! rustls with the ring provider, ALPN `http/1.1`, and reloading the files while the
//! server runs (new connections get the new certificate; open ones keep theirs).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the certificate chain and its key are, in PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain: the server's certificate first, then intermediates.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1). Never logged.
    pub key: PathBuf,
}

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read or holds no valid PEM of the kind expected.
    #[error("cannot read {what} from {path}: {source}")]
    Pem {
        /// `"the certificate chain"` or `"the private key"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    /// rustls refused the pair (the key does not match the certificate, an unsupported
    /// key type, ...).
    #[error("unusable certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS side of a server: the current configuration, replaced by [`Tls::reload`].
pub(crate) struct Tls {
    /// The files it was loaded from, and the configuration made of them. Read once per
    /// connection; a std lock never held across `.await`.
    current: RwLock<(TlsFiles, Arc<ServerConfig>)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files()).finish()
    }
}

impl Tls {
    /// Loads `files`.
    pub(crate) fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            current: RwLock::new((files, config)),
        })
    }

    /// The acceptor for a new connection, with the current certificate.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&current.1))
    }

    /// Reads the files again (with `files`, if given, instead of the current paths):
    /// on success new connections get the new certificate; on failure the current
    /// one stays and the error says why.
    pub(crate) fn reload(&self, files: Option<&TlsFiles>) -> Result<(), TlsError> {
        let files = files.cloned().unwrap_or_else(|| self.files());
        self.install(Self::prepare(files)?);
        Ok(())
    }

    /// Reads `files` without using them yet: the first half of a reload that must
    /// not change anything unless every part of it can be done.
    pub(crate) fn prepare(files: TlsFiles) -> Result<Prepared, TlsError> {
        let config = server_config(&files)?;
        Ok(Prepared(files, config))
    }

    /// New connections get the certificate `prepared` holds.
    pub(crate) fn install(&self, prepared: Prepared) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (prepared.0, prepared.1);
    }

    /// The files it was loaded from.
    pub(crate) fn files(&self) -> TlsFiles {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.0.clone()
    }
}

/// TLS files read and checked by [`Tls::prepare`], not in use yet.
#[derive(Debug)]
pub(crate) struct Prepared(TlsFiles, Arc<ServerConfig>);

/// A rustls server configuration for `files`, with ring and ALPN `http/1.1`.
fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        what: "the private key",
        path: files.key.clone(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // WebSocket upgrades and static files are HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what: "the certificate chain",
        path: path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        files
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tls-unit-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tempdir");
        dir
    }

    #[test]
    fn loads_a_pair_and_keeps_it_when_a_reload_fails() {
        let dir = tempdir("reload");
        let files = write_pair(&dir, "a");
        let tls = Tls::load(files.clone()).expect("valid pair");
        let before = Arc::as_ptr(&tls.current.read().expect("lock").1);
        std::fs::write(&files.cert, "not PEM").expect("write");
        let error = tls.reload(None).expect_err("garbage");
        assert!(matches!(error, TlsError::NoCertificate(_)), "{error}");
        assert_eq!(Arc::as_ptr(&tls.current.read().expect("lock").1), before);
        let other = write_pair(&dir, "b");
        // A key that does not match the certificate.
        let mismatched = TlsFiles {
            cert: other.cert.clone(),
            key: dir.join("a.key"),
        };
        assert!(matches!(
            tls.reload(Some(&mismatched)),
            Err(TlsError::Rustls(_))
        ));
        tls.reload(Some(&other)).expect("a good pair");
        assert_ne!(Arc::as_ptr(&tls.current.read().expect("lock").1), before);
        let missing = TlsFiles {
            cert: dir.join("missing.crt"),
            key: dir.join("missing.key"),
        };
        let error = Tls::load(missing).expect_err("missing files");
        assert!(error.to_string().contains("missing.crt"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
