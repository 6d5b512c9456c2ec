//! TLS termination for the relay's listener.
//!
//! [`Tls::start`] turns a [`TlsMode`] into a live TLS state: it loads (or generates, or
//! obtains through ACME) the certificate, spawns whatever background task keeps it current, and
//! hands out [`tokio_rustls::TlsAcceptor`]s that always present the current certificate.
//!
//! rustls always runs on the `ring` provider, passed explicitly; the process-wide default
//! provider is never consulted.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::InconsistentKeys;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// The only application protocol the relay speaks over TLS.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// File names used when a self-signed certificate is persisted to a directory.
const SELF_SIGNED_CERT_FILE: &str = "self-signed-cert.pem";
const SELF_SIGNED_KEY_FILE: &str = "self-signed-key.pem";
const SELF_SIGNED_NAMES_FILE: &str = "self-signed-names.txt";

/// How the relay terminates TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain HTTP (only for loopback or behind a TLS-terminating proxy; the caller enforces
    /// that).
    Off,
    /// PEM certificate chain and private key files; reloaded when either file changes (polled
    /// every `poll` interval) and when [`Tls::reload`] is called (the binary calls it on SIGHUP).
    Files {
        /// PEM file holding the certificate chain, end-entity certificate first.
        cert: PathBuf,
        /// PEM file holding the private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// A self-signed certificate for development, generated at start for these names (e.g.
    /// `["localhost", "127.0.0.1"]`). Optionally persisted to / loaded from `dir` so restarts
    /// keep the same certificate.
    SelfSigned {
        /// DNS names and IP addresses the certificate is valid for.
        names: Vec<String>,
        /// Directory where the certificate and key are kept across restarts.
        dir: Option<PathBuf>,
    },
    /// Automatic certificates via ACME TLS-ALPN-01 (rustls-acme), cached in `cache_dir`.
    Acme {
        /// Domains the certificate is requested for.
        domains: Vec<String>,
        /// Contact for the ACME account (an e-mail address; `mailto:` is added if missing).
        contact: Option<String>,
        /// Directory caching the ACME account key and the certificates.
        cache_dir: PathBuf,
        /// Use Let's Encrypt's production directory rather than its staging one.
        production: bool,
    },
}

/// Why TLS could not be set up or reloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file does not exist.
    #[error("{what} file {} does not exist", path.display())]
    Missing {
        /// Which file ("certificate" or "private key").
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A certificate or key file could not be read.
    #[error("cannot read {what} file {}: {source}", path.display())]
    Read {
        /// Which file ("certificate" or "private key").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A certificate or key file is not well-formed PEM.
    #[error("{what} file {} is not valid PEM: {source}", path.display())]
    InvalidPem {
        /// Which file ("certificate" or "private key").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate (PEM block `CERTIFICATE`) found in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error(
        "no private key (PEM block `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`) \
         found in {}",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a kind rustls cannot use.
    #[error("the private key in {} is not usable: {source}", path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// Why rustls rejected it.
        source: rustls::Error,
    },
    /// The end-entity certificate could not be parsed.
    #[error("the certificate in {} is not valid: {source}", path.display())]
    InvalidCertificate {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        source: rustls::Error,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Self-signed mode was given no names (or an empty one).
    #[error("self-signed TLS needs at least one name (e.g. \"localhost\") and no empty names")]
    NoNames,
    /// The self-signed certificate could not be generated.
    #[error("cannot generate the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// ACME mode was given no domains (or an empty one).
    #[error("ACME needs at least one domain and no empty domains")]
    NoDomains,
    /// ACME mode was requested but the relay was built without it.
    #[error("ACME support is not compiled in (build tandem-relay with the `acme` feature)")]
    AcmeUnavailable,
    /// rustls rejected the server configuration.
    #[error("invalid TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The relay's live TLS state. Cheap to clone: all clones share the same certificate.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    acceptor: tokio_rustls::TlsAcceptor,
    source: Source,
}

/// Where the served certificate comes from.
enum Source {
    Files(Arc<FileSource>),
    SelfSigned {
        cert_pem: String,
    },
    #[cfg(feature = "acme")]
    Acme,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Tls");
        match &self.inner.source {
            Source::Files(files) => {
                d.field("mode", &"files").field("cert", &files.cert).field("key", &files.key)
            }
            Source::SelfSigned { .. } => d.field("mode", &"self-signed"),
            #[cfg(feature = "acme")]
            Source::Acme => d.field("mode", &"acme"),
        };
        d.finish_non_exhaustive()
    }
}

impl Tls {
    /// Build the TLS state for a mode; spawns the background tasks it needs (file watcher, ACME
    /// driver) on the current tokio runtime; they stop when `shutdown` is cancelled. Returns
    /// `None` for [`TlsMode::Off`].
    ///
    /// In [`TlsMode::Files`] mode, a zero `poll` disables watching the files (only
    /// [`Tls::reload`] reloads them then).
    pub async fn start(
        mode: &TlsMode,
        poll: Duration,
        shutdown: CancellationToken,
    ) -> Result<Option<Tls>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (config, source) = match mode {
            TlsMode::Off => return Ok(None),
            TlsMode::Files { cert, key } => {
                let files = Arc::new(FileSource::load(cert, key, Arc::clone(&provider))?);
                let resolver: Arc<dyn ResolvesServerCert> = files.resolver.clone();
                let config = server_config(provider, resolver, vec![ALPN_HTTP_1_1.to_vec()])?;
                tracing::info!(
                    cert = %cert.display(),
                    key = %key.display(),
                    "TLS: serving the certificate from files"
                );
                if poll.is_zero() {
                    tracing::info!(
                        "TLS: certificate file polling disabled (reload on demand only)"
                    );
                } else {
                    tokio::spawn(watch_files(Arc::clone(&files), poll, shutdown));
                }
                (config, Source::Files(files))
            }
            TlsMode::SelfSigned { names, dir } => {
                let (key, cert_pem) = self_signed(names, dir.as_deref(), &provider)?;
                let resolver: Arc<dyn ResolvesServerCert> = Arc::new(CurrentCert::new(key));
                let config = server_config(provider, resolver, vec![ALPN_HTTP_1_1.to_vec()])?;
                (config, Source::SelfSigned { cert_pem })
            }
            #[cfg(feature = "acme")]
            TlsMode::Acme { domains, contact, cache_dir, production } => {
                let state =
                    acme::state(domains, contact.as_deref(), cache_dir, *production, &provider)?;
                let config = acme::server_config(&state, provider)?;
                tracing::info!(
                    ?domains,
                    production = *production,
                    cache_dir = %cache_dir.display(),
                    "TLS: certificates through ACME (TLS-ALPN-01)"
                );
                tokio::spawn(acme::drive(state, shutdown));
                (config, Source::Acme)
            }
            #[cfg(not(feature = "acme"))]
            TlsMode::Acme { .. } => return Err(TlsError::AcmeUnavailable),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Ok(Some(Tls { inner: Arc::new(Inner { acceptor, source }) }))
    }

    /// A tokio-rustls acceptor that always uses the current certificate.
    ///
    /// It advertises ALPN `http/1.1`; in ACME mode also `acme-tls/1`: a connection that
    /// negotiated `acme-tls/1` is a TLS-ALPN-01 validation probe, which closes right after the
    /// handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.inner.acceptor.clone()
    }

    /// Reload certificate files now ([`TlsMode::Files`]; a no-op otherwise). On failure keep
    /// serving the previous certificate and return the error (the caller logs it).
    pub fn reload(&self) -> Result<(), TlsError> {
        match &self.inner.source {
            Source::Files(files) => files.reload(),
            _ => Ok(()),
        }
    }

    /// For [`TlsMode::SelfSigned`]: the certificate in PEM, so clients (tests, `tandem up`) can
    /// trust it. `None` otherwise.
    pub fn self_signed_cert_pem(&self) -> Option<String> {
        match &self.inner.source {
            Source::SelfSigned { cert_pem } => Some(cert_pem.clone()),
            _ => None,
        }
    }
}

/// A server configuration on the ring provider, with the given resolver and ALPN protocols.
fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
    alpn_protocols: Vec<Vec<u8>>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn_protocols;
    Ok(config)
}

/// Resolves every handshake to the current certificate, which can be swapped at any time.
struct CurrentCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CurrentCert {
    fn new(key: CertifiedKey) -> Self {
        Self { current: RwLock::new(Arc::new(key)) }
    }

    fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentCert").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

// ---------------------------------------------------------------------------------------------
// Loading PEM files
// ---------------------------------------------------------------------------------------------

const WHAT_CERT: &str = "certificate";
const WHAT_KEY: &str = "private key";

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TlsError::Missing { what, path: path.to_path_buf() },
        _ => TlsError::Read { what, path: path.to_path_buf(), source },
    })
}

fn parse_cert_chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain =
        rustls_pemfile::certs(&mut &*pem).collect::<Result<Vec<_>, _>>().map_err(|source| {
            TlsError::InvalidPem { what: WHAT_CERT, path: path.to_path_buf(), source }
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(chain)
}

fn parse_private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut &*pem)
        .map_err(|source| TlsError::InvalidPem {
            what: WHAT_KEY,
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey { path: path.to_path_buf() })
}

/// Pairs a chain with its key, checking that the key belongs to the end-entity certificate.
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey { path: key_path.to_path_buf(), source })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key that cannot reveal its public half cannot be checked (as in rustls's own
        // `CertifiedKey::from_der`); ring's keys always can.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        }),
        Err(source) => Err(TlsError::InvalidCertificate { path: cert_path.to_path_buf(), source }),
    }
}

/// Reads and validates a certificate chain and its private key.
fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = parse_cert_chain(cert, &read_file(WHAT_CERT, cert)?)?;
    let private_key = parse_private_key(key, &read_file(WHAT_KEY, key)?)?;
    certified_key(chain, private_key, provider, cert, key)
}

#[cfg(feature = "acme")]
mod acme;
mod files;
mod self_signed;

use files::{FileSource, watch_files};
use self_signed::self_signed;

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::RootCertStore;
    use rustls::pki_types::ServerName;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const POLL: Duration = Duration::from_millis(50);

    /// A self-signed certificate with a distinct common name, as (cert PEM, key PEM, cert DER).
    fn generate(common_name: &str) -> (String, String, CertificateDer<'static>) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// Writes a file the way a deployment tool would: to a temporary file, then renamed.
    fn replace(path: &Path, contents: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn pem_to_der(pem: &str) -> CertificateDer<'static> {
        parse_cert_chain(Path::new("test"), pem.as_bytes()).unwrap().remove(0)
    }

    /// Completes a TLS handshake for "localhost" against `acceptor` with a client trusting
    /// `roots`; returns the end-entity certificate the server presented and the ALPN protocol.
    async fn handshake(
        acceptor: &TlsAcceptor,
        roots: &[CertificateDer<'static>],
    ) -> Result<(CertificateDer<'static>, Option<Vec<u8>>), String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move { acceptor.accept(server_io).await.map(drop) });

        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root.clone()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("localhost").unwrap();
        let client =
            tokio::time::timeout(Duration::from_secs(10), connector.connect(name, client_io))
                .await
                .map_err(|_| "handshake timed out".to_owned())?
                .map_err(|err| format!("client: {err}"));
        let server = server.await.unwrap().map_err(|err| format!("server: {err}"));
        let client = client?;
        server?;
        let (_, conn) = client.get_ref();
        let leaf = conn.peer_certificates().and_then(|chain| chain.first()).unwrap().clone();
        Ok((leaf, conn.alpn_protocol().map(<[u8]>::to_vec)))
    }

    /// Handshakes until the server presents `expected` (the watcher reloads asynchronously).
    async fn wait_for_cert(
        acceptor: &TlsAcceptor,
        roots: &[CertificateDer<'static>],
        expected: &CertificateDer<'static>,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let served = handshake(acceptor, roots).await.map(|(leaf, _)| leaf);
            if served.as_ref() == Ok(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "new certificate not served: {served:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn start_files(
        dir: &Path,
        poll: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<Tls>, TlsError> {
        let mode = TlsMode::Files { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        Tls::start(&mode, poll, shutdown.clone()).await
    }

    #[tokio::test]
    async fn off_mode_has_no_tls() {
        let tls = Tls::start(&TlsMode::Off, POLL, CancellationToken::new()).await.unwrap();
        assert!(tls.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_mode_serves_and_hot_reloads_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (a_pem, a_key, a_der) = generate("cert A");
        let (b_pem, b_key, b_der) = generate("cert B");
        let (c_pem, _, c_der) = generate("cert C");
        let (_, d_key, _) = generate("cert D");
        let roots = [a_der.clone(), b_der.clone(), c_der.clone()];
        std::fs::write(&cert_path, &a_pem).unwrap();
        std::fs::write(&key_path, &a_key).unwrap();

        let shutdown = CancellationToken::new();
        let tls = start_files(dir.path(), POLL, &shutdown).await.unwrap().unwrap();
        assert!(tls.self_signed_cert_pem().is_none());
        let acceptor = tls.acceptor();
        let (served, alpn) = handshake(&acceptor, &roots).await.unwrap();
        assert_eq!(served, a_der);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        // A client that trusts only another certificate refuses the served one.
        assert!(handshake(&acceptor, std::slice::from_ref(&b_der)).await.is_err());

        // New files are picked up by the watcher, by acceptors handed out before the change too.
        replace(&key_path, &b_key);
        replace(&cert_path, &b_pem);
        wait_for_cert(&acceptor, &roots, &b_der).await;
        wait_for_cert(&tls.acceptor(), &roots, &b_der).await;

        // Garbage: the watcher fails to load it and keeps serving B; so does an explicit reload.
        replace(&cert_path, "this is not a certificate\n");
        tokio::time::sleep(POLL * 6).await;
        assert_eq!(handshake(&acceptor, &roots).await.unwrap().0, b_der);
        assert!(matches!(tls.reload(), Err(TlsError::NoCertificate { .. })), "{:?}", tls.reload());
        assert_eq!(handshake(&acceptor, &roots).await.unwrap().0, b_der);

        // A certificate with somebody else's key: rejected, B still served.
        replace(&cert_path, &c_pem);
        replace(&key_path, &d_key);
        tokio::time::sleep(POLL * 6).await;
        assert_eq!(handshake(&acceptor, &roots).await.unwrap().0, b_der);
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("does not match"), "{err}");
        assert_eq!(handshake(&acceptor, &roots).await.unwrap().0, b_der);

        // Garbage inside a PEM block.
        replace(&key_path, &a_key);
        replace(&cert_path, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(matches!(tls.reload(), Err(TlsError::InvalidCertificate { .. })));
        assert_eq!(handshake(&acceptor, &roots).await.unwrap().0, b_der);

        // Back to a valid pair: served again.
        replace(&cert_path, &a_pem);
        wait_for_cert(&acceptor, &roots, &a_der).await;

        // After shutdown the watcher no longer reloads, but an explicit reload still does.
        shutdown.cancel();
        tokio::time::sleep(POLL * 2).await;
        replace(&key_path, &b_key);
        replace(&cert_path, &b_pem);
        tokio::time::sleep(POLL * 6).await;
        assert_eq!(handshake(&acceptor, &roots).await.unwrap().0, a_der);
        tls.reload().unwrap();
        assert_eq!(handshake(&acceptor, &roots).await.unwrap().0, b_der);
    }

    #[tokio::test]
    async fn files_mode_reload_on_demand_without_polling() {
        let dir = tempfile::tempdir().unwrap();
        let (a_pem, a_key, a_der) = generate("cert A");
        let (b_pem, b_key, b_der) = generate("cert B");
        let roots = [a_der.clone(), b_der.clone()];
        std::fs::write(dir.path().join("cert.pem"), &a_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &a_key).unwrap();
        let shutdown = CancellationToken::new();
        let tls = start_files(dir.path(), Duration::ZERO, &shutdown).await.unwrap().unwrap();
        assert_eq!(handshake(&tls.acceptor(), &roots).await.unwrap().0, a_der);
        replace(&dir.path().join("cert.pem"), &b_pem);
        replace(&dir.path().join("key.pem"), &b_key);
        tokio::time::sleep(POLL * 3).await;
        assert_eq!(handshake(&tls.acceptor(), &roots).await.unwrap().0, a_der);
        tls.reload().unwrap();
        assert_eq!(handshake(&tls.acceptor(), &roots).await.unwrap().0, b_der);
        // Missing files on reload: clear error, old certificate kept.
        std::fs::remove_file(dir.path().join("key.pem")).unwrap();
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::Missing { what: "private key", .. }), "{err:?}");
        assert_eq!(handshake(&tls.acceptor(), &roots).await.unwrap().0, b_der);
    }

    #[tokio::test]
    async fn files_mode_start_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (a_pem, a_key, _) = generate("cert A");
        let (_, b_key, _) = generate("cert B");

        let err = start_files(dir.path(), POLL, &shutdown).await.unwrap_err();
        assert!(matches!(err, TlsError::Missing { what: "certificate", .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("does not exist"), "{message}");
        assert!(message.contains(&cert_path.display().to_string()), "{message}");

        std::fs::write(&cert_path, &a_pem).unwrap();
        let err = start_files(dir.path(), POLL, &shutdown).await.unwrap_err();
        assert!(matches!(err, TlsError::Missing { what: "private key", .. }), "{err:?}");
        assert!(err.to_string().contains(&key_path.display().to_string()), "{err}");

        std::fs::write(&key_path, "no key here\n").unwrap();
        let err = start_files(dir.path(), POLL, &shutdown).await.unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
        assert!(err.to_string().contains("no private key"), "{err}");

        // The certificate file given as key file: still no private key in it.
        let mode = TlsMode::Files { cert: cert_path.clone(), key: cert_path.clone() };
        let err = Tls::start(&mode, POLL, shutdown.clone()).await.unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");

        // The key file given as certificate file.
        std::fs::write(&key_path, &a_key).unwrap();
        let mode = TlsMode::Files { cert: key_path.clone(), key: key_path.clone() };
        let err = Tls::start(&mode, POLL, shutdown.clone()).await.unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("no certificate"), "{err}");

        std::fs::write(&key_path, &b_key).unwrap();
        let err = start_files(dir.path(), POLL, &shutdown).await.unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "the private key in {} does not match the certificate in {}",
                key_path.display(),
                cert_path.display()
            )
        );

        // A certificate and its key in one file works.
        let both = dir.path().join("both.pem");
        std::fs::write(&both, format!("{a_pem}{a_key}")).unwrap();
        let mode = TlsMode::Files { cert: both.clone(), key: both };
        assert!(Tls::start(&mode, POLL, shutdown.clone()).await.unwrap().is_some());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn self_signed_mode_serves_a_trusted_localhost_certificate() {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mode = TlsMode::SelfSigned { names, dir: None };
        let tls = Tls::start(&mode, POLL, CancellationToken::new()).await.unwrap().unwrap();
        let pem = tls.self_signed_cert_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        let der = pem_to_der(&pem);
        let (served, alpn) = handshake(&tls.acceptor(), std::slice::from_ref(&der)).await.unwrap();
        assert_eq!(served, der);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        tls.reload().unwrap(); // a no-op

        // Without `dir`, every start makes a new certificate.
        let other = Tls::start(&mode, POLL, CancellationToken::new()).await.unwrap().unwrap();
        assert_ne!(other.self_signed_cert_pem().unwrap(), pem);
        // ... which a client trusting only the first one refuses.
        assert!(handshake(&other.acceptor(), std::slice::from_ref(&der)).await.is_err());
    }

    #[tokio::test]
    async fn self_signed_mode_persists_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("tls");
        let mode = TlsMode::SelfSigned {
            names: vec!["localhost".to_owned()],
            dir: Some(state_dir.clone()),
        };
        let first = Tls::start(&mode, POLL, CancellationToken::new()).await.unwrap().unwrap();
        let second = Tls::start(&mode, POLL, CancellationToken::new()).await.unwrap().unwrap();
        let pem = first.self_signed_cert_pem().unwrap();
        assert_eq!(second.self_signed_cert_pem().unwrap(), pem);
        let der = pem_to_der(&pem);
        assert_eq!(handshake(&second.acceptor(), std::slice::from_ref(&der)).await.unwrap().0, der);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let key_meta = std::fs::metadata(state_dir.join(SELF_SIGNED_KEY_FILE)).unwrap();
            assert_eq!(key_meta.permissions().mode() & 0o077, 0);
        }

        // Other names: a new certificate, which is then kept.
        let mode = TlsMode::SelfSigned {
            names: vec!["localhost".to_owned(), "relay.test".to_owned()],
            dir: Some(state_dir.clone()),
        };
        let third = Tls::start(&mode, POLL, CancellationToken::new()).await.unwrap().unwrap();
        let third_pem = third.self_signed_cert_pem().unwrap();
        assert_ne!(third_pem, pem);
        let fourth = Tls::start(&mode, POLL, CancellationToken::new()).await.unwrap().unwrap();
        assert_eq!(fourth.self_signed_cert_pem().unwrap(), third_pem);

        // A corrupted saved certificate is replaced rather than fatal.
        std::fs::write(state_dir.join(SELF_SIGNED_CERT_FILE), "garbage").unwrap();
        let fifth = Tls::start(&mode, POLL, CancellationToken::new()).await.unwrap().unwrap();
        let fifth_pem = fifth.self_signed_cert_pem().unwrap();
        assert_ne!(fifth_pem, third_pem);
        let der = pem_to_der(&fifth_pem);
        assert_eq!(handshake(&fifth.acceptor(), std::slice::from_ref(&der)).await.unwrap().0, der);
    }

    #[tokio::test]
    async fn self_signed_mode_needs_names() {
        for names in [vec![], vec!["localhost".to_owned(), " ".to_owned()]] {
            let mode = TlsMode::SelfSigned { names, dir: None };
            let err = Tls::start(&mode, POLL, CancellationToken::new()).await.unwrap_err();
            assert!(matches!(err, TlsError::NoNames), "{err:?}");
        }
    }

    #[tokio::test]
    async fn acme_mode_needs_domains() {
        let dir = tempfile::tempdir().unwrap();
        for domains in [vec![], vec![String::new()]] {
            let mode = TlsMode::Acme {
                domains,
                contact: None,
                cache_dir: dir.path().to_path_buf(),
                production: false,
            };
            let err = Tls::start(&mode, POLL, CancellationToken::new()).await.unwrap_err();
            #[cfg(feature = "acme")]
            assert!(matches!(err, TlsError::NoDomains), "{err:?}");
            #[cfg(not(feature = "acme"))]
            assert!(matches!(err, TlsError::AcmeUnavailable), "{err:?}");
        }
    }

    #[cfg(feature = "acme")]
    #[tokio::test]
    async fn acme_config_advertises_the_challenge_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("acme");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let domains = vec!["relay.example.invalid".to_owned()];
        // Building the state and the configuration touches no network.
        let state =
            acme::state(&domains, Some("ops@example.invalid"), &cache_dir, false, &provider)
                .unwrap();
        assert!(cache_dir.is_dir());
        let config = acme::server_config(&state, provider).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"http/1.1".to_vec(), rustls_acme::acme::ACME_TLS_ALPN_NAME.to_vec()]
        );

        // Starting spawns the driver; cancelling stops it. Until a certificate exists,
        // handshakes fail rather than panic.
        let shutdown = CancellationToken::new();
        let mode = TlsMode::Acme {
            domains,
            contact: None,
            cache_dir: cache_dir.clone(),
            production: false,
        };
        let tls = Tls::start(&mode, POLL, shutdown.clone()).await.unwrap().unwrap();
        shutdown.cancel();
        assert!(tls.self_signed_cert_pem().is_none());
        tls.reload().unwrap();
        assert!(handshake(&tls.acceptor(), &[]).await.is_err());
    }
}
