//! The connect layer against a fake relay on 127.0.0.1: authentication, the
//! relay-name check, refusals, deadlines, TLS with an extra root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{Auth, CERT_PEM, FakeRelay, Options, Outcome, key, within};
use tandem_client::proto::{ErrorCode, Frame, Role};
use tandem_client::{ClientError, Endpoint};

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn authenticates_and_relay_verifies_the_proof() {
    let mut relay =
        FakeRelay::start(Options { auth: Auth::Accept { queued: 7 }, ..Options::default() }).await;
    let key = key();
    let endpoint = Endpoint::new(&relay.url(), &[]).unwrap();
    assert_eq!(endpoint.dialed_name(), relay.addr.to_string());

    let mut conn = within(endpoint.connect(&key, Role::Desktop, T)).await.unwrap();
    assert_eq!(conn.device_id(), key.public().device_id());
    assert_eq!(conn.queued(), 7);
    assert_eq!(conn.relay_ping_interval(), Duration::from_secs(20));
    assert_eq!(
        relay.outcome().await,
        Outcome::Authenticated {
            device: key.public().device_id(),
            role: Role::Desktop,
            host: relay.addr.to_string(),
        }
    );

    // Frames flow both ways after the handshake.
    let mut server = relay.accept().await;
    conn.send(&Frame::Ping { nonce: 9 }).await.unwrap();
    assert_eq!(server.recv().await, Some(Frame::Ping { nonce: 9 }));
    server.send(&Frame::Pong { nonce: 9 }).await;
    assert_eq!(within(conn.recv()).await.unwrap(), Frame::Pong { nonce: 9 });

    // A close with a Tandem code is reported with that code.
    server.close(Some(ErrorCode::Replaced)).await;
    let err = within(conn.recv()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Replaced), "{err}");
}

#[tokio::test]
async fn a_challenge_for_another_relay_is_refused_without_auth() {
    let mut relay = FakeRelay::start(Options {
        challenge_name: Some("evil.example".into()),
        ..Options::default()
    })
    .await;
    let endpoint = Endpoint::new(&relay.url(), &[]).unwrap();
    let err = within(endpoint.connect(&key(), Role::Phone, T)).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::WrongRelay { got: "evil.example".into(), expected: relay.addr.to_string() }
    );
    assert!(err.to_string().contains("refusing to authenticate"));
    assert_eq!(relay.outcome().await, Outcome::NoAuth);
}

#[tokio::test]
async fn auth_failed_is_reported_with_its_code() {
    let mut relay = FakeRelay::start(Options {
        auth: Auth::Refuse(ErrorCode::AuthFailed),
        ..Options::default()
    })
    .await;
    let endpoint = Endpoint::new(&relay.url(), &[]).unwrap();
    let err = within(endpoint.connect(&key(), Role::Phone, T)).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(ErrorCode::AuthFailed, _)), "{err:?}");
    assert!(err.is_fatal());
    assert_eq!(relay.outcome().await, Outcome::Refused(ErrorCode::AuthFailed));
}

#[tokio::test]
async fn the_deadline_covers_a_relay_that_never_answers() {
    let (addr, _task) = common::silent_listener().await;
    let endpoint = Endpoint::new(&format!("ws://{addr}/v1/connect"), &[]).unwrap();
    let started = Instant::now();
    let err = endpoint.connect(&key(), Role::Phone, Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(err, ClientError::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn an_unreachable_relay_is_an_io_error() {
    let relay = FakeRelay::start(Options::default()).await;
    let url = relay.url();
    relay.stop().await;
    let endpoint = Endpoint::new(&url, &[]).unwrap();
    let err = within(endpoint.connect(&key(), Role::Phone, T)).await.unwrap_err();
    assert!(matches!(err, ClientError::Io(_)), "{err:?}");
}

#[tokio::test]
async fn tls_with_an_extra_root_authenticates() {
    let mut relay = FakeRelay::start(Options { tls: true, ..Options::default() }).await;
    let url = relay.url();
    assert!(url.starts_with("wss://"));
    let key = key();
    let endpoint = Endpoint::new(&url, &[CERT_PEM.to_owned()]).unwrap();
    let conn = within(endpoint.connect(&key, Role::Phone, T)).await.unwrap();
    assert_eq!(conn.device_id(), key.public().device_id());
    assert!(matches!(relay.outcome().await, Outcome::Authenticated { .. }));

    // Through `localhost` too (the certificate names both).
    let url = format!("wss://localhost:{}/v1/connect", relay.addr.port());
    let endpoint = Endpoint::new(&url, &[CERT_PEM.to_owned()]).unwrap();
    within(endpoint.connect(&key, Role::Phone, T)).await.unwrap();
    assert!(matches!(
        relay.outcome().await,
        Outcome::Authenticated { host, .. } if host == format!("localhost:{}", relay.addr.port())
    ));
}

#[tokio::test]
async fn tls_without_the_extra_root_is_refused() {
    let relay = FakeRelay::start(Options { tls: true, ..Options::default() }).await;
    let endpoint = Endpoint::new(&relay.url(), &[]).unwrap();
    let err = within(endpoint.connect(&key(), Role::Phone, T)).await.unwrap_err();
    assert!(matches!(err, ClientError::Io(_) | ClientError::Tls(_)), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn bad_urls_and_roots_are_refused_up_front() {
    for url in [
        "http://relay.example.com/v1/connect",
        "relay.example.com",
        "wss:///v1/connect",
        "wss://user:pw@relay.example.com/v1/connect",
        "not a url",
    ] {
        let err = Endpoint::new(url, &[]).unwrap_err();
        assert!(matches!(err, ClientError::InvalidUrl { .. }), "{url}: {err:?}");
    }
    let err = Endpoint::new("wss://relay.example.com", &["no pem here".into()]).unwrap_err();
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");

    let e = Endpoint::new("wss://Relay.Example.com/v1/connect", &[]).unwrap();
    assert_eq!(e.dialed_name(), "Relay.Example.com");
    let e = Endpoint::new("ws://[::1]:9000/v1/connect", &[]).unwrap();
    assert_eq!(e.dialed_name(), "[::1]:9000");
}

#[tokio::test]
async fn connects_from_the_chosen_local_address() {
    // A bare listener: the handshake never finishes, but the source address shows.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/connect", listener.local_addr().unwrap());
    let local: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let endpoint = Endpoint::new(&url, &[]).unwrap().with_local_ip(Some(local));
    let key = key();
    let attempt = tokio::spawn(async move {
        endpoint.connect(&key, Role::Phone, Duration::from_millis(500)).await
    });
    let (_tcp, peer) = within(listener.accept()).await.unwrap();
    assert_eq!(peer.ip(), local);
    assert_eq!(attempt.await.unwrap().unwrap_err(), ClientError::Timeout);
}
