//! Measure the relay's memory per idle authenticated connection.
//!
//! Starts a `tandem-relay` process (plain WebSocket, or TLS with a
//! self-signed certificate), opens N connections that each authenticate
//! with their own device key and then stay idle, and reports the relay's
//! resident set size (from `/proc/<pid>/status`) before and after, divided
//! by N. Linux only.
//!
//! ```sh
//! cargo build --release -p tandem-relay --bins --examples
//! ulimit -n 20000
//! target/release/examples/idle_memory --relay target/release/tandem-relay -n 10000 [--tls] [--burst BYTES]
//! ```
//!
//! `--burst BYTES`: after authenticating, each connection sends one frame
//! with a payload of that many bytes (to a device it has no route to, so
//! the relay reads it whole and refuses it) before it idles: what the relay
//! keeps of a burst.
//!
//! The load generator of the benchmarks issue (`tandem-bench idle`) grows
//! out of this; this example exists so the relay issue's figure has a
//! reproducible command.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::Frame;
use tandem_proto::relay_auth::prove;
use tandem_proto::{DeviceKey, Role};
use tokio_tungstenite::tungstenite::Message;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
    let n: usize = arg("-n").map_or(10_000, |v| v.parse().unwrap());
    let tls = args.iter().any(|a| a == "--tls");
    let burst: Option<usize> = arg("--burst").map(|v| v.parse().unwrap());
    let relay_bin = arg("--relay").unwrap_or_else(|| "target/release/tandem-relay".into());
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(&relay_bin)
        .args(["--listen", "127.0.0.1:0", "--tls", if tls { "self-signed" } else { "off" }])
        .args(["--self-signed-names", "127.0.0.1", "--max-connections", "100000"])
        .args(["--max-connections-per-ip", "100000"])
        .args(["--connects-per-ip-per-minute", "1000000", "--ping-interval-secs", "3600"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("tandem-relay listening on ").unwrap().to_owned();
    let host = url.split("://").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let pid = child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);

    let connector = if tls {
        let pem = std::fs::read_to_string(dir.path().join("tls/self-signed-cert.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
    } else {
        None
    };
    let start = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut entropy = Entropy::os();
    for i in 0..n {
        let key = DeviceKey::generate(&mut entropy).unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            None,
            true,
            connector.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let hello = Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone };
        ws.send(Message::Binary(hello.encode().unwrap().into())).await.unwrap();
        let Some(Ok(Message::Binary(b))) = ws.next().await else { panic!("no challenge") };
        let auth = prove(&key, Role::Phone, &host, &Frame::decode(&b).unwrap()).unwrap();
        ws.send(Message::Binary(auth.encode().unwrap().into())).await.unwrap();
        let Some(Ok(Message::Binary(b))) = ws.next().await else { panic!("no AuthOk") };
        let f = Frame::decode(&b).unwrap();
        assert!(matches!(f, Frame::AuthOk { .. }), "connection {i}: {f:?}");
        if let Some(len) = burst {
            let to = tandem_proto::DeviceId([0xee; 16]);
            let send = Frame::Send { send_id: 1, to, payload: vec![0x5a; len] };
            ws.send(Message::Binary(send.encode().unwrap().into())).await.unwrap();
            let Some(Ok(Message::Binary(b))) = ws.next().await else { panic!("no answer") };
            assert!(matches!(Frame::decode(&b).unwrap(), Frame::Error { .. }));
        }
        conns.push(ws);
    }
    let connect_time = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    let burst = burst.map_or(String::new(), |b| format!(" burst={b}"));
    println!(
        "mode={}{burst} n={n} rss_before={before} KiB rss_after={after} KiB per_connection={:.0} B ({:.2} KiB) connect_time={:.1?}",
        if tls { "tls" } else { "plain" },
        per,
        per / 1024.0,
        connect_time
    );
    drop(conns);
    let _ = child.kill();
    let _ = child.wait();
}
