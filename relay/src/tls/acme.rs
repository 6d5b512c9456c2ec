//! ACME mode: certificates obtained (and renewed) with TLS-ALPN-01.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt as _;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls_acme::acme::ACME_TLS_ALPN_NAME;
use rustls_acme::caches::DirCache;
use rustls_acme::{AcmeConfig, AcmeState, EventOk};
use tokio_util::sync::CancellationToken;

use super::{ALPN_HTTP_1_1, TlsError};

/// The certificate manager; it only makes progress while its stream is polled.
pub(super) type State = AcmeState<io::Error, io::Error>;

/// Builds the ACME state (no network access happens until it is polled).
pub(super) fn state(
    domains: &[String],
    contact: Option<&str>,
    cache_dir: &Path,
    production: bool,
    provider: &Arc<CryptoProvider>,
) -> Result<State, TlsError> {
    if domains.is_empty() || domains.iter().any(|domain| domain.trim().is_empty()) {
        return Err(TlsError::NoDomains);
    }
    crate::fsmode::create_private_dir(cache_dir)
        .map_err(|source| TlsError::Write { path: cache_dir.to_path_buf(), source })?;
    let contacts = contact
        .map(str::trim)
        .filter(|contact| !contact.is_empty())
        .map(|c| if c.contains(':') { c.to_owned() } else { format!("mailto:{c}") });
    Ok(AcmeConfig::new_with_provider(domains, Arc::clone(provider))
        .contact(contacts)
        .cache(DirCache::new(PathBuf::from(cache_dir)))
        .directory_lets_encrypt(production)
        .state())
}

/// One configuration for both regular connections and TLS-ALPN-01 validation probes: the
/// rustls-acme resolver answers a hello offering only `acme-tls/1` with the challenge
/// certificate and every other hello with the current certificate.
pub(super) fn server_config(
    state: &State,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, TlsError> {
    let resolver: Arc<dyn ResolvesServerCert> = state.resolver();
    super::server_config(
        provider,
        resolver,
        vec![ALPN_HTTP_1_1.to_vec(), ACME_TLS_ALPN_NAME.to_vec()],
    )
}

/// Drives certificate acquisition and renewal until `shutdown`.
pub(super) async fn drive(mut state: State, shutdown: CancellationToken) {
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = state.next() => event,
        };
        match event {
            Some(Ok(EventOk::DeployedCachedCert)) => {
                tracing::info!("TLS: ACME: serving the cached certificate");
            }
            Some(Ok(EventOk::DeployedNewCert)) => {
                tracing::info!("TLS: ACME: obtained and serving a new certificate");
            }
            Some(Ok(EventOk::CertCacheStore)) => {
                tracing::debug!("TLS: ACME: certificate cached");
            }
            Some(Ok(EventOk::AccountCacheStore)) => {
                tracing::debug!("TLS: ACME: account key cached");
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "TLS: ACME: certificate management failed; will retry");
            }
            None => {
                tracing::warn!("TLS: ACME: certificate manager stopped");
                break;
            }
        }
    }
    tracing::debug!("TLS: ACME driver stopped");
}
