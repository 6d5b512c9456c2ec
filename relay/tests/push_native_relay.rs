//! APNs and FCM through the relay process people run (docs/PUSH.md): a
//! real `tandem-relay` started with `[apns]` and `[fcm]` tables whose
//! `endpoint` and tests-only `ca_file` point at local HTTP/2 servers
//! standing in for Apple and Google (`support/native_stand.rs`: the only
//! stand-ins here; they check the request's shape and authentication as
//! the real services do). The relay, its store and the devices are real: a
//! phone subscribes with a token over the relay protocol, a paired desktop
//! sends `Notify`, and what reaches the stand-in is checked to the byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;
#[path = "support/native_stand.rs"]
mod native_stand;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::push::{device, notify, pair3, set_active, subscribe};
use common::{Device, Relay, metric};
use data_encoding::{BASE64, HEXLOWER};
use http::{Method, Version};
use native_stand::{
    Account, ApnsKey, BUNDLE, Cert, KEY_ID, Reply, SEND_PATH, Seen, Stand, TEAM_ID, account,
    apns_key, cert, check_apns_payload, check_provider_token, check_token_request, garbage_p8,
    google, now, sends, token_requests,
};
use serde_json::{Value, json};
use tandem_proto::frame::PushSubscription;
use tandem_proto::{ErrorCode, Role};

/// The `[apns]` table for `key` and the stand-in at `url`.
fn apns_table(key_file: &Path, url: &str, ca: &Path) -> String {
    format!(
        "[apns]\nkey_file = {:?}\nkey_id = \"{KEY_ID}\"\nteam_id = \"{TEAM_ID}\"\n\
         topic = \"{BUNDLE}\"\nendpoint = \"{url}\"\nca_file = {:?}\n",
        key_file.to_str().unwrap(),
        ca.to_str().unwrap()
    )
}

/// The `[fcm]` table for `account` and the stand-in at `url`.
fn fcm_table(account_file: &Path, url: &str, ca: &Path) -> String {
    format!(
        "[fcm]\nservice_account_file = {:?}\nendpoint = \"{url}\"\nca_file = {:?}\n",
        account_file.to_str().unwrap(),
        ca.to_str().unwrap()
    )
}

/// Write `tables` as the relay's configuration file; returns its path.
fn config(dir: &Path, tables: &[String]) -> PathBuf {
    let path = dir.join("relay.toml");
    let text = format!("[push]\nretry_after_ms = 300\n\n{}", tables.join("\n"));
    std::fs::write(&path, text).unwrap();
    path
}

fn start(dir: &Path, tables: &[String]) -> Relay {
    let path = config(dir, tables);
    Relay::start(dir, &["--config", path.to_str().unwrap()])
}

/// The kinds `GET /v1/push` lists.
async fn kinds(relay: &Relay) -> Value {
    let (status, body) = relay.get("/v1/push").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["kinds"].clone()
}

/// Wait (10 s) until `pick(stand)` holds `n` requests; return them.
async fn wait_seen(stand: &Stand, n: usize, pick: fn(&Stand) -> Vec<Seen>) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = pick(stand);
        if seen.len() >= n {
            return seen;
        }
        assert!(Instant::now() < deadline, "{} requests, wanted {n}: {seen:?}", seen.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all(stand: &Stand) -> Vec<Seen> {
    stand.seen()
}

/// A desktop and a phone of `relay` at level 3, paired; the phone
/// subscribed with `sub` and in the background.
async fn subscribed(relay: &Relay, sub: PushSubscription) -> (Device, Device) {
    let (desk, mut phone) = pair3(relay).await;
    assert_eq!(subscribe(&mut phone, 2, sub).await, Ok(()));
    set_active(&mut phone, false).await;
    (desk, phone)
}

fn random_blob(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

/// A relay with both tables against two stand-ins sharing one certificate.
struct Rig {
    relay: Relay,
    apple: Stand,
    google: Stand,
    key: ApnsKey,
    account: Account,
    token_uri: String,
    _cert: Cert,
    _dir: tempfile::TempDir,
}

/// APNs answers 410 `Unregistered` for a device token starting 0xee, FCM
/// 400 `UNREGISTERED` for a registration token starting `gone-`; 200
/// otherwise.
async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let cert = cert();
    let apple = Stand::start(&cert, 0, |seen| {
        if seen.path.starts_with("/3/device/ee") {
            Reply::Json(410, json!({"reason": "Unregistered", "timestamp": now() * 1000}))
        } else {
            Reply::Json(200, json!({}))
        }
    })
    .await;
    let google = google(&cert, 3599, |seen, _| {
        let token = seen.json()["message"]["token"].as_str().unwrap_or_default().to_owned();
        if token.starts_with("gone-") {
            Reply::Json(
                400,
                json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                 "errorCode": "UNREGISTERED"}]}}),
            )
        } else {
            Reply::Json(200, json!({"name": "projects/tandem-test/messages/1"}))
        }
    })
    .await;
    let key = apns_key();
    let token_uri = format!("{}/token", google.url());
    let account = account(&token_uri);
    let tables = [
        apns_table(&key.file, &apple.url(), &cert.ca),
        fcm_table(&account.file, &google.url(), &cert.ca),
    ];
    let relay = start(dir.path(), &tables);
    Rig { relay, apple, google, key, account, token_uri, _cert: cert, _dir: dir }
}

#[tokio::test]
async fn a_notify_reaches_the_apns_stand_in_and_unregistered_removes_the_subscription() {
    let rig = rig().await;
    let relay = &rig.relay;
    assert_eq!(kinds(relay).await, json!(["webpush", "apns", "fcm"]));
    let token = random_blob(32);
    let (mut desk, mut phone) =
        subscribed(relay, PushSubscription::Apns { token: token.clone() }).await;
    let to = phone.id();

    // The largest blob the inner seal makes, urgent, with a topic.
    let blob = random_blob(2097);
    assert_eq!(notify(&mut desk, 10, to, 3, [0x5a; 16], &blob).await, Ok(()));
    let seen = wait_seen(&rig.apple, 1, all).await;
    let s = &seen[0];
    assert_eq!(s.method, Method::POST);
    assert_eq!(s.version, Version::HTTP_2);
    assert_eq!(s.authority.as_deref(), Some(rig.apple.authority().as_str()));
    assert_eq!(s.path, format!("/3/device/{}", HEXLOWER.encode(&token)));
    assert_eq!(s.header("apns-push-type"), Some("alert"));
    assert_eq!(s.header("apns-topic"), Some(BUNDLE));
    assert_eq!(s.header("apns-priority"), Some("10"));
    assert_eq!(s.header("apns-collapse-id"), Some("5a".repeat(16).as_str()));
    let expiration: u64 = s.header("apns-expiration").unwrap().parse().unwrap();
    assert!(expiration.abs_diff(now() + 3600) < 60, "the default TTL: {expiration}");
    check_provider_token(s, &rig.key.public);
    check_apns_payload(s, &blob);
    assert_eq!(s.json()["t"], BASE64.encode(&blob), "the blob's base64, byte for byte");

    // Low urgency, no topic.
    let blob2 = random_blob(40);
    assert_eq!(notify(&mut desk, 11, to, 1, [0; 16], &blob2).await, Ok(()));
    let seen = wait_seen(&rig.apple, 2, all).await;
    assert_eq!(seen[1].header("apns-priority"), Some("5"));
    assert_eq!(seen[1].header("apns-collapse-id"), None);
    check_apns_payload(&seen[1], &blob2);
    let m = relay.wait_metric("tandem_relay_push_sent_total{kind=\"apns\"}", 2.0).await;
    assert_eq!(metric(&m, "tandem_relay_push_suppressed_total{reason=\"active\"}"), None);
    assert_eq!(rig.apple.connections(), 1, "one connection kept open between pushes");

    // A token Apple no longer knows: 410 removes the subscription, and the
    // next Notify finds none (and the stand-in sees nothing more).
    let gone = [&[0xee][..], &random_blob(31)].concat();
    assert_eq!(
        subscribe(&mut phone, 3, PushSubscription::Apns { token: gone.clone() }).await,
        Ok(())
    );
    assert_eq!(notify(&mut desk, 12, to, 3, [0; 16], b"to a gone token").await, Ok(()));
    let seen = wait_seen(&rig.apple, 3, all).await;
    assert_eq!(seen[2].path, format!("/3/device/{}", HEXLOWER.encode(&gone)));
    relay.wait_metric("tandem_relay_push_removed_total{kind=\"apns\"}", 1.0).await;
    assert_eq!(notify(&mut desk, 13, to, 3, [0; 16], b"after").await, Ok(()));
    relay.wait_metric("tandem_relay_push_suppressed_total{reason=\"no_subscription\"}", 1.0).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rig.apple.seen().len(), 3, "nothing sent without a subscription");
    assert!(rig.google.seen().is_empty(), "nothing went to Google");

    // The log names the service's host, never a token or the blob.
    let log = relay.log();
    assert!(log.contains("push subscription gone"), "the log is the relay's (positive control)");
    for secret in
        [HEXLOWER.encode(&token), HEXLOWER.encode(&gone), BASE64.encode(&blob)[..40].into()]
    {
        assert!(!log.contains(&secret), "the log holds {secret}");
    }
}

#[tokio::test]
async fn a_notify_reaches_the_fcm_stand_in_as_data_only_and_unregistered_removes_it() {
    let rig = rig().await;
    let relay = &rig.relay;
    let registration = "fcm-registration-token:APA91bRelayTest".to_owned();
    let (mut desk, mut phone) =
        subscribed(relay, PushSubscription::Fcm { token: registration.clone() }).await;
    let to = phone.id();

    let blob = random_blob(2097);
    assert_eq!(notify(&mut desk, 10, to, 3, [0xc3; 16], &blob).await, Ok(()));
    let blob2 = random_blob(33);
    assert_eq!(notify(&mut desk, 11, to, 0, [0; 16], &blob2).await, Ok(()));
    let sent = wait_seen(&rig.google, 2, sends).await;
    // One token, fetched from the service account's token_uri, reused.
    let tokens = token_requests(&rig.google);
    assert_eq!(tokens.len(), 1, "the access token is reused");
    check_token_request(&tokens[0], &rig.account, &rig.token_uri);
    for s in &sent {
        assert_eq!(s.method, Method::POST);
        assert_eq!(s.version, Version::HTTP_2);
        assert_eq!(s.authority.as_deref(), Some(rig.google.authority().as_str()));
        assert_eq!(s.path, SEND_PATH);
        assert_eq!(s.header("authorization"), Some("Bearer tok-1"));
        assert_eq!(s.header("content-type"), Some("application/json"));
    }
    // Data only (no `notification`), the blob's base64 byte for byte. The
    // two go out concurrently (one HTTP/2 connection): in either order.
    let got: Vec<serde_json::Value> = sent.iter().map(|s| s.json()).collect();
    for want in [
        json!({"message": {"token": registration, "data": {"t": BASE64.encode(&blob)},
            "android": {"priority": "high", "collapse_key": "c3".repeat(16), "ttl": "3600s"}}}),
        json!({"message": {"token": registration, "data": {"t": BASE64.encode(&blob2)},
            "android": {"priority": "normal", "ttl": "3600s"}}}),
    ] {
        assert!(got.contains(&want), "{want} not in {got:?}");
    }
    relay.wait_metric("tandem_relay_push_sent_total{kind=\"fcm\"}", 2.0).await;
    // UNREGISTERED removes the subscription.
    assert_eq!(
        subscribe(&mut phone, 3, PushSubscription::Fcm { token: "gone-registration".into() }).await,
        Ok(())
    );
    assert_eq!(notify(&mut desk, 12, to, 2, [0; 16], b"to a gone token").await, Ok(()));
    let sent = wait_seen(&rig.google, 3, sends).await;
    assert_eq!(sent[2].json()["message"]["token"], "gone-registration");
    relay.wait_metric("tandem_relay_push_removed_total{kind=\"fcm\"}", 1.0).await;
    assert_eq!(notify(&mut desk, 13, to, 2, [0; 16], b"after").await, Ok(()));
    relay.wait_metric("tandem_relay_push_suppressed_total{reason=\"no_subscription\"}", 1.0).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sends(&rig.google).len(), 3, "nothing sent without a subscription");
    assert!(rig.apple.seen().is_empty(), "nothing went to Apple");

    // The log names the service's host, never a token or the blob.
    let log = relay.log();
    assert!(log.contains("push subscription gone"), "the log is the relay's (positive control)");
    for secret in [registration.as_str(), "gone-registration", &BASE64.encode(&blob)[..40]] {
        assert!(!log.contains(secret), "the log holds {secret}");
    }
}

#[tokio::test]
async fn v1_push_lists_what_is_configured_and_other_kinds_are_push_unavailable() {
    let cert = cert();
    let apple = Stand::start(&cert, 0, |_| Reply::Json(200, json!({}))).await;
    let key = apns_key();
    let google = google(&cert, 3599, |_, _| Reply::Json(200, json!({}))).await;
    let account = account(&format!("{}/token", google.url()));
    let apns = apns_table(&key.file, &apple.url(), &cert.ca);
    let fcm = fcm_table(&account.file, &google.url(), &cert.ca);
    let refused = Err(ErrorCode::PushUnavailable);
    // (tables, kinds listed, APNs subscription answer, FCM subscription answer)
    let cases = [
        (vec![], json!(["webpush"]), refused, refused),
        (vec![apns.clone()], json!(["webpush", "apns"]), Ok(()), refused),
        (vec![fcm.clone()], json!(["webpush", "fcm"]), refused, Ok(())),
        (vec![apns, fcm], json!(["webpush", "apns", "fcm"]), Ok(()), Ok(())),
    ];
    for (tables, listed, apns_answer, fcm_answer) in cases {
        let dir = tempfile::tempdir().unwrap();
        let relay = start(dir.path(), &tables);
        assert_eq!(kinds(&relay).await, listed);
        let mut phone = device(&relay, Role::Phone).await;
        let got = subscribe(&mut phone, 1, PushSubscription::Apns { token: vec![1; 32] }).await;
        assert_eq!(got, apns_answer, "APNs with {listed}");
        let got = subscribe(&mut phone, 2, PushSubscription::Fcm { token: "t".into() }).await;
        assert_eq!(got, fcm_answer, "FCM with {listed}");
    }
    // Subscribing sends nothing to either service.
    assert!(apple.seen().is_empty() && google.seen().is_empty());
}

/// Run the relay binary with `tables` until it exits (15 s); returns
/// (success, stdout, stderr).
fn run_to_exit(dir: &Path, tables: &[String]) -> (bool, String, String) {
    let path = config(dir, tables);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args(["--listen", "127.0.0.1:0", "--tls", "off", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the relay started: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_relay_with_an_unusable_key_refuses_to_start_and_names_the_table() {
    let cert = cert();
    let key = apns_key();
    let url = "https://localhost:1";
    let dir = tempfile::tempdir().unwrap();
    let garbage = garbage_p8(dir.path());
    let not_json = dir.path().join("service-account.json");
    std::fs::write(&not_json, "{\"type\": \"service_account\"").unwrap();
    let cases = [
        (apns_table(&garbage, url, &cert.ca), "[apns]", garbage.to_str().unwrap().to_owned()),
        (
            apns_table(Path::new("/nonexistent/AuthKey.p8"), url, &cert.ca),
            "[apns]",
            "/nonexistent/AuthKey.p8".to_owned(),
        ),
        (fcm_table(&not_json, url, &cert.ca), "[fcm]", not_json.to_str().unwrap().to_owned()),
    ];
    for (table, name, file) in cases {
        let run = tempfile::tempdir().unwrap();
        // A good table beside the bad one changes nothing.
        let good = apns_table(&key.file, url, &cert.ca);
        let tables = if name == "[fcm]" { vec![good, table] } else { vec![table] };
        let (ok, stdout, stderr) = run_to_exit(run.path(), &tables);
        assert!(!ok, "{name}: the relay exited with success");
        assert!(!stdout.contains("listening"), "{name}: it listened: {stdout}");
        assert!(stderr.contains(name), "{name}: the error does not name the table: {stderr}");
        assert!(stderr.contains(&file), "{name}: the error does not name the file: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The control: the same good table alone starts.
    let run = tempfile::tempdir().unwrap();
    let relay = start(run.path(), &[apns_table(&key.file, url, &cert.ca)]);
    assert_eq!(kinds(&relay).await, json!(["webpush", "apns"]));
}
