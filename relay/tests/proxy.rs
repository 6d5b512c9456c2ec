//! Client addresses (PROTOCOL.md §6.11) against a real relay process: a
//! trusted proxy's `X-Forwarded-For` or PROXY header sets the address the
//! per-address limits count under; the same headers from anyone else change
//! nothing; IPv6 clients count per /64.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Device, End, Relay, Ws, close_code, metric, new_key, tcp_from};
use tandem_proto::frame::Frame;
use tandem_proto::relay_auth::prove;
use tandem_proto::{ErrorCode, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn lo(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A WebSocket from local address `from`, with `prefix` bytes written first
/// (a PROXY header) and `xff` as `X-Forwarded-For`, if given.
async fn ws(relay: &Relay, from: IpAddr, prefix: &[u8], xff: Option<&str>) -> Result<Ws, String> {
    let mut stream = tcp_from(&relay.addr, from).await.map_err(|e| e.to_string())?;
    stream.write_all(prefix).await.map_err(|e| e.to_string())?;
    let mut req = relay.url.as_str().into_client_request().unwrap();
    if let Some(v) = xff {
        req.headers_mut().insert("x-forwarded-for", v.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// Authenticate a fresh key on `ws`: the device on `AuthOk`, else how the
/// connection ended (an `Error` frame before the close is skipped).
async fn try_device(relay: &Relay, ws: Ws) -> Result<Device, End> {
    let mut d =
        Device { key: new_key(), role: Role::Phone, ws, backlog: Vec::new(), auto_pong: true };
    d.send(&Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone }).await;
    let challenge = d.recv().await;
    let proof = prove(&d.key, Role::Phone, &relay.addr, &challenge).unwrap();
    d.send(&proof).await;
    loop {
        match d.recv_within(Duration::from_secs(5)).await {
            Ok(Frame::AuthOk { .. }) => return Ok(d),
            Ok(Frame::Error { .. }) => {}
            Ok(other) => panic!("{other:?}"),
            Err(end) => return Err(end),
        }
    }
}

const REFUSED: fn() -> End = || close_code(ErrorCode::RateLimited);

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_names_the_client_and_from_anyone_else_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // One authenticated connection per client address; 127.0.0.2 is our proxy.
    let relay = Relay::start(
        dir.path(),
        &["--trusted-proxies", "127.0.0.2/32", "--max-connections-per-ip", "1"],
    );
    // Through the proxy: two clients, each once; a second device of the
    // first client is refused although it comes over the same proxy.
    let a = try_device(&relay, ws(&relay, lo(2), b"", Some("203.0.113.1")).await.unwrap()).await;
    let b = try_device(&relay, ws(&relay, lo(2), b"", Some("6.6.6.6, 203.0.113.2")).await.unwrap())
        .await;
    assert!(a.is_ok() && b.is_ok());
    let again = ws(&relay, lo(2), b"", Some("203.0.113.2")).await.unwrap();
    assert_eq!(try_device(&relay, again).await.err(), Some(REFUSED()));
    // IPv6 clients count per /64: another host of the same /64 is the same
    // client, one of the next /64 is not.
    let c = ws(&relay, lo(2), b"", Some("2001:db8:1:2::1")).await.unwrap();
    let c = try_device(&relay, c).await;
    assert!(c.is_ok());
    let same64 = ws(&relay, lo(2), b"", Some("[2001:db8:1:2:ffff::9]:4000")).await.unwrap();
    assert_eq!(try_device(&relay, same64).await.err(), Some(REFUSED()));
    let next64 = ws(&relay, lo(2), b"", Some("2001:db8:1:3::1")).await.unwrap();
    let next64 = try_device(&relay, next64).await;
    assert!(next64.is_ok());

    // Not our proxy: the header is ignored; 127.0.0.3 is the client, once.
    let x = ws(&relay, lo(3), b"", Some("203.0.113.3")).await.unwrap();
    let x = try_device(&relay, x).await;
    assert!(x.is_ok());
    let y = ws(&relay, lo(3), b"", Some("203.0.113.4")).await.unwrap();
    assert_eq!(try_device(&relay, y).await.err(), Some(REFUSED()));

    // The log names the client, not the proxy.
    let log = relay.log();
    assert!(log.contains("peer=203.0.113.1:0"), "the client's address is not in the log");
    assert!(!log.contains("peer=203.0.113.3"), "an untrusted header reached the log");
    let m = relay.metrics().await;
    let series = "tandem_relay_limit_refusals_total{limit=\"connections_per_ip\"}";
    assert_eq!(metric(&m, series), Some(3.0));
}

fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[tokio::test]
async fn a_proxy_header_from_a_trusted_proxy_names_the_client_and_from_anyone_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &[
            "--trusted-proxies",
            "127.0.0.2",
            "--trusted-proxy-header",
            "proxy-protocol",
            "--max-connections-per-ip",
            "1",
        ],
    );
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 443\r\n").into_bytes();
    // Version 1 and 2 headers name two clients; each may have one device.
    let a = ws(&relay, lo(2), &v1("203.0.113.1"), None).await.unwrap();
    let a = try_device(&relay, a).await.unwrap();
    let b = ws(&relay, lo(2), &proxy_v2([203, 0, 113, 2], 40001), None).await.unwrap();
    let _b = try_device(&relay, b).await.unwrap();
    let a2 = ws(&relay, lo(2), &proxy_v2([203, 0, 113, 1], 40002), None).await.unwrap();
    assert_eq!(try_device(&relay, a2).await.err(), Some(REFUSED()));
    // X-Forwarded-For is not how this proxy speaks: ignored.
    let a3 = ws(&relay, lo(2), &v1("203.0.113.1"), Some("203.0.113.77")).await.unwrap();
    assert_eq!(try_device(&relay, a3).await.err(), Some(REFUSED()));
    // The trusted proxy must send the header: without one, no connection.
    assert!(ws(&relay, lo(2), b"", None).await.is_err());
    // Garbage in the header: no connection either.
    assert!(ws(&relay, lo(2), b"PROXY TCP4 nonsense\r\n", None).await.is_err());

    // From anyone else a PROXY header is not read: it is not HTTP, and the
    // connection is refused with 400 without naming anyone.
    let mut s = tcp_from(&relay.addr, lo(3)).await.unwrap();
    s.write_all(&v1("203.0.113.9")).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(buf.starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&buf));
    // ... and 127.0.0.3 itself is the client.
    let x = try_device(&relay, ws(&relay, lo(3), b"", None).await.unwrap()).await;
    assert!(x.is_ok());
    let y = try_device(&relay, ws(&relay, lo(3), b"", None).await.unwrap()).await;
    assert_eq!(y.err(), Some(REFUSED()));

    let log = relay.log();
    assert!(
        log.contains("peer=203.0.113.1:40000"),
        "the client's address is not in the log:\n{log}"
    );
    assert!(!log.contains("203.0.113.9"), "an untrusted header was read");
    let m = relay.metrics().await;
    assert!(metric(&m, "tandem_relay_limit_refusals_total{limit=\"proxy_header\"}") >= Some(2.0));
    drop(a);
}

#[tokio::test]
async fn devices_connect_over_ipv6_loopback_and_count_per_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_bare(
        dir.path(),
        "[::1]:0",
        &["--max-connections-per-ip", "1", "--metrics-token", common::METRICS_TOKEN],
    );
    let first = try_device(&relay, common::ws_connect(&relay.url).await).await;
    assert!(first.is_ok(), "{:?}", first.err());
    // ::1 and every other address of ::/64 are one client.
    let second = try_device(&relay, common::ws_connect(&relay.url).await).await;
    assert_eq!(second.err(), Some(REFUSED()));
    assert!(relay.log().contains("peer=[::1]:"), "{}", relay.log());
}
