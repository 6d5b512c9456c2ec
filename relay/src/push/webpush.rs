//! The Web Push sender: the blob encrypted for the subscription per
//! RFC 8291 (`aes128gcm`, RFC 8188) by `web-push-native`, signed per
//! RFC 8292 (VAPID, [`super::vapid`]), and POSTed per RFC 8030 (`TTL`,
//! `Urgency`, `Topic`) with hyper's client over rustls (ring, the webpki
//! roots; HTTP/1.1 or HTTP/2 by ALPN).
//!
//! The push service sees the encrypted record only; inside it is the
//! desktop's inner seal, which only the phone opens.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tandem_proto::frame::push::endpoint_host;
use web_push_native::WebPushBuilder;
use web_push_native::p256::PublicKey;

use super::vapid::Vapid;
use super::{Push, PushError, PushSender, Subscription};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Most bytes of a push service's answer read (for the log).
const MAX_ANSWER: usize = 512;

/// The Web Push [`PushSender`].
pub struct WebPush {
    vapid: Arc<Vapid>,
    subject: String,
    client: HttpsClient,
    timeout: Duration,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush").field("vapid", &self.vapid).finish_non_exhaustive()
    }
}

/// An HTTPS client (rustls with ring and the webpki roots, HTTP/1.1 and
/// HTTP/2) that also speaks plain HTTP (only used for origins the operator
/// allowed: tests' local push services).
///
/// # Errors
/// rustls refuses the protocol versions (not with ring).
pub(crate) fn https_client() -> Result<HttpsClient, rustls::Error> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);
    Ok(client)
}

impl WebPush {
    /// A sender signing with `vapid`, naming `subject` (`mailto:`/`https:`).
    ///
    /// # Errors
    /// The TLS client cannot be set up.
    pub fn new(
        vapid: Arc<Vapid>,
        subject: String,
        timeout: Duration,
    ) -> Result<Self, rustls::Error> {
        Ok(Self { vapid, subject, client: https_client()?, timeout })
    }

    /// The request for `push` to the subscription: encrypted body and
    /// every header.
    fn request(
        &self,
        endpoint: &str,
        p256dh: &[u8; 65],
        auth: &[u8; 16],
        push: &Push,
    ) -> Result<http::Request<Full<Bytes>>, PushError> {
        let uri: http::Uri =
            endpoint.parse().map_err(|_| PushError::Rejected("bad endpoint URL".into()))?;
        let key = PublicKey::from_sec1_bytes(p256dh).map_err(|_| {
            PushError::Rejected("the subscription's p256dh is not a P-256 key".into())
        })?;
        let request = WebPushBuilder::new(uri.clone(), key, (*auth).into())
            .with_valid_duration(Duration::from_secs(u64::from(push.ttl_secs)))
            .build(push.blob.to_vec())
            .map_err(|e| PushError::Rejected(format!("encryption: {e}")))?;
        let authorization = self
            .vapid
            .authorization(&uri, &self.subject)
            .map_err(|e| PushError::Rejected(e.to_string()))?;
        let (mut parts, body) = request.into_parts();
        let h = &mut parts.headers;
        let value = |s: &str| {
            HeaderValue::from_str(s).map_err(|_| PushError::Rejected("bad header value".into()))
        };
        h.insert(http::header::AUTHORIZATION, value(&authorization)?);
        h.insert("urgency", HeaderValue::from_static(push.urgency.as_str()));
        if let Some(topic) = push.topic_hex() {
            h.insert("topic", value(&topic)?);
        }
        Ok(http::Request::from_parts(parts, Full::new(Bytes::from(body))))
    }

    async fn post(&self, request: http::Request<Full<Bytes>>) -> Result<(), PushError> {
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| PushError::Unavailable("timed out".into()))?
            .map_err(|e| PushError::Unavailable(format!("request failed: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // A short answer, for the log (push services say why in the body).
        let body = tokio::time::timeout(Duration::from_secs(2), response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let said =
            String::from_utf8_lossy(body.get(..body.len().min(MAX_ANSWER)).unwrap_or_default())
                .replace(|c: char| c.is_control(), " ");
        Err(classify(status, &said))
    }
}

/// What a push service's status means (RFC 8030 §5, §7.3).
fn classify(status: StatusCode, said: &str) -> PushError {
    match status.as_u16() {
        404 | 410 => PushError::Gone,
        429 => PushError::Unavailable(format!("{status}: {said}")),
        400..=499 => PushError::Rejected(format!("{status}: {said}")),
        _ => PushError::Unavailable(format!("{status}: {said}")),
    }
}

impl PushSender for WebPush {
    fn send<'a>(
        &'a self,
        sub: &'a Subscription,
        push: &'a Push,
    ) -> Pin<Box<dyn Future<Output = Result<(), PushError>> + Send + 'a>> {
        Box::pin(async move {
            let Subscription::WebPush { endpoint, p256dh, auth } = sub else {
                return Err(PushError::Rejected("not a Web Push subscription".into()));
            };
            let request = self.request(endpoint, p256dh, auth, push)?;
            tracing::debug!(host = endpoint_host(endpoint), "sending a Web Push");
            self.post(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_dispatcher_does() {
        assert!(matches!(classify(StatusCode::GONE, ""), PushError::Gone));
        assert!(matches!(classify(StatusCode::NOT_FOUND, ""), PushError::Gone));
        assert!(matches!(classify(StatusCode::BAD_REQUEST, ""), PushError::Rejected(_)));
        assert!(matches!(classify(StatusCode::PAYLOAD_TOO_LARGE, ""), PushError::Rejected(_)));
        assert!(matches!(classify(StatusCode::TOO_MANY_REQUESTS, ""), PushError::Unavailable(_)));
        assert!(matches!(classify(StatusCode::BAD_GATEWAY, ""), PushError::Unavailable(_)));
    }

    #[test]
    fn the_request_has_every_rfc_8030_header_and_decrypts_with_the_subscription_key() {
        use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let dir = tempfile::tempdir().unwrap();
        let vapid = Arc::new(Vapid::load_or_create(&dir.path().join("vapid.key")).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let w =
            WebPush::new(vapid, "mailto:ops@example.com".into(), Duration::from_secs(1)).unwrap();
        let ua = web_push_native::p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let p256dh: [u8; 65] =
            ua.public_key().to_encoded_point(false).as_bytes().try_into().unwrap();
        let auth = [5u8; 16];
        let push = Push {
            urgency: super::super::Urgency::High,
            topic: Some([0x0f; 16]),
            blob: Bytes::from_static(b"sealed blob"),
            ttl_secs: 60,
        };
        let r = w.request("https://push.example.com/x/y", &p256dh, &auth, &push).unwrap();
        let h = r.headers();
        assert_eq!(h["ttl"], "60");
        assert_eq!(h["urgency"], "high");
        assert_eq!(h["topic"], "0f".repeat(16));
        assert_eq!(h["content-encoding"], "aes128gcm");
        assert!(h["authorization"].to_str().unwrap().starts_with("vapid t="));
        let body = rt.block_on(r.into_body().collect()).unwrap().to_bytes().to_vec();
        assert!(!body.windows(6).any(|w| w == b"sealed"));
        let plain = web_push_native::decrypt(body, &ua, &auth.into()).unwrap();
        assert_eq!(plain, b"sealed blob");
    }
}
