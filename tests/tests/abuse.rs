//! Abuse from clients we did not write (issue 17): the Python suite in
//! tests/abuse/ (a raw WebSocket client, `websockets`, with the relay's
//! crypto written again from docs/PROTOCOL.md) throws malformed, oversized,
//! text, wrong-version and length-lying frames, replayed and tampered
//! authentications, unauthorised and revoked senders, a pairing-id brute
//! force, connection floods and slowloris at a real `tandem-relay` process,
//! and checks every answer against the documented close code or `Error`.
//! Meanwhile a real pair of devices (`tandem-client`, a desktop and a phone
//! with a mutual route) sends both ways; afterwards every one of its
//! payloads arrived exactly once, it never lost its connection, nothing from
//! a stranger reached it, and the relay still answers `/healthz`.
//!
//! Needs the relay binary (`cargo build -p tandem-relay`; or
//! `TANDEM_RELAY_BIN`) and a Python with `websockets` (`TANDEM_ABUSE_PYTHON`;
//! else the venv `<target dir>/abuse-venv`, made here when missing).
//! scripts/test.sh builds and makes both first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_client::proto::entropy::Entropy;
use tandem_client::proto::{DeviceId, DeviceKey, Role};
use tandem_client::{Client, ClientConfig, Event};
use tokio::sync::mpsc;

/// The directory cargo builds into: the test binary is `<dir>/debug/deps/abuse-…`.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_path_buf()
}

fn relay_bin() -> PathBuf {
    let bin = std::env::var_os("TANDEM_RELAY_BIN")
        .map_or_else(|| target_profile_dir().join("tandem-relay"), PathBuf::from);
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p tandem-relay (or set TANDEM_RELAY_BIN)",
        bin.display()
    );
    bin
}

/// A Python with `websockets`: `TANDEM_ABUSE_PYTHON`, or the venv beside the build.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_ABUSE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = target_profile_dir().parent().expect("target dir").join("abuse-venv");
    let py = venv.join("bin/python");
    let ready = Command::new(&py)
        .args(["-c", "import websockets.asyncio.client"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
        assert!(made.is_ok_and(|s| s.success()), "python3 -m venv {}", venv.display());
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "websockets>=14,<18"])
            .status();
        assert!(pip.is_ok_and(|s| s.success()), "pip install websockets");
    }
    py
}

/// A relay process, killed on drop.
struct Relay {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Relay {
    fn start(dir: &Path) -> Relay {
        let log = dir.join("relay.log");
        let mut child = Command::new(relay_bin())
            .args(["--listen", "127.0.0.1:0", "--tls", "off"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            // Short deadlines keep the slowloris cases within seconds.
            .args(["--request-timeout-secs", "2", "--handshake-timeout-secs", "2"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn tandem-relay");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the listening line");
        let addr = line
            .trim()
            .strip_prefix("tandem-relay listening on ws://")
            .and_then(|s| s.strip_suffix("/v1/connect"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Relay { child, addr, log }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    /// The status line of `GET path`.
    fn get(&self, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr)
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines().next().unwrap_or_default().to_owned()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one device of the pair saw.
#[derive(Default)]
struct Seen {
    /// Payloads from the peer, with how often each came.
    got: BTreeMap<Vec<u8>, u32>,
    /// Deliveries from anyone but the peer.
    strangers: u32,
    /// Connections lost after the first `Connected`.
    disconnects: Vec<String>,
    connected: u32,
}

/// Read `events`, acknowledging every delivery, into `seen`.
fn watch(
    client: Client,
    peer: DeviceId,
    mut events: mpsc::Receiver<Event>,
    seen: Arc<Mutex<Seen>>,
) {
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let mut s = seen.lock().expect("lock");
            match e {
                Event::Connected { .. } => s.connected += 1,
                Event::Disconnected { reason, code, .. } => {
                    s.disconnects.push(format!("{reason} ({code:?})"));
                }
                Event::Deliver { delivery_id, from, payload } => {
                    if from == peer {
                        *s.got.entry(payload).or_default() += 1;
                    } else {
                        s.strangers += 1;
                    }
                    client.ack(delivery_id);
                }
                _ => {}
            }
        }
    });
}

async fn start(url: &str, role: Role) -> (Client, mpsc::Receiver<Event>, DeviceId) {
    let key = DeviceKey::generate(&mut Entropy::os()).expect("key");
    let (client, mut events) = Client::start(ClientConfig::new(url, key, role));
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(Event::Connected { .. })) => {}
        other => panic!("{role:?} did not connect: {other:?}"),
    }
    let id = client.device_id();
    (client, events, id)
}

/// Send `"{tag} {i}"` to `to` every `every` until `stop`; the payloads sent
/// and the refusals.
async fn traffic(
    client: Client,
    to: DeviceId,
    tag: &'static str,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<Vec<u8>>, Vec<String>) {
    let mut sent = Vec::new();
    let mut answers = Vec::new();
    let mut tick = tokio::time::interval(every);
    let mut i = 0u32;
    while !*stop.borrow() {
        tick.tick().await;
        let payload = format!("{tag} {i}").into_bytes();
        answers.push(tokio::spawn(client.send(to, payload.clone())));
        sent.push(payload);
        i += 1;
    }
    let mut refused = Vec::new();
    for a in answers {
        match tokio::time::timeout(Duration::from_secs(20), a).await {
            Ok(Ok(Ok(()))) => {}
            other => refused.push(format!("{other:?}")),
        }
    }
    (sent, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_is_refused_with_its_documented_codes_and_costs_a_real_pair_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(dir.path());
    let py = python();
    let url = relay.url();

    // The real pair: a desktop and a phone with a mutual route.
    let (desktop, d_events, d_id) = start(&url, Role::Desktop).await;
    let (phone, p_events, p_id) = start(&url, Role::Phone).await;
    desktop.authorize(p_id).await.expect("authorize the phone");
    phone.authorize(d_id).await.expect("authorize the desktop");
    let d_seen = Arc::new(Mutex::new(Seen::default()));
    let p_seen = Arc::new(Mutex::new(Seen::default()));
    watch(desktop.clone(), p_id, d_events, d_seen.clone());
    watch(phone.clone(), d_id, p_events, p_seen.clone());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let to_phone = tokio::spawn(traffic(
        desktop.clone(),
        p_id,
        "desktop",
        Duration::from_millis(10),
        stop.clone(),
    ));
    let to_desktop =
        tokio::spawn(traffic(phone.clone(), d_id, "phone", Duration::from_millis(25), stop));

    // The abuse, meanwhile.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("abuse/abuse.py");
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/vectors/identity.json");
    let args = (py, script, vectors, relay.addr.clone(), hex(&p_id.0));
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&args.0)
            .arg(&args.1)
            .arg("--vectors")
            .arg(&args.2)
            .args(["--relay", &args.3, "--victim", &args.4])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("run abuse.py")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<&str> = stdout.lines().filter(|l| l.contains("\"ok\": false")).collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "abuse.py failed ({}):\n{}\n{stdout}\n{}",
        out.status,
        failed.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(summary.contains("\"failed\": 0"), "no summary: {stdout}");

    // The pair stops; everything it sent arrives, once.
    stop_tx.send(true).expect("stop");
    let (d_sent, d_refused) = to_phone.await.expect("join");
    let (p_sent, p_refused) = to_desktop.await.expect("join");
    assert!(d_refused.is_empty() && p_refused.is_empty(), "{d_refused:?} {p_refused:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = |seen: &Mutex<Seen>, sent: &[Vec<u8>]| {
            let s = seen.lock().expect("lock");
            sent.iter().all(|p| s.got.contains_key(p))
        };
        if all(&p_seen, &d_sent) && all(&d_seen, &p_sent) {
            break;
        }
        assert!(Instant::now() < deadline, "the pair lost payloads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (who, seen, sent) in [("phone", &p_seen, &d_sent), ("desktop", &d_seen, &p_sent)] {
        let s = seen.lock().expect("lock");
        let dups: u32 = s.got.values().map(|n| n - 1).sum();
        assert_eq!(s.got.len(), sent.len(), "{who}: every payload, nothing else");
        assert_eq!(dups, 0, "{who}: duplicates");
        assert_eq!(s.strangers, 0, "{who}: a stranger's frame got through");
        assert!(s.disconnects.is_empty(), "{who} lost its connection: {:?}", s.disconnects);
        assert_eq!(s.connected, 0, "{who} reconnected");
    }
    let mut relay = relay;
    assert!(matches!(relay.child.try_wait(), Ok(None)), "the relay exited");
    assert!(relay.get("/healthz").contains(" 200 "), "healthz");
    assert!(relay.get("/readyz").contains(" 200 "), "readyz");
    let log = std::fs::read_to_string(&relay.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "the relay panicked:\n{log}");
    eprintln!(
        "abuse suite: {summary}; the pair sent {} + {} payloads during {:.1} s, all delivered once",
        d_sent.len(),
        p_sent.len(),
        started.elapsed().as_secs_f64()
    );
    desktop.close().await;
    phone.close().await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
