//! `tandem pair --link-base`: a QR code that opens a web client on another
//! origin than the relay's carries the relay's origin in its payload, so the
//! client knows which relay to use; the default link (the relay's own
//! origin) does not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Agent, now_unix, zbarimg};
use tandem_proto::qr::PairingLink;
use tokio_util::sync::CancellationToken;

/// `tandem pair` against `relay`, returning the link it shows (printed and
/// drawn as a QR code, which must agree).
fn shown_link(dir: &Path, relay: &str, link_base: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("--data-dir").arg(dir).args(["--name", "build-box", "pair", "--relay", relay]);
    if let Some(base) = link_base {
        cmd.args(["--link-base", base]);
    }
    cmd.args(["--timeout-secs", "60", "--yes", "--print-url", "--no-terminal-qr", "--qr-png"])
        .arg(dir.join("qr.png"))
        .stderr(Stdio::null());
    let agent = Agent::spawn(cmd);
    let printed = agent
        .line_starting("pairing link: ")
        .trim()
        .trim_start_matches("pairing link: ")
        .to_owned();
    assert_eq!(zbarimg(&dir.join("qr.png")), printed, "the QR code carries the printed link");
    printed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_base_on_another_origin_puts_the_relay_in_the_qr_payload() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(tandem_relay::run(
        listener,
        tandem_relay::Config::new(dir.path().join("relay")),
        shutdown.clone(),
    ));
    let url = format!("ws://127.0.0.1:{port}/v1/connect");

    // A web client hosted elsewhere: the payload names the relay.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let link = shown_link(&elsewhere, &url, Some("https://app.example.com/p"));
    let parsed = PairingLink::parse(&link, now_unix()).unwrap();
    assert_eq!(parsed.origin, "https://app.example.com");
    assert_eq!(parsed.path, "/p");
    assert_eq!(parsed.payload.relay.as_deref(), Some(format!("http://127.0.0.1:{port}").as_str()));
    assert_eq!(parsed.relay_origin(), format!("http://127.0.0.1:{port}"));

    // The relay's own web client: the link's origin is the relay's; no relay field.
    let own = dir.path().join("own");
    std::fs::create_dir_all(&own).unwrap();
    let link = shown_link(&own, &url, None);
    let parsed = PairingLink::parse(&link, now_unix()).unwrap();
    assert_eq!(parsed.origin, format!("http://127.0.0.1:{port}"));
    assert_eq!(parsed.payload.relay, None);

    shutdown.cancel();
    let _ = relay.await;
}
