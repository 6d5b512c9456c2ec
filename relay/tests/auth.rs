//! Device authentication against a real relay process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Device, Relay, close_code, new_key, ws_connect};
use tandem_proto::frame::Frame;
use tandem_proto::relay_auth::prove;
use tandem_proto::{ErrorCode, Role};

#[tokio::test]
async fn a_device_with_its_key_is_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let key = new_key();
    let (d, queued) = Device::connect(&relay, key.clone(), Role::Phone).await;
    assert_eq!(queued, 0);
    assert_eq!(d.id(), key.public().device_id());
}

#[tokio::test]
async fn a_proof_made_with_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let mut d = Device::raw(&relay, Role::Phone).await;
    d.send(&Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone }).await;
    let challenge = d.recv().await;
    // Claim the victim's public key with a proof from our own key.
    let victim = new_key();
    let Frame::Auth { proof, .. } = prove(&d.key, Role::Phone, &relay.addr, &challenge).unwrap()
    else {
        panic!()
    };
    d.send(&Frame::Auth { public_key: victim.public(), proof }).await;
    let (end, frames) = d.until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, close_code(ErrorCode::AuthFailed));
    assert!(frames.iter().any(|f| matches!(f, Frame::Error { code: ErrorCode::AuthFailed, .. })));
    assert!(relay.metrics().await.contains("tandem_relay_auth_failures_total 1"));
}

#[tokio::test]
async fn a_replayed_authentication_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let key = new_key();
    // Record a genuine exchange…
    let mut first = Device {
        key: key.clone(),
        role: Role::Phone,
        ws: ws_connect(&relay.url).await,
        backlog: vec![],
        auto_pong: true,
    };
    first.send(&Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone }).await;
    let challenge = first.recv().await;
    let auth = prove(&key, Role::Phone, &relay.addr, &challenge).unwrap();
    // …and replay its Auth on a new connection (without the key).
    let mut replay = Device::raw(&relay, Role::Phone).await;
    replay.send(&Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone }).await;
    let _fresh_challenge = replay.recv().await;
    replay.send(&auth).await;
    let (end, _) = replay.until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, close_code(ErrorCode::AuthFailed));
}

#[tokio::test]
async fn frames_before_authentication_and_bad_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let mut d = Device::raw(&relay, Role::Phone).await;
    d.send(&Frame::Ack { up_to: 1 }).await;
    assert_eq!(
        d.until_closed(Duration::from_secs(5)).await.0,
        close_code(ErrorCode::NotAuthenticated)
    );
    let mut d = Device::raw(&relay, Role::Phone).await;
    // Levels 1 to 3 are spoken; a range above them meets none.
    d.send(&Frame::Hello { min_version: 4, max_version: 5, role: Role::Phone }).await;
    assert_eq!(
        d.until_closed(Duration::from_secs(5)).await.0,
        close_code(ErrorCode::UnsupportedVersion)
    );
}

#[tokio::test]
async fn a_connection_that_never_authenticates_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &["--handshake-timeout-secs", "1"]);
    let mut d = Device::raw(&relay, Role::Phone).await;
    assert_eq!(
        d.until_closed(Duration::from_secs(5)).await.0,
        close_code(ErrorCode::HandshakeTimeout)
    );
}

#[tokio::test]
async fn a_newer_connection_replaces_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let key = new_key();
    let (mut old, _) = Device::connect(&relay, key.clone(), Role::Desktop).await;
    let (_new, _) = Device::connect(&relay, key, Role::Desktop).await;
    let (end, _) = old.until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, close_code(ErrorCode::Replaced));
}

#[tokio::test]
async fn a_request_for_a_name_the_relay_does_not_have_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(&relay.addr).await.unwrap();
    let req = "GET /v1/connect HTTP/1.1\r\nHost: other-relay.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
               Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 512];
    let n = s.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 421"), "{text}");
}

#[tokio::test]
async fn a_client_refuses_a_challenge_for_another_relay_name() {
    // The relay answers to localhost too; a client that dialed 127.0.0.1 but
    // gets a challenge for "localhost" (as a relay in the middle would pass on)
    // refuses to prove anything.
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let url = relay.url.replace("127.0.0.1", "localhost");
    let mut d = Device {
        key: new_key(),
        role: Role::Phone,
        ws: ws_connect(&url).await,
        backlog: vec![],
        auto_pong: true,
    };
    d.send(&Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone }).await;
    let challenge = d.recv().await;
    let Frame::Challenge { relay_name, .. } = &challenge else { panic!() };
    assert!(relay_name.starts_with("localhost:"), "{relay_name}");
    let dialed = relay.addr.clone();
    assert!(prove(&d.key, Role::Phone, &dialed, &challenge).is_err());
}
