//! Push (issue 19, docs/PUSH.md): wake a device that is not in front
//! through its platform's push service, with an opaque blob sealed end to
//! end by the desktop that asked.
//!
//! A phone registers its subscription (`PushSubscribe`, kept in the
//! [`Store`](crate::store::Store) on either backend), a desktop with a
//! route to it asks for a push (`Notify`), and the relay decides in
//! [`dispatch`]: suppressed while the phone is connected here and
//! `Active`, collapsed per topic, paced per device, then handed to the
//! [`PushSender`] of the subscription's kind: Web Push ([`webpush`],
//! RFC 8291 encryption and RFC 8292 VAPID with the key of [`vapid`]), APNs
//! or FCM (senders configured by the operator, [`PushConfig::apns`],
//! [`PushConfig::fcm`]).
//!
//! The relay sees only: which device to wake, the urgency, an opaque
//! 16-byte topic and the sealed blob. It never logs the blob, a token, or
//! an endpoint's path (only its host).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tandem_proto::frame::push::{PushSubscription, endpoint_host};

pub mod apns;
pub(crate) mod dispatch;
pub mod fcm;
mod h2client;
mod jwt;
pub mod native_config;
pub mod vapid;
pub mod webpush;

/// One platform's sender (Web Push, APNs, FCM).
pub trait PushSender: Send + Sync + 'static {
    /// Send `push` to `sub`.
    fn send<'a>(
        &'a self,
        sub: &'a Subscription,
        push: &'a Push,
    ) -> Pin<Box<dyn Future<Output = Result<(), PushError>> + Send + 'a>>;
}

/// A device's push subscription, as the relay keeps it.
#[derive(Clone, PartialEq, Eq)]
pub enum Subscription {
    /// Web Push (RFC 8030): the push resource and the user agent's keys.
    WebPush {
        /// The push resource URL (an origin the relay allows).
        endpoint: String,
        /// The user agent's uncompressed P-256 public key.
        p256dh: [u8; 65],
        /// The authentication secret.
        auth: [u8; 16],
    },
    /// An APNs device token.
    Apns {
        /// Raw token bytes.
        token: Vec<u8>,
    },
    /// An FCM registration token.
    Fcm {
        /// The token.
        token: String,
    },
}

impl Subscription {
    /// The kind's name (`webpush`, `apns`, `fcm`): metrics labels, `/v1/push`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Subscription::WebPush { .. } => "webpush",
            Subscription::Apns { .. } => "apns",
            Subscription::Fcm { .. } => "fcm",
        }
    }

    /// From the wire form; `None` for a removal.
    #[must_use]
    pub fn from_wire(sub: PushSubscription) -> Option<Self> {
        match sub {
            PushSubscription::Remove => None,
            PushSubscription::WebPush { endpoint, p256dh, auth } => {
                Some(Subscription::WebPush { endpoint, p256dh, auth })
            }
            PushSubscription::Apns { token } => Some(Subscription::Apns { token }),
            PushSubscription::Fcm { token } => Some(Subscription::Fcm { token }),
        }
    }

    /// The wire form (what the store keeps: `kind ‖ data`).
    #[must_use]
    pub fn to_wire(&self) -> PushSubscription {
        match self.clone() {
            Subscription::WebPush { endpoint, p256dh, auth } => {
                PushSubscription::WebPush { endpoint, p256dh, auth }
            }
            Subscription::Apns { token } => PushSubscription::Apns { token },
            Subscription::Fcm { token } => PushSubscription::Fcm { token },
        }
    }
}

impl std::fmt::Debug for Subscription {
    /// The kind and, for Web Push, the endpoint's host: never keys, tokens
    /// or the endpoint's path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subscription::WebPush { endpoint, .. } => {
                write!(f, "WebPush({})", endpoint_host(endpoint))
            }
            Subscription::Apns { .. } => f.write_str("Apns"),
            Subscription::Fcm { .. } => f.write_str("Fcm"),
        }
    }
}

/// One push to send.
#[derive(Clone)]
pub struct Push {
    /// How urgent (RFC 8030 `Urgency`; APNs priority; FCM priority).
    pub urgency: Urgency,
    /// The collapse key (`None`: no collapse).
    pub topic: Option<[u8; 16]>,
    /// The end-to-end sealed blob, opaque to the relay.
    pub blob: bytes::Bytes,
    /// How long the push service may keep it, in seconds.
    pub ttl_secs: u32,
}

impl Push {
    /// The topic as 32 lowercase hex characters (Web Push `Topic`,
    /// `apns-collapse-id`, FCM `collapse_key`).
    #[must_use]
    pub fn topic_hex(&self) -> Option<String> {
        self.topic.map(|t| data_encoding::HEXLOWER.encode(&t))
    }
}

impl std::fmt::Debug for Push {
    /// Never shows the blob.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push")
            .field("urgency", &self.urgency)
            .field("topic", &self.topic.is_some())
            .field("blob_len", &self.blob.len())
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// How urgent a push is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Urgency {
    /// `very-low`.
    VeryLow,
    /// `low`.
    Low,
    /// `normal`.
    Normal,
    /// `high`.
    High,
}

impl Urgency {
    /// The RFC 8030 header value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

impl From<tandem_proto::frame::Urgency> for Urgency {
    fn from(u: tandem_proto::frame::Urgency) -> Self {
        use tandem_proto::frame::Urgency as U;
        match u {
            U::VeryLow => Urgency::VeryLow,
            U::Low => Urgency::Low,
            U::Normal => Urgency::Normal,
            U::High => Urgency::High,
        }
    }
}

/// Why a push was not sent.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The subscription is gone (404/410, `Unregistered`): remove it.
    #[error("the subscription is gone")]
    Gone,
    /// The push service refused this push (another 4xx).
    #[error("refused: {0}")]
    Rejected(String),
    /// The push service could not be reached or failed (5xx, network,
    /// timeout): retried later, once.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The Web Push push services' origins a subscription may name by default:
/// Chrome/Edge/Android (FCM), Firefox (Mozilla autopush), Safari (Apple),
/// Edge on Windows (WNS). `*.` matches any subdomain.
pub const DEFAULT_WEBPUSH_ORIGINS: &[&str] = &[
    "https://fcm.googleapis.com",
    "https://updates.push.services.mozilla.com",
    "https://web.push.apple.com",
    "https://*.notify.windows.com",
    "https://*.push.apple.com",
];

/// Push settings (`[push]` in the configuration file).
#[derive(Clone)]
#[non_exhaustive]
pub struct PushConfig {
    /// The VAPID `sub` claim: a `mailto:` or `https:` URI the push services
    /// may contact the operator at.
    pub vapid_subject: String,
    /// Where the VAPID key is kept (`None`: `vapid.key` in the data
    /// directory). Every node of a cluster needs the same key.
    pub vapid_key_file: Option<std::path::PathBuf>,
    /// The origins (`https://host[:port]`, `*.` for any subdomain) a Web
    /// Push endpoint may have; plain `http://` only when listed (tests).
    pub webpush_origins: Vec<String>,
    /// Pushes one device may get in a burst.
    pub burst: u32,
    /// Then one per this long.
    pub interval: Duration,
    /// Most pushes waiting for one device (past the rate); a `Notify`
    /// past it is refused with `rate_limited`.
    pub max_waiting: usize,
    /// The TTL given to the push services.
    pub ttl: Duration,
    /// Longest one request to a push service may take.
    pub timeout: Duration,
    /// A push that failed for want of the service is tried again once
    /// after this.
    pub retry_after: Duration,
    /// The APNs sender (configured by the operator; `None`: no APNs).
    pub apns: Option<Arc<dyn PushSender>>,
    /// The FCM sender (configured by the operator; `None`: no FCM).
    pub fcm: Option<Arc<dyn PushSender>>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            vapid_subject: "mailto:relay-operator@localhost".into(),
            vapid_key_file: None,
            webpush_origins: DEFAULT_WEBPUSH_ORIGINS.iter().map(|s| (*s).to_owned()).collect(),
            burst: 10,
            interval: Duration::from_secs(3),
            max_waiting: 32,
            ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(10),
            apns: None,
            fcm: None,
        }
    }
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("vapid_subject", &self.vapid_subject)
            .field("webpush_origins", &self.webpush_origins)
            .field("burst", &self.burst)
            .field("interval", &self.interval)
            .field("max_waiting", &self.max_waiting)
            .field("apns", &self.apns.is_some())
            .field("fcm", &self.fcm.is_some())
            .finish_non_exhaustive()
    }
}

impl PushConfig {
    /// Whether a Web Push endpoint's origin is one the relay sends to.
    #[must_use]
    pub fn origin_allowed(&self, endpoint: &str) -> bool {
        let Ok(uri) = endpoint.parse::<http::Uri>() else { return false };
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else { return false };
        let host = host.to_ascii_lowercase();
        let origin = match uri.port_u16() {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        self.webpush_origins.iter().any(|allowed| {
            let allowed = allowed.trim_end_matches('/').to_ascii_lowercase();
            match allowed.split_once("://*.") {
                Some((s, suffix)) => {
                    uri.port_u16().is_none()
                        && s == scheme
                        && host.len() > suffix.len() + 1
                        && host.ends_with(&format!(".{suffix}"))
                }
                None => allowed == origin,
            }
        })
    }

    /// The sender for a subscription kind, if one is configured (Web Push
    /// is given: it needs only the VAPID key).
    pub(crate) fn sender_for(&self, kind: &str) -> Option<&Arc<dyn PushSender>> {
        match kind {
            "apns" => self.apns.as_ref(),
            "fcm" => self.fcm.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let mut c = PushConfig::default();
        assert!(c.origin_allowed("https://fcm.googleapis.com/fcm/send/abc"));
        assert!(c.origin_allowed("https://wns2-by3p.notify.windows.com/w/?token=x"));
        assert!(!c.origin_allowed("https://notify.windows.com/w"));
        assert!(!c.origin_allowed("https://evil.example/fcm.googleapis.com"));
        assert!(!c.origin_allowed("https://fcm.googleapis.com.evil.example/x"));
        assert!(!c.origin_allowed("http://fcm.googleapis.com/x"));
        assert!(!c.origin_allowed("https://fcm.googleapis.com:8443/x"));
        assert!(!c.origin_allowed("http://127.0.0.1:9000/push/1"));
        c.webpush_origins.push("http://127.0.0.1:9000".into());
        assert!(c.origin_allowed("http://127.0.0.1:9000/push/1"));
        assert!(!c.origin_allowed("http://127.0.0.1:9001/push/1"));
        assert!(!c.origin_allowed("not a url"));
    }

    #[test]
    fn origin_tricks_do_not_reach_another_host() {
        // SSRF probes: whatever the allow-list says yes to must be the
        // host the client connects to (both read `http::Uri::host`).
        let c = PushConfig::default();
        for e in [
            "https://fcm.googleapis.com@127.0.0.1/x",
            "https://fcm.googleapis.com:443@127.0.0.1/x",
            "https://127.0.0.1#@fcm.googleapis.com/x",
            "https://127.0.0.1?@fcm.googleapis.com/x",
            "https://127.0.0.1\\@fcm.googleapis.com/x",
            "https://fcm.googleapis.com%2f@127.0.0.1/x",
            "https://[::1]/fcm.googleapis.com",
            "https://FCM.googleapis.com.:443/x",
            "https://x.notify.windows.com:8080/x",
            "https://.notify.windows.com/x",
            "https://evil.com/.notify.windows.com",
            "HTTPS://fcm.googleapis.com@localhost/x",
        ] {
            let host = e.parse::<http::Uri>().ok().and_then(|u| u.host().map(str::to_owned));
            let allowed = c.origin_allowed(e);
            assert!(
                !allowed
                    || host
                        .as_deref()
                        .is_some_and(|h| h.eq_ignore_ascii_case("fcm.googleapis.com")
                            || h.ends_with(".notify.windows.com")),
                "{e} allowed with host {host:?}"
            );
        }
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = Subscription::WebPush {
            endpoint: "https://push.example/secret-path".into(),
            p256dh: [4; 65],
            auth: [1; 16],
        };
        assert_eq!(format!("{s:?}"), "WebPush(push.example)");
        let p = Push {
            urgency: Urgency::High,
            topic: Some([0xab; 16]),
            blob: bytes::Bytes::from_static(b"canary"),
            ttl_secs: 60,
        };
        assert!(!format!("{p:?}").contains("canary"));
        assert_eq!(p.topic_hex().unwrap(), "ab".repeat(16));
    }
}
