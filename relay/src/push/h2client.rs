//! A small HTTPS client for the push services: HTTP/2 (ALPN `h2`) over
//! rustls with ring, one multiplexed connection per origin, kept open
//! between pushes (as Apple asks) and made anew when it has closed or has
//! been idle long enough for a NAT to have forgotten it. A server that does
//! not offer `h2` is spoken to in HTTP/1.1, one connection per request (only
//! an OAuth2 token endpoint might; APNs and FCM speak HTTP/2).
//!
//! Errors name the host only, never a path (which may hold a device token).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::PushError;

/// The most bytes of a response body read (the push services answer with a
/// few hundred).
const MAX_RESPONSE: usize = 64 * 1024;
/// A connection idle this long is not reused (NAT gateways forget idle
/// flows after about six minutes).
const IDLE_REUSE: Duration = Duration::from_secs(4 * 60);

/// Why an HTTPS exchange failed.
#[derive(thiserror::Error, Debug)]
pub(crate) enum HttpError {
    /// The URL is not an absolute `https` URL.
    #[error("not an https URL: {0}")]
    Url(String),
    /// The extra root certificate is unusable.
    #[error("extra root {}: {reason}", path.display())]
    Root {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// TCP or TLS failed.
    #[error("cannot connect to {host}: {reason}")]
    Connect {
        /// The server's host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The exchange took longer than the client's timeout.
    #[error("{host} did not answer in time")]
    Timeout {
        /// The server's host.
        host: String,
    },
    /// HTTP failed after the connection was made.
    #[error("HTTP with {host}: {reason}")]
    Http {
        /// The server's host.
        host: String,
        /// Why.
        reason: String,
    },
}

/// A response: status and (bounded) body.
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: StatusCode,
    /// The body, at most [`MAX_RESPONSE`] bytes.
    pub(crate) body: Bytes,
}

/// One origin's client (see the module docs).
pub(crate) struct HttpsClient {
    host: String,
    port: u16,
    /// `scheme://authority` plus the URL's path without a trailing `/`.
    base: String,
    /// The `Host` header for HTTP/1.1.
    authority: HeaderValue,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    timeout: Duration,
    conn: Mutex<Option<Cached>>,
}

/// The kept HTTP/2 connection.
struct Cached {
    sender: http2::SendRequest<Full<Bytes>>,
    last_used: Instant,
}

/// A connection to send one request on.
enum Conn {
    H2(http2::SendRequest<Full<Bytes>>),
    H1(http1::SendRequest<Full<Bytes>>),
}

impl HttpsClient {
    /// A client for `url`'s origin (its path is the base of every request),
    /// trusting the public web roots plus the certificates in `ca_file`;
    /// every exchange (connecting included) gives up after `timeout`.
    pub(crate) fn new(
        url: &str,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, HttpError> {
        let bad = || HttpError::Url(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") || uri.query().is_some() {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(bad());
        }
        let port = authority.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
        let base = format!("https://{authority}{}", uri.path().trim_end_matches('/'));
        let authority = HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?;
        Ok(Self {
            host,
            port,
            base,
            authority,
            server_name,
            tls: TlsConnector::from(tls_config(ca_file)?),
            timeout,
            conn: Mutex::new(None),
        })
    }

    /// The server's host (for logs).
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The same client with another timeout.
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// `POST` `body` to the base URL plus `path` with `headers`.
    pub(crate) async fn post(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, HttpError> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|_| HttpError::Url(format!("https://{}/…", self.host)))?;
        tokio::time::timeout(self.timeout, self.exchange(&uri, headers, body))
            .await
            .map_err(|_| HttpError::Timeout { host: self.host.clone() })?
    }

    async fn exchange(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, HttpError> {
        let (conn, reused) = self.connection().await?;
        let request = self.request(uri, headers, body.clone(), &conn)?;
        let response = match send(conn, request).await {
            Ok(response) => response,
            // Once more on a new connection when the server certainly did
            // not process the request (so this cannot deliver twice): a
            // kept connection turned out closed before the request went
            // out, or the server refused the stream or left it out of its
            // graceful GOAWAY (as APNs does now and then).
            Err((e, unsent)) if (unsent && reused) || unprocessed(&e) => {
                self.forget().await;
                let (conn, _) = self.connection().await?;
                let request = self.request(uri, headers, body, &conn)?;
                send(conn, request).await.map_err(|(e, _)| self.http_error(&e))?
            }
            Err((e, _)) => {
                self.forget().await;
                return Err(self.http_error(&e));
            }
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| HttpError::Http { host: self.host.clone(), reason: e.to_string() })?
            .to_bytes();
        Ok(Response { status, body })
    }

    fn request(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
        conn: &Conn,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut builder = Request::builder().method(Method::POST);
        match conn {
            Conn::H2(_) => builder = builder.version(Version::HTTP_2).uri(uri.clone()),
            Conn::H1(_) => {
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                builder = builder
                    .version(Version::HTTP_11)
                    .uri(path)
                    .header(header::HOST, self.authority.clone());
            }
        }
        let mut request = builder
            .body(Full::new(body))
            .map_err(|e| HttpError::Http { host: self.host.clone(), reason: e.to_string() })?;
        request.headers_mut().extend(headers.clone());
        Ok(request)
    }

    /// The kept HTTP/2 connection if it is still usable (and `true`), or a
    /// new connection (and `false`), kept when it speaks HTTP/2.
    async fn connection(&self) -> Result<(Conn, bool), HttpError> {
        let mut kept = self.conn.lock().await;
        if let Some(cached) = kept.as_mut() {
            if !cached.sender.is_closed() && cached.last_used.elapsed() < IDLE_REUSE {
                cached.last_used = Instant::now();
                return Ok((Conn::H2(cached.sender.clone()), true));
            }
            *kept = None;
        }
        let conn = self.connect().await?;
        if let Conn::H2(sender) = &conn {
            *kept = Some(Cached { sender: sender.clone(), last_used: Instant::now() });
        }
        Ok((conn, false))
    }

    async fn forget(&self) {
        *self.conn.lock().await = None;
    }

    async fn connect(&self) -> Result<Conn, HttpError> {
        let failed = |reason: String| HttpError::Connect { host: self.host.clone(), reason };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| failed(e.to_string()))?;
        // Only latency: a failure changes nothing else.
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(tls);
        let host = self.host.clone();
        if h2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            let (sender, conn) = builder.handshake(io).await.map_err(|e| failed(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(%host, error = %e, "push service connection ended");
                }
            });
            Ok(Conn::H2(sender))
        } else {
            let (sender, conn) =
                http1::Builder::new().handshake(io).await.map_err(|e| failed(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(%host, error = %e, "push service connection ended");
                }
            });
            Ok(Conn::H1(sender))
        }
    }

    fn http_error(&self, e: &hyper::Error) -> HttpError {
        HttpError::Http { host: self.host.clone(), reason: e.to_string() }
    }
}

/// Send `request` on `conn`; on failure, the error and whether the request
/// was certainly not sent.
async fn send(
    conn: Conn,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<Incoming>, (hyper::Error, bool)> {
    match conn {
        Conn::H2(mut sender) => sender.try_send_request(request).await.map_err(|mut e| {
            let unsent = e.take_message().is_some();
            (e.into_error(), unsent)
        }),
        Conn::H1(mut sender) => {
            sender.ready().await.map_err(|e| (e, true))?;
            sender.send_request(request).await.map_err(|e| (e, false))
        }
    }
}

/// Whether `e` says the server did not process the request (RFC 9113
/// §8.7): a `REFUSED_STREAM` reset, or a stream beyond a graceful
/// (`NO_ERROR`) GOAWAY's last stream.
fn unprocessed(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && ((h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
                    || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)));
        }
        source = err.source();
    }
    false
}

/// What a push service's answer means.
pub(crate) enum Answer {
    /// Final: sent, or why not.
    Done(Result<(), PushError>),
    /// The credential was refused (APNs `ExpiredProviderToken`, FCM 401):
    /// worth one more try with a new one. The answer, for the error.
    Refused(&'static str),
}

/// `POST` `body` to `path` with `authorization: <scheme> <credential>`;
/// when `classify` calls the credential refused, once more with the one
/// `renew` makes (given the refused one). Transport failures are
/// [`PushError::Unavailable`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn post_authorized<F>(
    http: &HttpsClient,
    path: &str,
    mut headers: HeaderMap,
    body: Bytes,
    scheme: &str,
    mut credential: String,
    classify: fn(&Response) -> Answer,
    renew: impl FnOnce(String) -> F,
) -> Result<(), PushError>
where
    F: Future<Output = Result<String, PushError>>,
{
    let mut renew = Some(renew);
    loop {
        let value = HeaderValue::try_from(format!("{scheme} {credential}"))
            .map_err(|_| PushError::Rejected("the credential is not a header value".into()))?;
        headers.insert(header::AUTHORIZATION, value);
        let response = http
            .post(path, &headers, body.clone())
            .await
            .map_err(|e| PushError::Unavailable(e.to_string()))?;
        match classify(&response) {
            Answer::Done(result) => {
                if let Err(e) = &result {
                    debug!(host = http.host(), error = %e, "push failed");
                }
                return result;
            }
            Answer::Refused(answer) => match renew.take() {
                Some(renew) => credential = renew(credential).await?,
                None => {
                    return Err(PushError::Rejected(format!("{answer} after a new credential")));
                }
            },
        }
    }
}

/// rustls (ring) trusting the public web roots and `ca_file`'s
/// certificates, offering `h2` then `http/1.1`.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let root_error = |reason: String| HttpError::Root { path: path.to_owned(), reason };
        let pem = std::fs::read(path).map_err(|e| root_error(e.to_string()))?;
        let mut found = 0usize;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| root_error(e.to_string()))?;
            roots.add(cert).map_err(|e| root_error(e.to_string()))?;
            found += 1;
        }
        if found == 0 {
            return Err(root_error("no certificate in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> Result<HttpsClient, HttpError> {
        HttpsClient::new(url, None, Duration::from_secs(1))
    }

    #[test]
    fn urls_are_checked_and_split() {
        let c = client("https://api.push.apple.com").unwrap();
        assert_eq!(
            (c.host(), c.port, c.base.as_str()),
            ("api.push.apple.com", 443, "https://api.push.apple.com")
        );
        let c = client("https://oauth2.googleapis.com/token").unwrap();
        assert_eq!(c.base, "https://oauth2.googleapis.com/token");
        let c = client("https://localhost:8443/base/").unwrap();
        assert_eq!(
            (c.host(), c.port, c.base.as_str()),
            ("localhost", 8443, "https://localhost:8443/base")
        );
        let c = client("https://[::1]:9/").unwrap();
        assert_eq!((c.host(), c.port), ("::1", 9));
        assert_eq!(c.authority, "[::1]:9");
        for bad in [
            "http://api.push.apple.com",
            "api.push.apple.com",
            "https://",
            "https://h/?q=1",
            "",
            "https://exa mple.com",
        ] {
            assert!(matches!(client(bad), Err(HttpError::Url(_))), "{bad}");
        }
    }

    #[test]
    fn an_extra_root_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");
        for path in [&empty, &missing] {
            let made = HttpsClient::new("https://h", Some(path), Duration::from_secs(1));
            assert!(matches!(made, Err(HttpError::Root { .. })));
        }
        let cert = rcgen::generate_simple_self_signed(vec!["h".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, cert.cert.pem()).unwrap();
        assert!(HttpsClient::new("https://h", Some(&good), Duration::from_secs(1)).is_ok());
    }
}
