//! TLS for tests: a CA and leaf certificates minted on the spot (rcgen), written as PEM
//! files for the server, and an HTTPS client that trusts only that CA and reports the
//! certificate the server presented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use webrtc_bootstrap_server::TlsFiles;

/// A certificate authority of a test.
#[derive(Debug)]
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate in PEM (for `NODE_EXTRA_CA_CERTS` and the peer library).
    pub pem: String,
}

/// A leaf certificate for `localhost` and `127.0.0.1`, signed by a [`TestCa`].
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// Its key in PEM.
    pub key_pem: String,
    /// The certificate as the server sends it (DER), to recognise it.
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new CA.
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn new() -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "bootstrap test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        })
    }

    /// A leaf for `localhost` and `127.0.0.1` with serial number `serial`.
    ///
    /// # Errors
    /// When rcgen fails.
    pub fn leaf(&self, serial: u64) -> anyhow::Result<Leaf> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }

    /// A TLS client configuration that trusts this CA only.
    ///
    /// # Errors
    /// When the CA certificate cannot be added.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.pem.as_bytes())?)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl Leaf {
    /// Writes the certificate and key as `NAME.crt` and `NAME.key` in `dir`.
    ///
    /// # Errors
    /// When writing fails.
    pub fn write(&self, dir: &Path, name: &str) -> anyhow::Result<TlsFiles> {
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        self.write_to(&files)?;
        Ok(files)
    }

    /// Writes the certificate and key to `files` (replacing them, as an operator
    /// renewing a certificate does).
    ///
    /// # Errors
    /// When writing fails.
    pub fn write_to(&self, files: &TlsFiles) -> anyhow::Result<()> {
        std::fs::write(&files.cert, &self.cert_pem)?;
        std::fs::write(&files.key, &self.key_pem)?;
        Ok(())
    }
}

/// A fresh directory under the system's temporary directory.
///
/// # Errors
/// When it cannot be created.
pub fn tempdir(name: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A TLS connection to `addr` (as `localhost`), handshake done within 5 s.
///
/// # Errors
/// When connecting or the handshake fails (an untrusted certificate, for one).
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    Ok(stream)
}

/// The certificate the server presented on `stream` (DER).
///
/// # Errors
/// When it presented none.
pub fn presented(stream: &TlsStream<tokio::net::TcpStream>) -> anyhow::Result<Vec<u8>> {
    let (_, connection) = stream.get_ref();
    let chain = connection
        .peer_certificates()
        .context("no server certificate")?;
    Ok(chain.first().context("empty chain")?.to_vec())
}

/// One HTTP/1.1 `GET` on an open stream (kept alive): the whole response.
///
/// # Errors
/// When writing or reading fails, or no complete response comes within 5 s.
pub async fn get(
    stream: &mut TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> anyhow::Result<String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .context("no response in time")??;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(text.into_owned());
            }
        }
    }
}
