//! `tandem up` as a person uses it: the agent starts a relay, shows a QR
//! code (decoded here with `zbarimg`, as a camera would), a phone pairs
//! through the relay with the real protocol, both show the same code, and
//! then the phone's task is answered (refused: no executor is configured).
//! `tandem devices` lists the phone; `tandem revoke` cuts it off at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tandem_client::{Client, ClientConfig, ClientError, Event};
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::{Link, LinkEvent};
use tandem_proto::message::{Decoded, DeviceInfo, Message};
use tandem_proto::pairing::PhonePairing;
use tandem_proto::qr::PairingLink;
use tandem_proto::{DeviceKey, ErrorCode, Role};
use tokio::sync::mpsc;

struct Agent {
    child: Child,
    lines: std_mpsc::Receiver<String>,
}

impl Agent {
    fn up(dir: &Path) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("--data-dir")
            .arg(dir)
            .args(["--name", "build-box", "up", "--listen", "127.0.0.1:0", "--yes", "--print-url"])
            .args(["--no-terminal-qr", "--qr-png"])
            .arg(dir.join("qr.png"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent { child, lines }
    }

    fn line_starting(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.trim_start().starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("the agent never printed a line starting with {prefix:?}"),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tandem(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "tandem {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn zbarimg(png: &Path) -> String {
    let out = Command::new("zbarimg").args(["--raw", "-q"]).arg(png).output().unwrap_or_else(|e| {
        panic!("zbarimg is needed (Debian package zbar-tools; ./scripts/test.sh installs it): {e}")
    });
    assert!(out.status.success(), "zbarimg could not read {}", png.display());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn next(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
        if pred(&e) {
            return e;
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_pairs_with_tandem_up_from_the_qr_code_and_is_answered_then_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::up(dir.path());
    let printed = agent
        .line_starting("pairing link: ")
        .trim()
        .trim_start_matches("pairing link: ")
        .to_owned();
    // The camera's view: decode the PNG.
    let scanned = zbarimg(&dir.path().join("qr.png"));
    assert_eq!(scanned, printed, "the QR code carries the printed link");
    let link = PairingLink::parse(&scanned, now_unix()).unwrap();
    let relay_url = format!("{}/v1/connect", link.relay_origin().replacen("http://", "ws://", 1));

    // The phone connects, claims the code and runs the handshake.
    let phone_key = DeviceKey::generate(&mut Entropy::os()).unwrap();
    let (phone, mut events) =
        Client::start(ClientConfig::new(relay_url, phone_key.clone(), Role::Phone));
    next(&mut events, "connected", |e| matches!(e, Event::Connected { .. })).await;
    let mut e = Entropy::os();
    let me =
        DeviceInfo { name: "Ana's phone".into(), platform: "test".into(), app_version: "0".into() };
    let (pairing, hello) = PhonePairing::start(&phone_key, &link.payload, &me, &mut e).unwrap();
    let pid = link.payload.pairing_id();
    let desktop = link.payload.desktop.device_id();
    phone.pair_claim(pid, hello).await.unwrap();
    let Event::PairMessage { payload, .. } =
        next(&mut events, "welcome", |e| matches!(e, Event::PairMessage { .. })).await
    else {
        unreachable!()
    };
    let (waiting, confirm) = pairing.on_welcome(&Envelope::decode(&payload).unwrap()).unwrap();
    assert_eq!(waiting.desktop_info().name, "build-box");
    phone.pair_message(pid, desktop, confirm).await.unwrap();
    // The desktop shows the phone's name and the same code.
    let code_line = agent.line_starting("Code: ");
    assert_eq!(code_line.trim(), format!("Code: {}", waiting.sas()));
    let Event::PairMessage { payload, .. } =
        next(&mut events, "result", |e| matches!(e, Event::PairMessage { .. })).await
    else {
        unreachable!()
    };
    let paired = waiting.on_result(&Envelope::decode(&payload).unwrap()).unwrap();
    phone.authorize(desktop).await.unwrap();
    agent.line_starting("Paired with Ana's phone");
    let mut link_state = Link::from_paired(paired, OutboxLimits::default());

    // A task goes out; with no executor configured it is refused, clearly.
    let task = Message::TaskSubmit {
        task_id: "t-1".into(),
        text: "fix the failing test".into(),
        workspace: None,
        executor: None,
    };
    let (_, record) = link_state.send(task.encode().unwrap()).unwrap();
    agent.line_starting("Connected.");
    phone.send(desktop, record).await.unwrap();
    let refused = loop {
        let Event::Deliver { delivery_id, payload, .. } =
            next(&mut events, "the answer", |e| matches!(e, Event::Deliver { .. })).await
        else {
            unreachable!()
        };
        phone.ack(delivery_id);
        let mut found = None;
        for ev in link_state.receive(&phone_key, &payload, &mut e).unwrap() {
            if let LinkEvent::Message { message, .. } = ev {
                found = Some(Message::decode(&message).unwrap());
            }
        }
        if let Some(m) = found {
            break m;
        }
    };
    assert_eq!(
        refused,
        Decoded::Known(Message::Refused {
            task_id: Some("t-1".into()),
            code: "no_executor".into(),
            message: "no executor is configured on this computer".into(),
        })
    );
    // The desktop acknowledged the task end to end.
    assert!(link_state.outbound().is_empty());

    // `tandem devices` lists the phone; `tandem revoke` cuts it off at the relay.
    let devices = tandem(dir.path(), &["devices"]);
    assert!(devices.contains("Ana's phone"), "{devices}");
    let revoked = tandem(dir.path(), &["revoke", "ana's phone"]);
    assert!(revoked.contains("The relay refuses it from now on"), "{revoked}");
    let (_, record) = link_state.send(b"{}".to_vec()).unwrap();
    match phone.send(desktop, record).await {
        Err(ClientError::Refused(code, _)) => assert_eq!(code, ErrorCode::NotAuthorized),
        other => panic!("a revoked phone's frame was not refused: {other:?}"),
    }
    assert!(!tandem(dir.path(), &["devices"]).contains("Ana's phone"));
    phone.close().await;
    drop(agent);
}
