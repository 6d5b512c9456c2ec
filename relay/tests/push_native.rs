//! The APNs and FCM senders against local HTTP/2 servers.
//!
//! STAND-INS: the servers started here play Apple's APNs provider API and
//! Google's FCM HTTP v1 API and OAuth2 token endpoint. This is the only place
//! the project accepts a stand-in for a platform service (the real ones need
//! Apple's and Google's credentials and devices). They are real HTTP/2
//! servers (hyper, rustls with ring, ALPN `h2`, a self-signed rcgen
//! certificate the senders trust through their tests-only `ca_file`) and
//! check what the real services check and document: method, path,
//! `:authority`, every required header, the JWT's signature (with ring and
//! the test's public key) and claims, the payload's shape (nothing but the
//! placeholder and the blob, which decodes to the bytes sent). The keys are
//! made by the tests (rcgen for P-256; the `rsa` crate for the service
//! account's RSA key, which ring cannot generate).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use data_encoding::{BASE64, BASE64URL_NOPAD, HEXLOWER};
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tandem_relay::push::apns::ApnsSender;
use tandem_relay::push::fcm::{FcmSender, GRANT_TYPE, SCOPE};
use tandem_relay::push::native_config::{ApnsConfig, FcmConfig, NativeSetupError};
use tandem_relay::push::{Push, PushError, PushSender, Subscription, Urgency};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

// ---------------------------------------------------------------------------
// The stand-in server

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    scheme: Option<String>,
    authority: Option<String>,
    path: String,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the stand-in answers.
enum Reply {
    Json(u16, Value),
    Hang,
}

/// The stand-in's certificate (trusted by the senders through `ca_file`).
struct Cert {
    config: Arc<rustls::ServerConfig>,
    ca: PathBuf,
    _dir: TempDir,
}

fn cert() -> Cert {
    cert_for(b"h2")
}

/// A certificate for a server that speaks only `alpn`.
fn cert_for(alpn: &[u8]) -> Cert {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, made.cert.pem()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    Cert { config: Arc::new(config), ca, _dir: dir }
}

/// A running stand-in: HTTP/2, or HTTP/1.1 when the certificate's
/// configuration offers only that (a client that negotiates neither is
/// dropped).
struct Stand {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Stand {
    /// Serve on 127.0.0.1:`port` (0: any) with `handler`.
    async fn start(
        cert: &Cert,
        port: u16,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Stand {
        Self::start_with(cert, port, false, handler).await
    }

    /// `goaway`: every HTTP/2 connection is shut down gracefully (GOAWAY)
    /// as soon as its first request arrives, as APNs does now and then.
    async fn start_with(
        cert: &Cert,
        port: u16,
        goaway: bool,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Stand {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(cert.config.clone());
        let handler = Arc::new(handler);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen2, connections2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            // dropped with this task: aborting it closes every connection
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                connections2.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handler, seen) = (acceptor.clone(), handler.clone(), seen2.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    let served = Arc::new(tokio::sync::Notify::new());
                    let served2 = served.clone();
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (handler, seen) = (handler.clone(), seen.clone());
                        served2.notify_one();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let request = Seen {
                                method: parts.method,
                                scheme: parts.uri.scheme_str().map(str::to_owned),
                                authority: parts.uri.authority().map(ToString::to_string),
                                path: parts.uri.path_and_query().unwrap().to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            let reply = handler(&request);
                            seen.lock().unwrap().push(request);
                            let (status, json) = match reply {
                                Reply::Json(status, json) => (status, json),
                                Reply::Hang => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    (500, Value::Null)
                                }
                            };
                            let response = Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(json.to_string())))
                                .unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let io = TokioIo::new(tls);
                    match alpn.as_deref() {
                        Some(b"h2") => {
                            let builder =
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                            let conn = builder.serve_connection(io, service);
                            tokio::pin!(conn);
                            if goaway {
                                tokio::select! {
                                    _ = conn.as_mut() => return,
                                    () = served.notified() => conn.as_mut().graceful_shutdown(),
                                }
                            }
                            let _ = conn.await;
                        }
                        Some(b"http/1.1") => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        }
                        _ => {}
                    }
                });
            }
        });
        Stand { addr, seen, connections, task }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    fn authority(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stop serving and close every connection.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// Helpers

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn random_blob(len: usize) -> Bytes {
    Bytes::from((0..len).map(|_| rand::random::<u8>()).collect::<Vec<u8>>())
}

fn push(urgency: Urgency, topic: Option<[u8; 16]>, blob: &Bytes, ttl_secs: u32) -> Push {
    Push { urgency, topic, blob: blob.clone(), ttl_secs }
}

/// A compact JWT's header, claims, signed part and signature.
fn jwt(token: &str) -> (Value, Value, String, Vec<u8>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS has three parts");
    let decode = |s: &str| BASE64URL_NOPAD.decode(s.as_bytes()).unwrap();
    (
        serde_json::from_slice(&decode(parts[0])).unwrap(),
        serde_json::from_slice(&decode(parts[1])).unwrap(),
        format!("{}.{}", parts[0], parts[1]),
        decode(parts[2]),
    )
}

fn assert_near_now(value: &Value) {
    let t = value.as_u64().unwrap();
    assert!(t.abs_diff(now()) < 60, "{t} is not now");
}

// ---------------------------------------------------------------------------
// APNs

const KEY_ID: &str = "ABC123DEFG";
const TEAM_ID: &str = "DEF123GHIJ";
const BUNDLE: &str = "dev.tandem.app";

/// An APNs key (the `.p8` file) and its public key.
struct ApnsKey {
    file: PathBuf,
    public: Vec<u8>,
    _dir: TempDir,
}

fn apns_key() -> ApnsKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("AuthKey_{KEY_ID}.p8"));
    std::fs::write(&file, pair.serialize_pem()).unwrap();
    ApnsKey { file, public: pair.public_key_raw().to_vec(), _dir: dir }
}

fn apns_config(key: &ApnsKey, endpoint: String, ca: Option<&Path>) -> ApnsConfig {
    let mut cfg = ApnsConfig::new(&key.file, KEY_ID, TEAM_ID, BUNDLE);
    cfg.endpoint = endpoint;
    cfg.ca_file = ca.map(Path::to_owned);
    cfg
}

/// Checks the provider token the way APNs does; returns it.
fn check_provider_token(seen: &Seen, public: &[u8]) -> String {
    let auth = seen.header("authorization").unwrap();
    let token = auth.strip_prefix("bearer ").unwrap();
    let (header, claims, signed, sig) = jwt(token);
    assert_eq!(header, json!({"alg": "ES256", "kid": KEY_ID}));
    assert_eq!(claims.as_object().unwrap().len(), 2, "{claims}");
    assert_eq!(claims["iss"], TEAM_ID);
    assert_near_now(&claims["iat"]);
    let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public);
    key.verify(signed.as_bytes(), &sig).unwrap();
    // the check would catch a forgery
    assert!(key.verify(format!("{signed}x").as_bytes(), &sig).is_err());
    token.to_owned()
}

/// Checks the payload: the placeholder and the blob, nothing else.
fn check_apns_payload(seen: &Seen, blob: &[u8]) {
    let body = seen.json();
    let t = body["t"].as_str().unwrap();
    assert_eq!(BASE64.decode(t.as_bytes()).unwrap(), blob);
    assert_eq!(
        body,
        json!({"aps": {"alert": {"title": "Tandem", "body": "New activity"}, "mutable-content": 1},
               "t": t})
    );
}

#[tokio::test]
async fn apns_request_follows_apples_provider_api() {
    let cert = cert();
    let stand = Stand::start(&cert, 0, |_| Reply::Json(200, json!({}))).await;
    let key = apns_key();
    let sender = ApnsSender::new(apns_config(&key, stand.url(), Some(&cert.ca))).unwrap();
    let device = random_blob(32);
    let sub = Subscription::Apns { token: device.to_vec() };

    let blob = random_blob(2097);
    let topic = [0x5a; 16];
    sender.send(&sub, &push(Urgency::High, Some(topic), &blob, 3600)).await.unwrap();
    let blob2 = random_blob(1);
    sender.send(&sub, &push(Urgency::Normal, None, &blob2, 0)).await.unwrap();

    let seen = stand.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.scheme.as_deref(), Some("https"));
        assert_eq!(s.authority.as_deref(), Some(stand.authority().as_str()));
        assert_eq!(s.path, format!("/3/device/{}", HEXLOWER.encode(&device)));
        assert_eq!(s.header("apns-push-type"), Some("alert"));
        assert_eq!(s.header("apns-topic"), Some(BUNDLE));
        assert_eq!(s.header("content-type"), Some("application/json"));
    }
    let (first, second) = (&seen[0], &seen[1]);
    assert_eq!(first.header("apns-priority"), Some("10"));
    assert_eq!(first.header("apns-collapse-id"), Some("5a".repeat(16).as_str()));
    let expiration: u64 = first.header("apns-expiration").unwrap().parse().unwrap();
    assert!(expiration.abs_diff(now() + 3600) < 60, "{expiration}");
    check_apns_payload(first, &blob);

    assert_eq!(second.header("apns-priority"), Some("5"));
    assert_eq!(second.header("apns-collapse-id"), None);
    assert_eq!(second.header("apns-expiration"), Some("0"));
    check_apns_payload(second, &blob2);

    // one provider token for both, one connection for both
    let token = check_provider_token(first, &key.public);
    assert_eq!(check_provider_token(second, &key.public), token);
    assert_eq!(stand.connections(), 1);

    // a subscription of another kind is not sent
    let other = Subscription::Fcm { token: "x".into() };
    let refused = sender.send(&other, &push(Urgency::High, None, &blob2, 0)).await;
    assert!(matches!(refused, Err(PushError::Rejected(_))), "{refused:?}");
    // nor a blob whose payload passes APNs' 4 KiB
    let refused = sender.send(&sub, &push(Urgency::High, None, &random_blob(3072), 0)).await;
    assert!(matches!(refused, Err(PushError::Rejected(_))), "{refused:?}");
    assert_eq!(stand.seen().len(), 2);
}

#[tokio::test]
async fn apns_answers_become_gone_rejected_or_unavailable() {
    let cert = cert();
    // the device token's first byte picks the answer
    let answers: Vec<(u16, &str)> = vec![
        (410, "Unregistered"),
        (400, "BadDeviceToken"),
        (400, "BadCollapseId"),
        (403, "InvalidProviderToken"),
        (413, "PayloadTooLarge"),
        (429, "TooManyRequests"),
        (500, "InternalServerError"),
        (503, "ServiceUnavailable"),
        (404, "BadPath"),
    ];
    let table = answers.clone();
    let stand = Stand::start(&cert, 0, move |seen| {
        let hex = seen.path.rsplit('/').next().unwrap();
        let index = HEXLOWER.decode(&hex.as_bytes()[..2]).unwrap()[0] as usize;
        let (status, reason) = table[index];
        Reply::Json(status, json!({"reason": reason}))
    })
    .await;
    let key = apns_key();
    let sender = ApnsSender::new(apns_config(&key, stand.url(), Some(&cert.ca))).unwrap();
    let blob = random_blob(100);
    let mut outcomes = Vec::new();
    for index in 0..answers.len() {
        let sub = Subscription::Apns { token: vec![index as u8, 1, 2, 3] };
        outcomes.push(sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await);
    }
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Ok(()) => "ok",
            Err(PushError::Gone) => "gone",
            Err(PushError::Rejected(_)) => "rejected",
            Err(PushError::Unavailable(_)) => "unavailable",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "gone",
            "gone",
            "rejected",
            "rejected",
            "rejected",
            "unavailable",
            "unavailable",
            "unavailable",
            "rejected"
        ]
    );
    // the reason is kept, the device token is not
    let Err(PushError::Rejected(reason)) = &outcomes[2] else { panic!() };
    assert_eq!(reason, "400 BadCollapseId");
    for outcome in &outcomes {
        if let Err(e) = outcome {
            assert!(!e.to_string().contains("00010203"), "{e}");
        }
    }
}

#[tokio::test]
async fn apns_expired_provider_token_is_remade_once() {
    let cert = cert();
    // first answer ExpiredProviderToken, the second 200; then mode 1:
    // ExpiredProviderToken always
    let calls = Arc::new(AtomicUsize::new(0));
    let always = Arc::new(AtomicUsize::new(0));
    let (calls2, always2) = (calls.clone(), always.clone());
    let stand = Stand::start(&cert, 0, move |_| {
        let n = calls2.fetch_add(1, Ordering::SeqCst);
        if n == 0 || always2.load(Ordering::SeqCst) == 1 {
            Reply::Json(403, json!({"reason": "ExpiredProviderToken"}))
        } else {
            Reply::Json(200, json!({}))
        }
    })
    .await;
    let key = apns_key();
    let sender = ApnsSender::new(apns_config(&key, stand.url(), Some(&cert.ca))).unwrap();
    let sub = Subscription::Apns { token: vec![7; 32] };
    let blob = random_blob(64);
    sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await.unwrap();
    let seen = stand.seen();
    assert_eq!(seen.len(), 2);
    let old = check_provider_token(&seen[0], &key.public);
    let new = check_provider_token(&seen[1], &key.public);
    assert_ne!(old, new, "a new token after ExpiredProviderToken");

    // Apple refuses a new token more often than every 20 minutes: the next
    // expired answer is not retried
    always.store(1, Ordering::SeqCst);
    let refused = sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await;
    assert!(matches!(&refused, Err(PushError::Rejected(r)) if r.contains("ExpiredProviderToken")));
    let seen = stand.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(check_provider_token(&seen[2], &key.public), new);
}

#[tokio::test]
async fn apns_network_failures_are_unavailable() {
    let cert = cert();
    let key = apns_key();
    let blob = random_blob(64);
    let sub = Subscription::Apns { token: vec![9; 32] };
    let p = push(Urgency::High, None, &blob, 60);

    // a server that never answers
    let hang = Stand::start(&cert, 0, |_| Reply::Hang).await;
    let sender = ApnsSender::new(apns_config(&key, hang.url(), Some(&cert.ca)))
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let result = sender.send(&sub, &p).await;
    assert!(matches!(&result, Err(PushError::Unavailable(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(hang.seen().len(), 1);

    // connection refused
    let port = dead_port().await;
    let sender =
        ApnsSender::new(apns_config(&key, format!("https://localhost:{port}"), Some(&cert.ca)))
            .unwrap();
    let result = sender.send(&sub, &p).await;
    assert!(
        matches!(&result, Err(PushError::Unavailable(e)) if e.contains("connect")),
        "{result:?}"
    );

    // a certificate the sender does not trust (no ca_file): nothing is sent
    let ok = Stand::start(&cert, 0, |_| Reply::Json(200, json!({}))).await;
    let sender = ApnsSender::new(apns_config(&key, ok.url(), None)).unwrap();
    let result = sender.send(&sub, &p).await;
    assert!(matches!(&result, Err(PushError::Unavailable(_))), "{result:?}");
    assert!(ok.seen().is_empty());

    // a server that closes every connection at once
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let closer = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            drop(tcp);
        }
    });
    let sender =
        ApnsSender::new(apns_config(&key, format!("https://localhost:{port}"), Some(&cert.ca)))
            .unwrap();
    let result = sender.send(&sub, &p).await;
    assert!(matches!(&result, Err(PushError::Unavailable(_))), "{result:?}");
    closer.abort();
}

#[tokio::test]
async fn apns_sender_reconnects_after_the_service_restarts() {
    let cert = cert();
    let key = apns_key();
    let stand = Stand::start(&cert, 0, |_| Reply::Json(200, json!({}))).await;
    let port = stand.addr.port();
    let sender = ApnsSender::new(apns_config(&key, stand.url(), Some(&cert.ca))).unwrap();
    let sub = Subscription::Apns { token: vec![1; 32] };
    let blob = random_blob(64);
    let p = push(Urgency::High, None, &blob, 60);
    sender.send(&sub, &p).await.unwrap();
    stand.kill().await;

    // down: unavailable, not a panic or a hang
    tokio::time::sleep(Duration::from_millis(200)).await;
    let result = sender.send(&sub, &p).await;
    assert!(matches!(&result, Err(PushError::Unavailable(_))), "{result:?}");

    // back on the same port: the sender makes a new connection
    let again = Stand::start(&cert, port, |_| Reply::Json(200, json!({}))).await;
    sender.send(&sub, &p).await.unwrap();
    sender.send(&sub, &p).await.unwrap();
    assert_eq!(again.seen().len(), 2);
    assert_eq!(again.connections(), 1);
    check_provider_token(&again.seen()[0], &key.public);
}

#[tokio::test]
async fn apns_sender_follows_a_goaway_to_a_new_connection() {
    let cert = cert();
    let key = apns_key();
    let stand = Stand::start_with(&cert, 0, true, |_| Reply::Json(200, json!({}))).await;
    let sender = ApnsSender::new(apns_config(&key, stand.url(), Some(&cert.ca))).unwrap();
    let sub = Subscription::Apns { token: vec![3; 32] };
    let blob = random_blob(64);
    for _ in 0..5 {
        sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await.unwrap();
    }
    assert_eq!(stand.seen().len(), 5);
    assert_eq!(stand.connections(), 5);
}

#[tokio::test]
async fn apns_sender_sends_a_refused_stream_again_and_nothing_else() {
    // Built on the h2 crate directly (hyper's server cannot refuse a
    // stream): requests 2 and 4 (counted over all connections) are reset,
    // REFUSED_STREAM (not processed: sent again on a new connection) and
    // INTERNAL_ERROR (maybe processed: not sent again); the rest get 200.
    let cert = cert();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let acceptor = TlsAcceptor::from(cert.config.clone());
    let (requests2, connections2) = (requests.clone(), connections.clone());
    let server = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            connections2.fetch_add(1, Ordering::SeqCst);
            let (acceptor, requests) = (acceptor.clone(), requests2.clone());
            conns.spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let mut conn = h2::server::handshake(tls).await.unwrap();
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    match requests.fetch_add(1, Ordering::SeqCst) + 1 {
                        2 => respond.send_reset(h2::Reason::REFUSED_STREAM),
                        4 => respond.send_reset(h2::Reason::INTERNAL_ERROR),
                        _ => {
                            let ok = Response::builder().status(200).body(()).unwrap();
                            respond.send_response(ok, true).unwrap();
                        }
                    }
                }
            });
        }
    });
    let key = apns_key();
    let url = format!("https://localhost:{port}");
    let sender = ApnsSender::new(apns_config(&key, url, Some(&cert.ca))).unwrap();
    let sub = Subscription::Apns { token: vec![5; 32] };
    let blob = random_blob(64);
    let mut kinds = Vec::new();
    for _ in 0..4 {
        kinds.push(match sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await {
            Ok(()) => "ok",
            Err(PushError::Unavailable(_)) => "unavailable",
            Err(e) => panic!("{e}"),
        });
    }
    assert_eq!(kinds, ["ok", "ok", "unavailable", "ok"]);
    assert_eq!(requests.load(Ordering::SeqCst), 5);
    // a new connection after each reset
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_concurrent_pushes_share_one_connection() {
    let cert = cert();
    let key = apns_key();
    let stand = Stand::start(&cert, 0, |_| Reply::Json(200, json!({}))).await;
    let sender = Arc::new(ApnsSender::new(apns_config(&key, stand.url(), Some(&cert.ca))).unwrap());
    let mut tasks = JoinSet::new();
    for i in 0..40u8 {
        let sender = sender.clone();
        tasks.spawn(async move {
            let sub = Subscription::Apns { token: vec![i; 32] };
            let blob = Bytes::from(vec![i; 100]);
            sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let seen = stand.seen();
    assert_eq!(seen.len(), 40);
    assert_eq!(stand.connections(), 1, "multiplexed on one HTTP/2 connection");
    // each request carries its own device's blob
    for s in &seen {
        let device = HEXLOWER.decode(s.path.rsplit('/').next().unwrap().as_bytes()).unwrap();
        check_apns_payload(s, &[device[0]; 100]);
    }
}

#[tokio::test]
async fn apns_setup_refuses_unusable_configuration() {
    let key = apns_key();
    let url = "https://localhost:1".to_owned();
    let missing = ApnsConfig {
        key_file: "/nonexistent/AuthKey.p8".into(),
        ..apns_config(&key, url.clone(), None)
    };
    assert!(matches!(ApnsSender::new(missing), Err(NativeSetupError::Read { .. })));

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.p8");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let cfg = ApnsConfig { key_file: garbage, ..apns_config(&key, url.clone(), None) };
    assert!(matches!(ApnsSender::new(cfg), Err(NativeSetupError::Key { .. })));

    let http = apns_config(&key, "http://localhost:1".into(), None);
    assert!(matches!(ApnsSender::new(http), Err(NativeSetupError::Invalid(_))));
    let mut empty_id = apns_config(&key, url.clone(), None);
    empty_id.key_id = String::new();
    assert!(matches!(ApnsSender::new(empty_id), Err(NativeSetupError::Invalid(_))));
    let mut spaced = apns_config(&key, url.clone(), None);
    spaced.topic = "dev.tandem app\r\n".into();
    assert!(matches!(ApnsSender::new(spaced), Err(NativeSetupError::Invalid(_))));
    let not_a_cert = apns_config(&key, url, Some(&key.file));
    assert!(matches!(ApnsSender::new(not_a_cert), Err(NativeSetupError::Invalid(_))));

    // the TOML form, defaults filled in, unknown keys refused
    let parsed: ApnsConfig = toml::from_str(
        "key_file = \"/k.p8\"\nkey_id = \"K\"\nteam_id = \"T\"\ntopic = \"dev.tandem.app\"\n",
    )
    .unwrap();
    assert_eq!(parsed.endpoint, "https://api.push.apple.com");
    assert_eq!(parsed.ca_file, None);
    assert!(
        toml::from_str::<ApnsConfig>(
            "key_file = \"/k\"\nkey_id = \"K\"\nteam_id = \"T\"\ntopic = \"t\"\nbogus = 1\n"
        )
        .is_err()
    );
}

// ---------------------------------------------------------------------------
// FCM

const PROJECT: &str = "tandem-test";
const CLIENT_EMAIL: &str = "relay@tandem-test.iam.gserviceaccount.com";
const PRIVATE_KEY_ID: &str = "0123456789abcdef";

/// The service account's RSA key: (PKCS#8 PEM, modulus, exponent). Made
/// once per build directory (2048-bit generation is slow without
/// optimisation) and reused by every test process.
fn rsa_key() -> (String, Vec<u8>, Vec<u8>) {
    use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("push_native_rsa2048.pem");
    let key = match std::fs::read_to_string(&path) {
        Ok(pem) => rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap(),
        Err(_) => {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
            let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&tmp, pem.as_bytes()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            key
        }
    };
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    (pem, key.n().to_bytes_be(), key.e().to_bytes_be())
}

/// A service account file for `token_uri`.
struct Account {
    file: PathBuf,
    n: Vec<u8>,
    e: Vec<u8>,
    _dir: TempDir,
}

fn account(token_uri: &str) -> Account {
    let (pem, n, e) = rsa_key();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("service-account.json");
    let json = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": PRIVATE_KEY_ID,
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    });
    std::fs::write(&file, json.to_string()).unwrap();
    Account { file, n, e, _dir: dir }
}

fn fcm_config(account: &Account, endpoint: String, ca: &Path) -> FcmConfig {
    let mut cfg = FcmConfig::new(&account.file);
    cfg.endpoint = endpoint;
    cfg.ca_file = Some(ca.to_owned());
    cfg
}

const SEND_PATH: &str = "/v1/projects/tandem-test/messages:send";

/// A stand-in for both Google services: `/token` hands out `tok-1`,
/// `tok-2`, … (valid `expires_in` seconds); the send path answers with
/// `send(request, token number)`.
async fn google(
    cert: &Cert,
    expires_in: u64,
    send: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
) -> Stand {
    let tokens = AtomicUsize::new(0);
    Stand::start(cert, 0, move |seen| {
        if seen.path == "/token" {
            let n = tokens.fetch_add(1, Ordering::SeqCst) + 1;
            return Reply::Json(
                200,
                json!({"access_token": format!("tok-{n}"), "expires_in": expires_in, "token_type": "Bearer"}),
            );
        }
        let bearer = seen.header("authorization").unwrap_or_default();
        let n = bearer.strip_prefix("Bearer tok-").and_then(|n| n.parse().ok()).unwrap_or(0);
        send(seen, n)
    })
    .await
}

/// Checks a token request the way Google's token endpoint does.
fn check_token_request(seen: &Seen, account: &Account, token_uri: &str) {
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.header("content-type"), Some("application/x-www-form-urlencoded"));
    let form: Vec<(String, String)> = std::str::from_utf8(&seen.body)
        .unwrap()
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.replace("%3A", ":"))
        })
        .collect();
    assert_eq!(form.len(), 2);
    assert_eq!(form[0], ("grant_type".to_owned(), GRANT_TYPE.to_owned()));
    assert_eq!(form[1].0, "assertion");
    let (header, claims, signed, sig) = jwt(&form[1].1);
    assert_eq!(header, json!({"alg": "RS256", "typ": "JWT", "kid": PRIVATE_KEY_ID}));
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(claims["scope"], SCOPE);
    assert_eq!(claims["aud"], token_uri);
    assert_near_now(&claims["iat"]);
    assert_eq!(claims["exp"].as_u64().unwrap(), claims["iat"].as_u64().unwrap() + 3600);
    let public = RsaPublicKeyComponents { n: &account.n, e: &account.e };
    public.verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &sig).unwrap();
    assert!(public.verify(&RSA_PKCS1_2048_8192_SHA256, b"forged", &sig).is_err());
}

fn sends(stand: &Stand) -> Vec<Seen> {
    stand.seen().into_iter().filter(|s| s.path != "/token").collect()
}

fn token_requests(stand: &Stand) -> Vec<Seen> {
    stand.seen().into_iter().filter(|s| s.path == "/token").collect()
}

#[tokio::test]
async fn fcm_fetches_a_token_reuses_it_and_sends_data_only() {
    let cert = cert();
    let stand = google(&cert, 3599, |_, _| {
        Reply::Json(200, json!({"name": "projects/tandem-test/messages/1"}))
    })
    .await;
    let token_uri = format!("{}/token", stand.url());
    let account = account(&token_uri);
    let sender = FcmSender::new(fcm_config(&account, stand.url(), &cert.ca)).unwrap();
    let registration = "fcm-registration-token:APA91b".to_owned();
    let sub = Subscription::Fcm { token: registration.clone() };

    let blob = random_blob(2097);
    sender.send(&sub, &push(Urgency::High, Some([0xc3; 16]), &blob, 600)).await.unwrap();
    let blob2 = random_blob(33);
    sender.send(&sub, &push(Urgency::VeryLow, None, &blob2, 0)).await.unwrap();

    let tokens = token_requests(&stand);
    assert_eq!(tokens.len(), 1, "the access token is reused");
    check_token_request(&tokens[0], &account, &token_uri);
    let sent = sends(&stand);
    assert_eq!(sent.len(), 2);
    for s in &sent {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.scheme.as_deref(), Some("https"));
        assert_eq!(s.authority.as_deref(), Some(stand.authority().as_str()));
        assert_eq!(s.path, SEND_PATH);
        assert_eq!(s.header("authorization"), Some("Bearer tok-1"));
        assert_eq!(s.header("content-type"), Some("application/json"));
    }
    let t = BASE64.encode(&blob);
    assert_eq!(
        sent[0].json(),
        json!({"message": {"token": registration, "data": {"t": t},
            "android": {"priority": "high", "collapse_key": "c3".repeat(16), "ttl": "600s"}}})
    );
    let t2 = BASE64.encode(&blob2);
    assert_eq!(
        sent[1].json(),
        json!({"message": {"token": registration, "data": {"t": t2},
            "android": {"priority": "normal", "ttl": "0s"}}})
    );
    assert_eq!(BASE64.decode(t.as_bytes()).unwrap(), blob);
}

#[tokio::test]
async fn fcm_refreshes_the_token_after_a_401_once() {
    let cert = cert();
    // tok-1 is refused, later ones accepted while `refuse_all` is 0
    let refuse_all = Arc::new(AtomicUsize::new(0));
    let refuse = refuse_all.clone();
    let stand = google(&cert, 3599, move |_, n| {
        if n == 1 || refuse.load(Ordering::SeqCst) == 1 {
            Reply::Json(401, json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}))
        } else {
            Reply::Json(200, json!({}))
        }
    })
    .await;
    let account = account(&format!("{}/token", stand.url()));
    let sender = FcmSender::new(fcm_config(&account, stand.url(), &cert.ca)).unwrap();
    let sub = Subscription::Fcm { token: "reg".into() };
    let blob = random_blob(50);
    sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await.unwrap();
    let auths: Vec<String> =
        sends(&stand).iter().map(|s| s.header("authorization").unwrap().to_owned()).collect();
    assert_eq!(auths, ["Bearer tok-1", "Bearer tok-2"]);
    assert_eq!(token_requests(&stand).len(), 2);
    // the new token is kept
    sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await.unwrap();
    assert_eq!(token_requests(&stand).len(), 2);

    // refused again after a new token: rejected, one more token only
    refuse_all.store(1, Ordering::SeqCst);
    let result = sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await;
    assert!(matches!(&result, Err(PushError::Rejected(_))), "{result:?}");
    assert_eq!(token_requests(&stand).len(), 3);
    assert_eq!(sends(&stand).len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_concurrent_pushes_fetch_one_token() {
    let cert = cert();
    let stand = google(&cert, 3599, |_, _| Reply::Json(200, json!({}))).await;
    let account = account(&format!("{}/token", stand.url()));
    let sender = Arc::new(FcmSender::new(fcm_config(&account, stand.url(), &cert.ca)).unwrap());
    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let sender = sender.clone();
        tasks.spawn(async move {
            let sub = Subscription::Fcm { token: format!("reg-{i}") };
            sender.send(&sub, &push(Urgency::High, None, &random_blob(10), 60)).await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(token_requests(&stand).len(), 1, "one token fetch for all");
    assert_eq!(sends(&stand).len(), 40);
}

#[tokio::test]
async fn fcm_token_endpoint_over_http1() {
    // A token endpoint that does not speak HTTP/2: the sender falls back to
    // HTTP/1.1 (a connection per request) and still sends to FCM over h2.
    let h1_cert = cert_for(b"http/1.1");
    let tokens = AtomicUsize::new(0);
    let oauth = Stand::start(&h1_cert, 0, move |_| {
        let n = tokens.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::Json(200, json!({"access_token": format!("tok-{n}"), "expires_in": 30}))
    })
    .await;
    let cert = cert();
    let fcm = Stand::start(&cert, 0, |_| Reply::Json(200, json!({}))).await;
    let token_uri = format!("{}/token", oauth.url());
    let account = account(&token_uri);
    // one file holding both stand-ins' certificates
    let both = h1_cert._dir.path().join("both.pem");
    let pem =
        std::fs::read_to_string(&h1_cert.ca).unwrap() + &std::fs::read_to_string(&cert.ca).unwrap();
    std::fs::write(&both, pem).unwrap();
    let sender = FcmSender::new(fcm_config(&account, fcm.url(), &both)).unwrap();
    let sub = Subscription::Fcm { token: "reg".into() };
    let blob = random_blob(10);
    sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await.unwrap();
    sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await.unwrap();
    let seen = oauth.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_11);
        assert_eq!(s.path, "/token");
        assert_eq!(s.header("host"), Some(oauth.authority().as_str()));
        check_token_request(s, &account, &token_uri);
    }
    assert_eq!(oauth.connections(), 2);
    let auths: Vec<String> =
        fcm.seen().iter().map(|s| s.header("authorization").unwrap().to_owned()).collect();
    assert_eq!(auths, ["Bearer tok-1", "Bearer tok-2"]);
    assert!(fcm.seen().iter().all(|s| s.version == Version::HTTP_2));
}

#[tokio::test]
async fn fcm_token_near_expiry_is_fetched_anew() {
    let cert = cert();
    // valid 30 s: inside the 60 s margin, so never reused
    let stand = google(&cert, 30, |_, _| Reply::Json(200, json!({}))).await;
    let account = account(&format!("{}/token", stand.url()));
    let sender = FcmSender::new(fcm_config(&account, stand.url(), &cert.ca)).unwrap();
    let sub = Subscription::Fcm { token: "reg".into() };
    let blob = random_blob(50);
    sender.send(&sub, &push(Urgency::Normal, None, &blob, 60)).await.unwrap();
    sender.send(&sub, &push(Urgency::Normal, None, &blob, 60)).await.unwrap();
    assert_eq!(token_requests(&stand).len(), 2);
    let auths: Vec<String> =
        sends(&stand).iter().map(|s| s.header("authorization").unwrap().to_owned()).collect();
    assert_eq!(auths, ["Bearer tok-1", "Bearer tok-2"]);
}

#[tokio::test]
async fn fcm_answers_become_gone_rejected_or_unavailable() {
    let cert = cert();
    let unregistered = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}});
    let cases: Vec<(u16, Value, &str)> = vec![
        (404, json!({"error": {"code": 404, "status": "NOT_FOUND"}}), "gone"),
        (400, unregistered, "gone"),
        (400, json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}}), "rejected"),
        (403, json!({"error": {"code": 403, "status": "PERMISSION_DENIED"}}), "rejected"),
        (429, json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}), "unavailable"),
        (500, json!({"error": {"code": 500, "status": "INTERNAL"}}), "unavailable"),
        (503, json!({"error": {"code": 503, "status": "UNAVAILABLE"}}), "unavailable"),
    ];
    let table: Vec<(u16, Value)> = cases.iter().map(|(s, b, _)| (*s, b.clone())).collect();
    let stand = google(&cert, 3599, move |seen, _| {
        let token = seen.json()["message"]["token"].as_str().unwrap().to_owned();
        let (status, body) =
            table[token.strip_prefix("case-").unwrap().parse::<usize>().unwrap()].clone();
        Reply::Json(status, body)
    })
    .await;
    let account = account(&format!("{}/token", stand.url()));
    let sender = FcmSender::new(fcm_config(&account, stand.url(), &cert.ca)).unwrap();
    let blob = random_blob(50);
    for (index, (_, _, expected)) in cases.iter().enumerate() {
        let sub = Subscription::Fcm { token: format!("case-{index}") };
        let result = sender.send(&sub, &push(Urgency::High, None, &blob, 60)).await;
        let kind = match &result {
            Ok(()) => "ok",
            Err(PushError::Gone) => "gone",
            Err(PushError::Rejected(_)) => "rejected",
            Err(PushError::Unavailable(_)) => "unavailable",
        };
        assert_eq!(kind, *expected, "case {index}: {result:?}");
        if let Err(e) = result {
            assert!(!e.to_string().contains("case-"), "no registration token in errors: {e}");
        }
    }
    assert_eq!(token_requests(&stand).len(), 1);
    // an APNs subscription is not sent; nor data over FCM's 4 KB
    let apns = Subscription::Apns { token: vec![1; 32] };
    assert!(matches!(
        sender.send(&apns, &push(Urgency::High, None, &blob, 60)).await,
        Err(PushError::Rejected(_))
    ));
    let fcm = Subscription::Fcm { token: "case-0".into() };
    let big = push(Urgency::High, None, &random_blob(3072), 60);
    assert!(matches!(sender.send(&fcm, &big).await, Err(PushError::Rejected(_))));
    assert_eq!(sends(&stand).len(), cases.len());
}

#[tokio::test]
async fn fcm_token_endpoint_and_network_failures() {
    let cert = cert();
    let blob = random_blob(50);
    let sub = Subscription::Fcm { token: "reg".into() };
    let p = push(Urgency::High, None, &blob, 60);
    let fcm_ok = Stand::start(&cert, 0, |_| Reply::Json(200, json!({}))).await;

    // the token endpoint refuses the assertion (a revoked key): rejected
    let refusing =
        Stand::start(&cert, 0, |_| Reply::Json(400, json!({"error": "invalid_grant"}))).await;
    let account_refused = account(&format!("{}/token", refusing.url()));
    let sender = FcmSender::new(fcm_config(&account_refused, fcm_ok.url(), &cert.ca)).unwrap();
    assert!(matches!(sender.send(&sub, &p).await, Err(PushError::Rejected(_))));
    // the token endpoint fails or answers garbage: unavailable
    let failing = Stand::start(&cert, 0, |_| Reply::Json(500, json!({}))).await;
    let account_failing = account(&format!("{}/token", failing.url()));
    let sender = FcmSender::new(fcm_config(&account_failing, fcm_ok.url(), &cert.ca)).unwrap();
    assert!(matches!(sender.send(&sub, &p).await, Err(PushError::Unavailable(_))));
    let garbage = Stand::start(&cert, 0, |_| Reply::Json(200, json!({"token": 1}))).await;
    let account_garbage = account(&format!("{}/token", garbage.url()));
    let sender = FcmSender::new(fcm_config(&account_garbage, fcm_ok.url(), &cert.ca)).unwrap();
    assert!(matches!(sender.send(&sub, &p).await, Err(PushError::Unavailable(_))));
    // the token endpoint is down: unavailable
    let account_dead = account(&format!("https://localhost:{}/token", dead_port().await));
    let sender = FcmSender::new(fcm_config(&account_dead, fcm_ok.url(), &cert.ca)).unwrap();
    assert!(matches!(sender.send(&sub, &p).await, Err(PushError::Unavailable(_))));
    assert!(fcm_ok.seen().is_empty(), "nothing is sent without a token");

    // FCM never answers: unavailable after the timeout
    let hang = google(&cert, 3599, |_, _| Reply::Hang).await;
    let account_hang = account(&format!("{}/token", hang.url()));
    let sender = FcmSender::new(fcm_config(&account_hang, hang.url(), &cert.ca))
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    assert!(matches!(sender.send(&sub, &p).await, Err(PushError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(5));
    // FCM is down: unavailable
    let sender = FcmSender::new(fcm_config(
        &account_hang,
        format!("https://localhost:{}", dead_port().await),
        &cert.ca,
    ))
    .unwrap();
    let result = sender.send(&sub, &p).await;
    assert!(
        matches!(&result, Err(PushError::Unavailable(e)) if e.contains("connect")),
        "{result:?}"
    );
}

#[tokio::test]
async fn fcm_setup_refuses_unusable_service_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let good = account("https://oauth2.example/token");
    let text: Value = serde_json::from_slice(&std::fs::read(&good.file).unwrap()).unwrap();
    let write = |name: &str, value: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        FcmConfig::new(path)
    };
    assert!(FcmSender::new(FcmConfig::new(&good.file)).is_ok());
    assert!(matches!(
        FcmSender::new(FcmConfig::new("/nonexistent.json")),
        Err(NativeSetupError::Read { .. })
    ));
    let not_json = dir.path().join("not.json");
    std::fs::write(&not_json, "{").unwrap();
    assert!(matches!(
        FcmSender::new(FcmConfig::new(not_json)),
        Err(NativeSetupError::ServiceAccount { .. })
    ));
    let mut no_key = text.clone();
    no_key.as_object_mut().unwrap().remove("private_key");
    assert!(matches!(
        FcmSender::new(write("a.json", &no_key)),
        Err(NativeSetupError::ServiceAccount { .. })
    ));
    let mut ec_key = text.clone();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    ec_key["private_key"] = json!(pair.serialize_pem());
    assert!(matches!(
        FcmSender::new(write("b.json", &ec_key)),
        Err(NativeSetupError::ServiceAccount { .. })
    ));
    let mut slash = text.clone();
    slash["project_id"] = json!("a/../b");
    assert!(matches!(
        FcmSender::new(write("c.json", &slash)),
        Err(NativeSetupError::ServiceAccount { .. })
    ));
    let mut http = text.clone();
    http["token_uri"] = json!("http://oauth2.example/token");
    assert!(matches!(
        FcmSender::new(write("d.json", &http)),
        Err(NativeSetupError::ServiceAccount { .. })
    ));
    let mut cfg = FcmConfig::new(&good.file);
    cfg.endpoint = "fcm.googleapis.com".into();
    assert!(matches!(FcmSender::new(cfg), Err(NativeSetupError::Invalid(_))));

    let parsed: FcmConfig = toml::from_str("service_account_file = \"/sa.json\"\n").unwrap();
    assert_eq!(parsed.endpoint, "https://fcm.googleapis.com");
    assert!(toml::from_str::<FcmConfig>("service_account_file = \"/sa.json\"\nx = 1\n").is_err());
}
