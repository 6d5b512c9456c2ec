//! The APNs and FCM senders, as a library, against local HTTP/2 servers
//! standing in for Apple and Google (`support/native_stand.rs`: the only
//! stand-ins for a platform service in the project; they check method,
//! path, `:authority`, every required header, the JWTs' signatures and
//! claims, and the payload's shape). The relay process with `[apns]` and
//! `[fcm]` against the same stand-ins: `push_native_relay.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "support/native_stand.rs"]
mod native_stand;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use data_encoding::{BASE64, HEXLOWER};
use http::{Method, Response, Version};
use native_stand::{
    Account, ApnsKey, BUNDLE, KEY_ID, Reply, SEND_PATH, Stand, TEAM_ID, account, apns_key, cert,
    cert_for, check_apns_payload, check_provider_token, check_token_request, dead_port, garbage_p8,
    google, now, sends, token_requests,
};
use serde_json::{Value, json};
use tandem_relay::push::apns::ApnsSender;
use tandem_relay::push::fcm::FcmSender;
use tandem_relay::push::native_config::{ApnsConfig, FcmConfig, NativeSetupError};
use tandem_relay::push::{Push, PushError, PushSender, Subscription, Urgency};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

// ---------------------------------------------------------------------------
// Helpers

fn random_blob(len: usize) -> Bytes {
    Bytes::from((0..len).map(|_| rand::random::<u8>()).collect::<Vec<u8>>())
}

fn push(urgency: Urgency, topic: Option<[u8; 16]>, blob: &Bytes, ttl_secs: u32) -> Push {
    Push { urgency, topic, blob: blob.clone(), ttl_secs }
}

// ---------------------------------------------------------------------------
// APNs

fn apns_config(key: &ApnsKey, endpoint: String, ca: Option<&Path>) -> ApnsConfig {
    let mut cfg = ApnsConfig::new(&key.file, KEY_ID, TEAM_ID, BUNDLE);
    cfg.endpoint = endpoint;
    cfg.ca_file = ca.map(Path::to_owned);
    cfg
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
    let garbage = garbage_p8(dir.path());
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

fn fcm_config(account: &Account, endpoint: String, ca: &Path) -> FcmConfig {
    let mut cfg = FcmConfig::new(&account.file);
    cfg.endpoint = endpoint;
    cfg.ca_file = Some(ca.to_owned());
    cfg
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
    let both = h1_cert.dir.path().join("both.pem");
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
