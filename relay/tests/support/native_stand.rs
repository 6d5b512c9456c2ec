//! Local stand-ins for Apple's APNs provider API and Google's FCM HTTP v1
//! API and OAuth2 token endpoint, shared by the senders' library tests
//! (`tests/push_native.rs`) and the relay process's (`tests/push_native_relay.rs`).
//!
//! STAND-INS: the servers started here play Apple's and Google's services.
//! This is the only place the project accepts a stand-in for a platform
//! service (the real ones need Apple's and Google's credentials and
//! devices). They are real HTTP/2 servers (hyper, rustls with ring, ALPN
//! `h2`, a self-signed rcgen certificate the senders trust through their
//! tests-only `ca_file`) and the checks here are what the real services check
//! and document: the JWTs' signatures (with ring and the test's public keys)
//! and claims, the payload's shape (nothing but the placeholder and the
//! blob, which decodes to the bytes sent). The keys are made by the tests
//! (rcgen for P-256; the `rsa` crate for the service account's RSA key,
//! which ring cannot generate).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use data_encoding::{BASE64, BASE64URL_NOPAD};
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tandem_relay::push::fcm::{GRANT_TYPE, SCOPE};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

// ---------------------------------------------------------------------------
// The stand-in server

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the stand-in answers.
pub enum Reply {
    Json(u16, Value),
    Hang,
}

/// The stand-in's certificate (trusted by the senders through `ca_file`).
pub struct Cert {
    pub config: Arc<rustls::ServerConfig>,
    pub ca: PathBuf,
    /// Where `ca` is (other files may go there too).
    pub dir: TempDir,
}

pub fn cert() -> Cert {
    cert_for(b"h2")
}

/// A certificate for a server that speaks only `alpn`.
pub fn cert_for(alpn: &[u8]) -> Cert {
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
    Cert { config: Arc::new(config), ca, dir }
}

/// A running stand-in: HTTP/2, or HTTP/1.1 when the certificate's
/// configuration offers only that (a client that negotiates neither is
/// dropped).
pub struct Stand {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Stand {
    /// Serve on 127.0.0.1:`port` (0: any) with `handler`.
    pub async fn start(
        cert: &Cert,
        port: u16,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Stand {
        Self::start_with(cert, port, false, handler).await
    }

    /// `goaway`: every HTTP/2 connection is shut down gracefully (GOAWAY)
    /// as soon as its first request arrives, as APNs does now and then.
    pub async fn start_with(
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

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn authority(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Stop serving and close every connection.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A port nothing listens on.
pub async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A compact JWT's header, claims, signed part and signature.
pub fn jwt(token: &str) -> (Value, Value, String, Vec<u8>) {
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

pub fn assert_near_now(value: &Value) {
    let t = value.as_u64().unwrap();
    assert!(t.abs_diff(now()) < 60, "{t} is not now");
}

pub const KEY_ID: &str = "ABC123DEFG";
pub const TEAM_ID: &str = "DEF123GHIJ";
pub const BUNDLE: &str = "dev.tandem.app";

/// An APNs key (the `.p8` file) and its public key.
pub struct ApnsKey {
    pub file: PathBuf,
    pub public: Vec<u8>,
    _dir: TempDir,
}

pub fn apns_key() -> ApnsKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("AuthKey_{KEY_ID}.p8"));
    std::fs::write(&file, pair.serialize_pem()).unwrap();
    ApnsKey { file, public: pair.public_key_raw().to_vec(), _dir: dir }
}

/// A `.p8` file in `dir` that is PEM but no key.
pub fn garbage_p8(dir: &Path) -> PathBuf {
    let path = dir.join("AuthKey_garbage.p8");
    std::fs::write(&path, "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
        .unwrap();
    path
}

/// Checks the provider token the way APNs does; returns it.
pub fn check_provider_token(seen: &Seen, public: &[u8]) -> String {
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
pub fn check_apns_payload(seen: &Seen, blob: &[u8]) {
    let body = seen.json();
    let t = body["t"].as_str().unwrap();
    assert_eq!(BASE64.decode(t.as_bytes()).unwrap(), blob);
    assert_eq!(
        body,
        json!({"aps": {"alert": {"title": "Tandem", "body": "New activity"}, "mutable-content": 1},
               "t": t})
    );
}

pub const PROJECT: &str = "tandem-test";
pub const CLIENT_EMAIL: &str = "relay@tandem-test.iam.gserviceaccount.com";
pub const PRIVATE_KEY_ID: &str = "0123456789abcdef";

/// The service account's RSA key: (PKCS#8 PEM, modulus, exponent). Made
/// once per build directory (2048-bit generation is slow without
/// optimisation) and reused by every test process.
pub fn rsa_key() -> (String, Vec<u8>, Vec<u8>) {
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
pub struct Account {
    pub file: PathBuf,
    pub n: Vec<u8>,
    pub e: Vec<u8>,
    _dir: TempDir,
}

pub fn account(token_uri: &str) -> Account {
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

pub const SEND_PATH: &str = "/v1/projects/tandem-test/messages:send";

/// A stand-in for both Google services: `/token` hands out `tok-1`,
/// `tok-2`, … (valid `expires_in` seconds); the send path answers with
/// `send(request, token number)`.
pub async fn google(
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
pub fn check_token_request(seen: &Seen, account: &Account, token_uri: &str) {
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

pub fn sends(stand: &Stand) -> Vec<Seen> {
    stand.seen().into_iter().filter(|s| s.path != "/token").collect()
}

pub fn token_requests(stand: &Stand) -> Vec<Seen> {
    stand.seen().into_iter().filter(|s| s.path == "/token").collect()
}
