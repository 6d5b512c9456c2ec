//! The APNs sender: Apple's HTTP/2 provider API with token-based
//! authentication.
//!
//! `POST {endpoint}/3/device/<hex token>` with an ES256 provider token
//! (`kid` = key id, `iss` = team id, `iat`), made anew every 50 minutes
//! (Apple refuses tokens older than an hour and more than one new token
//! every 20 minutes). The body is a placeholder alert with
//! `mutable-content` and the sealed blob in `"t"`, for the app's
//! Notification Service Extension to open: Apple sees the device token and
//! the opaque blob, nothing else.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use data_encoding::{BASE64, HEXLOWER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::h2client::{Answer, HttpsClient, Response, post_authorized};
use super::jwt::{JwtKey, unix_now};
use super::native_config::{ApnsConfig, DEFAULT_TIMEOUT, NativeSetupError};
use super::{Push, PushError, PushSender, Subscription, Urgency};

/// A provider token is used this long, then a new one is made.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);
/// A token Apple calls expired is remade at most this often (Apple refuses
/// more than one new token every 20 minutes).
const FORCED_REFRESH_EVERY: Duration = Duration::from_secs(20 * 60);
/// APNs' limit on a notification's payload.
pub const MAX_PAYLOAD: usize = 4096;
/// The placeholder alert's title (the extension replaces it).
pub const PLACEHOLDER_TITLE: &str = "Tandem";
/// The placeholder alert's body.
pub const PLACEHOLDER_BODY: &str = "New activity";

/// Sends pushes through APNs (see the module docs).
pub struct ApnsSender {
    http: HttpsClient,
    key: JwtKey,
    key_id: String,
    team_id: String,
    topic: HeaderValue,
    token: Mutex<TokenState>,
}

/// The provider token in use.
#[derive(Default)]
struct TokenState {
    current: Option<(String, Instant)>,
    last_forced: Option<Instant>,
}

#[derive(Serialize)]
struct JwtHeader<'a> {
    alg: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    iat: u64,
}

#[derive(Serialize)]
struct Payload<'a> {
    aps: Aps<'a>,
    t: &'a str,
}

#[derive(Serialize)]
struct Aps<'a> {
    alert: Alert<'a>,
    #[serde(rename = "mutable-content")]
    mutable_content: u8,
}

#[derive(Serialize)]
struct Alert<'a> {
    title: &'a str,
    body: &'a str,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    reason: String,
}

impl ApnsSender {
    /// A sender for `cfg`: reads and checks the key (by signing a token).
    ///
    /// # Errors
    /// The key file cannot be read or holds no P-256 PKCS#8 key with its
    /// public key, an id or the topic is empty or not header-safe, the
    /// endpoint is not an https URL, or the extra root is unusable.
    pub fn new(cfg: ApnsConfig) -> Result<Self, NativeSetupError> {
        let pem = std::fs::read(&cfg.key_file)
            .map_err(|source| NativeSetupError::Read { path: cfg.key_file.clone(), source })?;
        let key = JwtKey::es256_from_pem(&pem).map_err(|e| NativeSetupError::Key {
            path: cfg.key_file.clone(),
            reason: e.to_string(),
        })?;
        for (name, value) in
            [("key_id", &cfg.key_id), ("team_id", &cfg.team_id), ("topic", &cfg.topic)]
        {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(NativeSetupError::Invalid(format!(
                    "apns {name}: must be non-empty printable ASCII without spaces"
                )));
            }
        }
        let topic = HeaderValue::from_str(&cfg.topic)
            .map_err(|_| NativeSetupError::Invalid("apns topic: not a header value".into()))?;
        let http = HttpsClient::new(&cfg.endpoint, cfg.ca_file.as_deref(), DEFAULT_TIMEOUT)
            .map_err(|e| NativeSetupError::Invalid(format!("apns: {e}")))?;
        let sender = Self {
            http,
            key,
            key_id: cfg.key_id,
            team_id: cfg.team_id,
            topic,
            token: Mutex::new(TokenState::default()),
        };
        sender
            .provider_token(Instant::now(), None)
            .map_err(|e| NativeSetupError::Key { path: cfg.key_file, reason: e.to_string() })?;
        Ok(sender)
    }

    /// The same sender giving up on one request after `timeout` (10 s by
    /// default).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http.set_timeout(timeout);
        self
    }

    /// The token to use at `now`: the current one while younger than
    /// [`TOKEN_LIFETIME`], else a new one. With `refused` (a token APNs
    /// called expired): the current one if it is another (made since), else
    /// a new one, unless one was forced so less than 20 minutes ago (then
    /// `None`).
    fn provider_token(
        &self,
        now: Instant,
        refused: Option<&str>,
    ) -> Result<Option<String>, PushError> {
        let mut state = self.token.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(refused) = refused {
            if let Some((token, _)) = &state.current
                && token != refused
            {
                return Ok(Some(token.clone()));
            }
            if state.last_forced.is_some_and(|at| now.duration_since(at) < FORCED_REFRESH_EVERY) {
                return Ok(None);
            }
            state.last_forced = Some(now);
        } else if let Some((token, made)) = &state.current
            && now.duration_since(*made) < TOKEN_LIFETIME
        {
            return Ok(Some(token.clone()));
        }
        let token = self
            .key
            .sign(
                &JwtHeader { alg: "ES256", kid: &self.key_id },
                &JwtClaims { iss: &self.team_id, iat: unix_now() },
            )
            .map_err(|e| PushError::Rejected(format!("apns provider token: {e}")))?;
        state.current = Some((token.clone(), now));
        Ok(Some(token))
    }

    async fn send_apns(&self, device: &[u8], push: &Push) -> Result<(), PushError> {
        if device.is_empty() {
            return Err(PushError::Rejected("empty APNs device token".into()));
        }
        let path = format!("/3/device/{}", HEXLOWER.encode(device));
        let body = payload(&push.blob)?;
        let token = self
            .provider_token(Instant::now(), None)?
            .ok_or_else(|| PushError::Rejected("no APNs provider token".into()))?;
        let renew = move |refused: String| async move {
            self.provider_token(Instant::now(), Some(&refused))?
                .ok_or_else(|| PushError::Rejected("403 ExpiredProviderToken".into()))
        };
        let headers = headers(push, &self.topic);
        post_authorized(&self.http, &path, headers, body, "bearer", token, outcome, renew).await
    }
}

impl PushSender for ApnsSender {
    fn send<'a>(
        &'a self,
        sub: &'a Subscription,
        push: &'a Push,
    ) -> Pin<Box<dyn Future<Output = Result<(), PushError>> + Send + 'a>> {
        Box::pin(async move {
            match sub {
                Subscription::Apns { token } => self.send_apns(token, push).await,
                _ => Err(PushError::Rejected("not an APNs subscription".into())),
            }
        })
    }
}

/// The notification's JSON: the placeholder alert, `mutable-content`, the
/// blob in standard padded base64.
fn payload(blob: &[u8]) -> Result<Bytes, PushError> {
    let t = BASE64.encode(blob);
    let payload = Payload {
        aps: Aps {
            alert: Alert { title: PLACEHOLDER_TITLE, body: PLACEHOLDER_BODY },
            mutable_content: 1,
        },
        t: &t,
    };
    let json = serde_json::to_vec(&payload).map_err(|e| PushError::Rejected(e.to_string()))?;
    if json.len() > MAX_PAYLOAD {
        return Err(PushError::Rejected(format!(
            "APNs payload of {} bytes over {MAX_PAYLOAD}",
            json.len()
        )));
    }
    Ok(Bytes::from(json))
}

/// Every header but `authorization`.
fn headers(push: &Push, topic: &HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: HeaderValue| {
        headers.insert(HeaderName::from_static(name), value);
    };
    put("apns-push-type", HeaderValue::from_static("alert"));
    put("apns-topic", topic.clone());
    let priority = if matches!(push.urgency, Urgency::High) { "10" } else { "5" };
    put("apns-priority", HeaderValue::from_static(priority));
    // 0: deliver now or never; else a Unix time to give up at.
    let expiration =
        if push.ttl_secs == 0 { 0 } else { unix_now().saturating_add(u64::from(push.ttl_secs)) };
    put("apns-expiration", HeaderValue::from(expiration));
    if let Some(topic) = push.topic
        && let Ok(value) = HeaderValue::try_from(HEXLOWER.encode(&topic))
    {
        put("apns-collapse-id", value);
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

/// What APNs' answer means: 200 sent; 410, `Unregistered`, 400
/// `BadDeviceToken` gone; 429 and 5xx unavailable; other 4xx rejected.
fn outcome(response: &Response) -> Answer {
    let status = response.status;
    if status == StatusCode::OK {
        return Answer::Done(Ok(()));
    }
    let reason = serde_json::from_slice::<ErrorBody>(&response.body).unwrap_or_default().reason;
    let reason: String = reason.chars().filter(char::is_ascii_alphanumeric).take(64).collect();
    let described = format!("{} {reason}", status.as_u16());
    Answer::Done(Err(match status.as_u16() {
        410 => PushError::Gone,
        _ if reason == "Unregistered" => PushError::Gone,
        400 if reason == "BadDeviceToken" => PushError::Gone,
        403 if reason == "ExpiredProviderToken" => {
            return Answer::Refused("403 ExpiredProviderToken");
        }
        429 | 500..=599 => PushError::Unavailable(described),
        400..=499 => PushError::Rejected(described),
        _ => PushError::Unavailable(format!("unexpected answer {described}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::native_config::ApnsConfig;

    fn sender() -> (ApnsSender, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let path = dir.path().join("AuthKey_ABC123DEFG.p8");
        std::fs::write(&path, pair.serialize_pem()).unwrap();
        let cfg = ApnsConfig::new(path, "ABC123DEFG", "TEAM123456", "com.example.tandem");
        (ApnsSender::new(cfg).unwrap(), dir)
    }

    #[test]
    fn the_provider_token_is_reused_for_50_minutes_then_remade() {
        let (sender, _dir) = sender();
        let t0 = Instant::now();
        let first = sender.provider_token(t0, None).unwrap().unwrap();
        let later = sender.provider_token(t0 + Duration::from_secs(49 * 60), None).unwrap();
        assert_eq!(later.as_deref(), Some(first.as_str()));
        let t1 = t0 + Duration::from_secs(50 * 60 + 1);
        let renewed = sender.provider_token(t1, None).unwrap().unwrap();
        assert_ne!(renewed, first);
        assert_eq!(sender.provider_token(t1, None).unwrap().as_deref(), Some(renewed.as_str()));
    }

    #[test]
    fn a_refused_token_is_remade_at_most_every_20_minutes() {
        let (sender, _dir) = sender();
        let t0 = Instant::now();
        let first = sender.provider_token(t0, None).unwrap().unwrap();
        let forced = sender.provider_token(t0, Some(&first)).unwrap().unwrap();
        assert_ne!(forced, first);
        // a push refused with the old token meanwhile gets the new one
        assert_eq!(sender.provider_token(t0, Some(&first)).unwrap(), Some(forced.clone()));
        let t1 = t0 + Duration::from_secs(19 * 60);
        assert_eq!(sender.provider_token(t1, Some(&forced)).unwrap(), None);
        let t2 = t0 + Duration::from_secs(21 * 60);
        assert!(sender.provider_token(t2, Some(&forced)).unwrap().is_some());
    }

    #[test]
    fn an_oversized_blob_is_refused_before_sending() {
        assert!(payload(&[0u8; 2097]).is_ok());
        assert!(matches!(payload(&[0u8; 3072]), Err(PushError::Rejected(_))));
    }

    #[test]
    fn answers_map_to_errors() {
        let answer = |status: u16, body: &str| match outcome(&Response {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_owned()),
        }) {
            Answer::Done(result) => Some(result),
            Answer::Refused(_) => None,
        };
        assert!(matches!(answer(200, ""), Some(Ok(()))));
        assert!(matches!(answer(410, r#"{"reason":"Unregistered"}"#), Some(Err(PushError::Gone))));
        assert!(matches!(
            answer(400, r#"{"reason":"BadDeviceToken"}"#),
            Some(Err(PushError::Gone))
        ));
        assert!(
            matches!(answer(400, r#"{"reason":"BadTopic"}"#), Some(Err(PushError::Rejected(r))) if r == "400 BadTopic")
        );
        assert!(matches!(answer(413, "not json"), Some(Err(PushError::Rejected(_)))));
        assert!(matches!(answer(429, ""), Some(Err(PushError::Unavailable(_)))));
        assert!(matches!(answer(503, ""), Some(Err(PushError::Unavailable(_)))));
        assert!(answer(403, r#"{"reason":"ExpiredProviderToken"}"#).is_none());
        assert!(matches!(
            answer(403, r#"{"reason":"InvalidProviderToken"}"#),
            Some(Err(PushError::Rejected(_)))
        ));
        // a reason is cut to letters and digits
        assert!(
            matches!(answer(400, r#"{"reason":"Bad\nLine\u001b"}"#), Some(Err(PushError::Rejected(r))) if r == "400 BadLine")
        );
    }
}
