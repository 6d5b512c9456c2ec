//! The FCM sender: Firebase Cloud Messaging's HTTP v1 API with a service
//! account.
//!
//! An OAuth2 access token comes from the service account's `token_uri`
//! (an RS256 JWT assertion, RFC 7523 `jwt-bearer` grant, scope
//! `firebase.messaging`) and is kept until 60 s before it expires; a 401
//! from FCM fetches a new one and tries once more. Each push is a
//! data-only message (`{"t": <base64 blob>}`) with the Android priority,
//! collapse key and TTL: Google sees the registration token and the opaque
//! blob, nothing else; the app's messaging service opens the blob.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use data_encoding::{BASE64, HEXLOWER};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::debug;

use super::h2client::{Answer, HttpsClient, Response, post_authorized};
use super::jwt::{JwtKey, unix_now};
use super::native_config::{DEFAULT_TIMEOUT, FcmConfig, NativeSetupError};
use super::{Push, PushError, PushSender, Subscription, Urgency};

/// The OAuth2 scope for sending messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The OAuth2 grant type of a JWT assertion (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// An access token is not used in its last minute.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The longest an access token is kept, whatever the token endpoint says.
const MAX_TOKEN_LIFETIME: u64 = 24 * 3600;
/// How long the assertion is valid (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;
/// FCM's limit on a message's data payload.
pub const MAX_DATA: usize = 4096;

/// Sends pushes through FCM (see the module docs).
pub struct FcmSender {
    http: HttpsClient,
    oauth: HttpsClient,
    /// `/v1/projects/<project>/messages:send`.
    send_path: String,
    client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    key: JwtKey,
    access: Mutex<Option<AccessToken>>,
}

/// An OAuth2 access token and when to stop using it.
struct AccessToken {
    value: String,
    good_until: Instant,
}

/// The fields of Google's service account JSON that are used.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

#[derive(Serialize)]
struct AssertionHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

#[derive(Serialize)]
struct SendBody<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    data: Data,
    android: Android,
}

#[derive(Serialize)]
struct Data {
    t: String,
}

#[derive(Serialize)]
struct Android {
    priority: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    collapse_key: Option<String>,
    ttl: String,
}

#[derive(Deserialize, Default)]
struct ErrorAnswer {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
}

impl FcmSender {
    /// A sender for `cfg`: reads the service account and checks its key.
    ///
    /// # Errors
    /// The file cannot be read, is not a service account JSON with an RSA
    /// PKCS#8 key and an https `token_uri`, the project id is not plain,
    /// the endpoint is not an https URL, or the extra root is unusable.
    pub fn new(cfg: FcmConfig) -> Result<Self, NativeSetupError> {
        let path = &cfg.service_account_file;
        let text = std::fs::read(path)
            .map_err(|source| NativeSetupError::Read { path: path.clone(), source })?;
        let invalid =
            |reason: String| NativeSetupError::ServiceAccount { path: path.clone(), reason };
        let account: ServiceAccount =
            serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        let key = JwtKey::rs256_from_pem(account.private_key.as_bytes())
            .map_err(|e| invalid(format!("private_key: {e}")))?;
        let plain = |c: char| c.is_ascii_alphanumeric() || "-._:".contains(c);
        if account.project_id.is_empty() || !account.project_id.chars().all(plain) {
            return Err(invalid("project_id: letters, digits, '-', '.', '_', ':' only".into()));
        }
        if account.client_email.is_empty() {
            return Err(invalid("client_email is empty".into()));
        }
        let oauth = HttpsClient::new(&account.token_uri, cfg.ca_file.as_deref(), DEFAULT_TIMEOUT)
            .map_err(|e| invalid(format!("token_uri: {e}")))?;
        let http = HttpsClient::new(&cfg.endpoint, cfg.ca_file.as_deref(), DEFAULT_TIMEOUT)
            .map_err(|e| NativeSetupError::Invalid(format!("fcm: {e}")))?;
        let sender = Self {
            http,
            oauth,
            send_path: format!("/v1/projects/{}/messages:send", account.project_id),
            client_email: account.client_email,
            private_key_id: account.private_key_id.filter(|id| !id.is_empty()),
            token_uri: account.token_uri,
            key,
            access: Mutex::new(None),
        };
        sender.assertion().map_err(|e| invalid(format!("private_key: {e}")))?;
        Ok(sender)
    }

    /// The same sender giving up on one request (the token fetch or the
    /// send) after `timeout` (10 s by default).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http.set_timeout(timeout);
        self.oauth.set_timeout(timeout);
        self
    }

    /// The signed assertion for the token endpoint.
    fn assertion(&self) -> Result<String, PushError> {
        let iat = unix_now();
        self.key
            .sign(
                &AssertionHeader { alg: "RS256", typ: "JWT", kid: self.private_key_id.as_deref() },
                &AssertionClaims {
                    iss: &self.client_email,
                    scope: SCOPE,
                    aud: &self.token_uri,
                    iat,
                    exp: iat + ASSERTION_LIFETIME,
                },
            )
            .map_err(|e| PushError::Rejected(format!("fcm assertion: {e}")))
    }

    /// A usable access token: the kept one unless it is near expiry or is
    /// `stale` (refused by FCM), else a new one from the token endpoint.
    async fn access_token(&self, stale: Option<&str>) -> Result<String, PushError> {
        let mut kept = self.access.lock().await;
        if let Some(token) = kept.as_ref()
            && Instant::now() < token.good_until
            && stale != Some(token.value.as_str())
        {
            return Ok(token.value.clone());
        }
        *kept = None;
        let form =
            format!("grant_type={}&assertion={}", form_encode(GRANT_TYPE), self.assertion()?);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let response = self
            .oauth
            .post("", &headers, Bytes::from(form))
            .await
            .map_err(|e| PushError::Unavailable(format!("fcm token: {e}")))?;
        let status = response.status;
        if status != StatusCode::OK {
            let described = format!("fcm token endpoint answered {}", status.as_u16());
            debug!(host = self.oauth.host(), %status, "FCM access token refused");
            return Err(if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                PushError::Rejected(described)
            } else {
                PushError::Unavailable(described)
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&response.body)
            .map_err(|_| PushError::Unavailable("fcm token endpoint: unreadable answer".into()))?;
        if answer.access_token.is_empty() || HeaderValue::from_str(&answer.access_token).is_err() {
            return Err(PushError::Unavailable("fcm token endpoint: unusable token".into()));
        }
        // Google's tokens last an hour; a longer claim is not believed.
        let lifetime = Duration::from_secs(answer.expires_in.min(MAX_TOKEN_LIFETIME))
            .saturating_sub(EXPIRY_MARGIN);
        let now = Instant::now();
        *kept = Some(AccessToken {
            value: answer.access_token.clone(),
            good_until: now.checked_add(lifetime).unwrap_or(now),
        });
        Ok(answer.access_token)
    }

    async fn send_fcm(&self, registration: &str, push: &Push) -> Result<(), PushError> {
        if registration.is_empty() {
            return Err(PushError::Rejected("empty FCM registration token".into()));
        }
        let body = message(registration, push)?;
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let token = self.access_token(None).await?;
        let renew = move |refused: String| async move { self.access_token(Some(&refused)).await };
        let path = &self.send_path;
        post_authorized(&self.http, path, headers, body, "Bearer", token, outcome, renew).await
    }
}

impl PushSender for FcmSender {
    fn send<'a>(
        &'a self,
        sub: &'a Subscription,
        push: &'a Push,
    ) -> Pin<Box<dyn Future<Output = Result<(), PushError>> + Send + 'a>> {
        Box::pin(async move {
            match sub {
                Subscription::Fcm { token } => self.send_fcm(token, push).await,
                _ => Err(PushError::Rejected("not an FCM subscription".into())),
            }
        })
    }
}

/// The data-only message's JSON.
fn message(registration: &str, push: &Push) -> Result<Bytes, PushError> {
    let t = BASE64.encode(&push.blob);
    // keys plus values, as FCM counts the data payload
    if t.len() + 1 > MAX_DATA {
        return Err(PushError::Rejected(format!(
            "FCM data of {} bytes over {MAX_DATA}",
            t.len() + 1
        )));
    }
    let priority = if matches!(push.urgency, Urgency::High) { "high" } else { "normal" };
    let body = SendBody {
        message: Message {
            token: registration,
            data: Data { t },
            android: Android {
                priority,
                collapse_key: push.topic.map(|topic| HEXLOWER.encode(&topic)),
                ttl: format!("{}s", push.ttl_secs),
            },
        },
    };
    serde_json::to_vec(&body).map(Bytes::from).map_err(|e| PushError::Rejected(e.to_string()))
}

/// `application/x-www-form-urlencoded` for a value of URL-safe ASCII plus
/// `:` (the grant type); the assertion is base64url and dots already.
fn form_encode(value: &str) -> String {
    value.replace(':', "%3A")
}

/// What FCM's answer means: 200 sent; 404 or `UNREGISTERED` gone; 401
/// unauthorized; 429 and 5xx unavailable; other 4xx rejected.
fn outcome(response: &Response) -> Answer {
    let status = response.status;
    if status == StatusCode::OK {
        return Answer::Done(Ok(()));
    }
    let answer = serde_json::from_slice::<ErrorAnswer>(&response.body).unwrap_or_default();
    let code = answer.error.details.iter().find_map(|d| d.error_code.clone());
    let code: String = code
        .unwrap_or(answer.error.status)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    let described = format!("{} {code}", status.as_u16());
    Answer::Done(Err(match status.as_u16() {
        404 => PushError::Gone,
        _ if code == "UNREGISTERED" => PushError::Gone,
        401 => return Answer::Refused("401 UNAUTHENTICATED"),
        429 | 500..=599 => PushError::Unavailable(described),
        400..=499 => PushError::Rejected(described),
        _ => PushError::Unavailable(format!("unexpected answer {described}")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Option<Result<(), PushError>> {
        match outcome(&Response {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_owned()),
        }) {
            Answer::Done(result) => Some(result),
            Answer::Refused(_) => None,
        }
    }

    #[test]
    fn answers_map_to_errors() {
        let unregistered = r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[
            {"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert!(matches!(answer(200, "{}"), Some(Ok(()))));
        assert!(matches!(answer(404, ""), Some(Err(PushError::Gone))));
        assert!(matches!(answer(400, unregistered), Some(Err(PushError::Gone))));
        assert!(answer(401, "").is_none());
        assert!(matches!(answer(400, r#"{"error":{"status":"INVALID_ARGUMENT"}}"#),
            Some(Err(PushError::Rejected(r))) if r == "400 INVALID_ARGUMENT"));
        assert!(matches!(answer(403, "<html>"), Some(Err(PushError::Rejected(_)))));
        assert!(matches!(answer(429, ""), Some(Err(PushError::Unavailable(_)))));
        assert!(matches!(answer(500, ""), Some(Err(PushError::Unavailable(_)))));
    }

    #[test]
    fn the_message_is_data_only() {
        let push = Push {
            urgency: Urgency::Normal,
            topic: Some([0xab; 16]),
            blob: Bytes::from_static(b"\x01sealed"),
            ttl_secs: 60,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&message("tok", &push).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"message": {"token": "tok", "data": {"t": "AXNlYWxlZA=="},
                "android": {"priority": "normal", "collapse_key": "ab".repeat(16), "ttl": "60s"}}})
        );
        let big = Push { blob: Bytes::from(vec![0u8; 3072]), ..push };
        assert!(matches!(message("tok", &big), Err(PushError::Rejected(_))));
    }
}
