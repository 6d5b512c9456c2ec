//! Test harness: a real `tandem-relay` process on 127.0.0.1:0 with its own
//! data directory, and a raw WebSocket device that speaks relay frames.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::frame::Frame;
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PairedPeer, PhonePairing};
use tandem_proto::qr::QrPayload;
use tandem_proto::relay_auth::prove;
use tandem_proto::{DeviceId, DeviceKey, ErrorCode, Role};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod cluster;
pub mod push;
/// A `redis-server` of a test's own (shared with the store's tests).
#[path = "../support/redis.rs"]
pub mod redis_server;

/// A relay process.
pub struct Relay {
    child: Child,
    pub dir: PathBuf,
    pub url: String,
    pub addr: String,
    args: Vec<String>,
    /// Extra environment of the process (e.g. `FAILPOINTS`), kept for restarts.
    envs: Vec<(String, String)>,
    /// The metrics listener's address (`--metrics-listen`), once bound.
    pub metrics_addr: Option<String>,
}

/// The bearer token the harness's relays serve `/metrics` to.
pub const METRICS_TOKEN: &str = "test-metrics-token";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tandem-relay")
}

impl Relay {
    /// Start a plain-WebSocket relay on a free loopback port with `args`
    /// (and the harness's `--metrics-token`).
    pub fn start(dir: &Path, args: &[&str]) -> Relay {
        let mut all = vec!["--metrics-token".to_owned(), METRICS_TOKEN.to_owned()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        Self::start_on(dir, "127.0.0.1:0", all, Vec::new())
    }

    /// [`Relay::start`] with extra environment variables (kept for restarts),
    /// e.g. `("FAILPOINTS", "relay.enqueue=1*return")`.
    pub fn start_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Relay {
        let mut all = vec!["--metrics-token".to_owned(), METRICS_TOKEN.to_owned()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let envs = envs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Self::start_on(dir, "127.0.0.1:0", all, envs)
    }

    /// Start a relay with exactly `args` (no metrics token), listening on `listen`.
    pub fn start_bare(dir: &Path, listen: &str, args: &[&str]) -> Relay {
        Self::start_on(dir, listen, args.iter().map(|s| (*s).to_owned()).collect(), Vec::new())
    }

    fn start_on(dir: &Path, listen: &str, args: Vec<String>, envs: Vec<(String, String)>) -> Relay {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))
            .expect("log file");
        let mut child = Command::new(bin())
            .args(["--listen", listen, "--tls", "off"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(&args)
            .env("TANDEM_RELAY_LOG", "debug")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn tandem-relay");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let mut metrics_addr = None;
        loop {
            line.clear();
            stdout.read_line(&mut line).expect("read the listening line");
            match line.trim().strip_prefix("tandem-relay metrics on http://") {
                Some(rest) => metrics_addr = Some(rest.trim_end_matches("/metrics").to_owned()),
                None => break,
            }
        }
        let url = line
            .trim()
            .strip_prefix("tandem-relay listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let addr = url.trim_start_matches("ws://").trim_end_matches("/v1/connect").to_owned();
        Relay { child, dir: dir.to_owned(), url, addr, args, envs, metrics_addr }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status.
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("wait")
    }

    /// Start again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.clone();
        let mut last = None;
        for _ in 0..50 {
            let r = std::panic::catch_unwind(|| {
                Self::start_on(&self.dir, &addr, self.args.clone(), self.envs.clone())
            });
            match r {
                Ok(r) => {
                    *self = r;
                    return;
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        std::panic::resume_unwind(last.expect("tried"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Panic unless the process runs and answers `/healthz` with 200.
    pub async fn assert_healthy(&mut self) {
        assert!(self.alive(), "the relay process exited; log:\n{}", self.log());
        let (status, body) = self.get("/healthz").await;
        assert_eq!((status, body.trim()), (200, "ok"), "healthz");
    }

    /// The `/metrics` text (with the harness's token).
    pub async fn metrics(&self) -> String {
        let auth = format!("Authorization: Bearer {METRICS_TOKEN}");
        let (status, body) = self.get_with("/metrics", &[&auth]).await;
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// Poll `/metrics` until `series` has `value` (5 s), returning the text.
    pub async fn wait_metric(&self, series: &str, value: f64) -> String {
        self.wait_metric_within(series, value, 5).await
    }

    /// Poll `/metrics` until `series` has `value` (`secs` seconds), returning the text.
    pub async fn wait_metric_within(&self, series: &str, value: f64, secs: u64) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let m = self.metrics().await;
            if metric(&m, series) == Some(value) {
                return m;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{series} never became {value}:\n{m}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default()
    }

    /// Wait (up to 10 s) until the log holds `what`; panics with the log if
    /// it never does.
    pub async fn wait_log(&self, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.log().contains(what) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log never said {what:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET a path over plain HTTP; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.get_with(path, &[]).await
    }

    /// GET a path with extra header lines; returns (status, body).
    pub async fn get_with(&self, path: &str, headers: &[&str]) -> (u16, String) {
        http_get(&self.addr, path, headers).await
    }
}

/// GET `path` from `addr` over plain HTTP with extra header lines; returns
/// (status, body).
pub async fn http_get(addr: &str, path: &str, headers: &[&str]) -> (u16, String) {
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A close frame with this code.
    Closed(u16),
    /// The socket ended without a close frame.
    Dropped,
}

/// A device speaking raw relay frames.
pub struct Device {
    pub key: DeviceKey,
    pub role: Role,
    pub ws: Ws,
    /// Frames received while waiting for something else.
    pub backlog: Vec<Frame>,
    /// Answer relay pings automatically.
    pub auto_pong: bool,
}

pub fn new_key() -> DeviceKey {
    DeviceKey::generate(&mut Entropy::os()).expect("key")
}

pub async fn ws_connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connect");
    ws
}

/// A WebSocket whose socket has a tiny receive buffer (no autotuning): a
/// device that does not read soon makes the relay's writes block.
pub async fn ws_connect_small_buffer(relay: &Relay) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = sock.connect(relay.addr.parse().expect("addr")).await.expect("connect");
    let (ws, _) =
        tokio_tungstenite::client_async(relay.url.as_str(), MaybeTlsStream::Plain(stream))
            .await
            .expect("websocket handshake");
    ws
}

/// A TCP connection to `addr` from the local address `from` (any port):
/// several loopback addresses (127.0.0.x) stand for several clients.
pub async fn tcp_from(addr: &str, from: std::net::IpAddr) -> std::io::Result<TcpStream> {
    let remote: std::net::SocketAddr = addr.parse().expect("addr");
    let sock = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(std::net::SocketAddr::new(from, 0))?;
    sock.connect(remote).await
}

/// A WebSocket to `relay` from the local address `from`.
pub async fn ws_connect_from(relay: &Relay, from: std::net::IpAddr) -> Result<Ws, String> {
    let stream = tcp_from(&relay.addr, from).await.map_err(|e| e.to_string())?;
    tokio_tungstenite::client_async(relay.url.as_str(), MaybeTlsStream::Plain(stream))
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

impl Device {
    /// Connect from the local address `from` and authenticate.
    pub async fn connect_from(
        relay: &Relay,
        key: DeviceKey,
        role: Role,
        from: std::net::IpAddr,
    ) -> (Device, u32) {
        let ws = ws_connect_from(relay, from).await.expect("websocket from a source address");
        Self::authenticate(ws, &relay.addr, key, role).await
    }

    pub fn id(&self) -> DeviceId {
        self.key.public().device_id()
    }

    /// A connected but not yet authenticated device with a fresh key.
    pub async fn raw(relay: &Relay, role: Role) -> Device {
        Device {
            key: new_key(),
            role,
            ws: ws_connect(&relay.url).await,
            backlog: Vec::new(),
            auto_pong: true,
        }
    }

    /// Connect and authenticate; panics unless `AuthOk` arrives.
    pub async fn connect(relay: &Relay, key: DeviceKey, role: Role) -> (Device, u32) {
        let ws = ws_connect(&relay.url).await;
        Self::authenticate(ws, &relay.addr, key, role).await
    }

    /// Connect and authenticate saying `Hello{1, max_level}`; panics unless
    /// `AuthOk` arrives.
    pub async fn connect_at(
        relay: &Relay,
        key: DeviceKey,
        role: Role,
        max_level: u8,
    ) -> (Device, u32) {
        let ws = ws_connect(&relay.url).await;
        Self::authenticate_at(ws, &relay.addr, key, role, max_level).await
    }

    /// Authenticate on an open WebSocket to the relay reached as `addr`
    /// (protocol level 1).
    pub async fn authenticate(ws: Ws, addr: &str, key: DeviceKey, role: Role) -> (Device, u32) {
        Self::authenticate_at(ws, addr, key, role, 1).await
    }

    /// [`Self::authenticate`] saying `Hello{1, max_level}`.
    pub async fn authenticate_at(
        ws: Ws,
        addr: &str,
        key: DeviceKey,
        role: Role,
        max_level: u8,
    ) -> (Device, u32) {
        let mut d = Device { key, role, ws, backlog: Vec::new(), auto_pong: true };
        d.send(&Frame::Hello { min_version: 1, max_version: max_level, role }).await;
        let challenge = d.recv().await;
        let auth = prove(&d.key, role, addr, &challenge).expect("prove");
        d.send(&auth).await;
        match d.recv().await {
            Frame::AuthOk { device_id, queued, .. } => {
                assert_eq!(device_id, d.id());
                (d, queued)
            }
            other => panic!("expected AuthOk, got {other:?}"),
        }
    }

    pub async fn send(&mut self, f: &Frame) {
        let bytes = f.encode().expect("encode");
        record(&bytes);
        self.ws.send(Message::Binary(bytes.into())).await.expect("send");
    }

    /// Send a frame; `false` if the connection is already gone.
    pub async fn try_send(&mut self, f: &Frame) -> bool {
        let bytes = f.encode().expect("encode");
        record(&bytes);
        self.ws.send(Message::Binary(bytes.into())).await.is_ok()
    }

    pub async fn send_raw(&mut self, m: Message) {
        match &m {
            Message::Binary(b) => record(b),
            Message::Text(t) => record(t.as_bytes()),
            _ => {}
        }
        let _ = self.ws.send(m).await;
    }

    /// The next frame (5 s deadline), answering pings if `auto_pong`.
    pub async fn recv(&mut self) -> Frame {
        self.recv_within(Duration::from_secs(5)).await.expect("a frame in time")
    }

    pub async fn recv_within(&mut self, d: Duration) -> Result<Frame, End> {
        match self.next_within(d).await {
            Some(r) => r,
            None => panic!("no frame within {d:?}"),
        }
    }

    /// The next frame or end of the connection within `d`; `None` if
    /// nothing happened in time. Answers pings if `auto_pong`.
    pub async fn next_within(&mut self, d: Duration) -> Option<Result<Frame, End>> {
        if !self.backlog.is_empty() {
            return Some(Ok(self.backlog.remove(0)));
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    let f = Frame::decode(&b).expect("relay sent a valid frame");
                    if let (true, Frame::Ping { nonce }) = (self.auto_pong, &f) {
                        let pong = Frame::Pong { nonce: *nonce };
                        self.send(&pong).await;
                        continue;
                    }
                    return Some(Ok(f));
                }
                Some(Ok(Message::Close(c))) => {
                    return Some(Err(End::Closed(c.map_or(1005, |c| u16::from(c.code)))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Err(End::Dropped)),
            }
        }
    }

    /// Every frame that arrives within `d` (stops early if the connection
    /// ends: that is returned too).
    pub async fn collect_for(&mut self, d: Duration) -> (Vec<Frame>, Option<End>) {
        let deadline = tokio::time::Instant::now() + d;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                None => return (frames, None),
                Some(Ok(f)) => frames.push(f),
                Some(Err(e)) => return (frames, Some(e)),
            }
        }
    }

    /// Panic if a delivery, an error or the end of the connection comes
    /// within `d` (pings and presence are fine).
    pub async fn assert_quiet(&mut self, d: Duration) {
        let (frames, end) = self.collect_for(d).await;
        assert_eq!(end, None, "the connection ended; frames before: {frames:?}");
        let noisy: Vec<_> = frames
            .iter()
            .filter(|f| !matches!(f, Frame::Ping { .. } | Frame::Presence { .. }))
            .collect();
        assert!(noisy.is_empty(), "expected nothing, got {noisy:?}");
    }

    /// Wait for a frame matching `pred`, keeping others in the backlog.
    pub async fn expect<F: Fn(&Frame) -> bool>(&mut self, what: &str, pred: F) -> Frame {
        self.expect_within(what, Duration::from_secs(5), pred).await
    }

    /// [`Self::expect`] with `d` to wait for each frame.
    pub async fn expect_within<F: Fn(&Frame) -> bool>(
        &mut self,
        what: &str,
        d: Duration,
        pred: F,
    ) -> Frame {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let mut seen = Vec::new();
        loop {
            let f = match self.recv_within(d).await {
                Ok(f) => f,
                Err(e) => panic!("waiting for {what}: connection ended {e:?} after {seen:?}"),
            };
            if pred(&f) {
                self.backlog.extend(seen);
                return f;
            }
            seen.push(f);
        }
    }

    /// Read until the connection closes; returns the close code and the
    /// frames seen before it.
    pub async fn until_closed(&mut self, within: Duration) -> (End, Vec<Frame>) {
        let mut frames = std::mem::take(&mut self.backlog);
        loop {
            match self.recv_within(within).await {
                Ok(f) => frames.push(f),
                Err(e) => return (e, frames),
            }
        }
    }

    /// `Ok{ref_id}` for `id`, or the error code it was refused with.
    pub async fn result_of(&mut self, id: u64) -> Result<(), ErrorCode> {
        let f = self
            .expect(&format!("answer to request {id}"), |f| {
                matches!(f, Frame::Ok { ref_id } if *ref_id == id)
                    || matches!(f, Frame::Error { ref_id, .. } if *ref_id == id)
            })
            .await;
        match f {
            Frame::Ok { .. } => Ok(()),
            Frame::Error { code, .. } => Err(code),
            _ => unreachable!(),
        }
    }

    /// `Send` a payload and wait for its answer.
    pub async fn send_to(
        &mut self,
        to: DeviceId,
        send_id: u64,
        payload: &[u8],
    ) -> Result<(), ErrorCode> {
        self.send(&Frame::Send { send_id, to, payload: payload.to_vec() }).await;
        self.result_of(send_id).await
    }

    /// The next `Deliver`: `(delivery_id, from, payload)`.
    pub async fn delivery(&mut self) -> (u64, DeviceId, Vec<u8>) {
        match self.expect("a delivery", |f| matches!(f, Frame::Deliver { .. })).await {
            Frame::Deliver { delivery_id, from, payload } => (delivery_id, from, payload),
            _ => unreachable!(),
        }
    }

    /// The next `n` deliveries, in the order they arrived.
    pub async fn deliveries(&mut self, n: usize) -> Vec<(u64, DeviceId, Vec<u8>)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.delivery().await);
        }
        out
    }

    /// Wait for `Presence{peer, online}`.
    pub async fn presence(&mut self, peer: DeviceId, online: bool) {
        let what = format!("presence of {peer} online={online}");
        self.expect(
            &what,
            |f| matches!(f, Frame::Presence { peer: p, online: o } if *p == peer && *o == online),
        )
        .await;
    }

    /// Close the connection cleanly and wait until it is gone.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    pub async fn authorize(&mut self, peer: DeviceId, id: u64) -> Result<(), ErrorCode> {
        self.send(&Frame::Authorize { request_id: id, peer }).await;
        self.result_of(id).await
    }
}

/// Connect a desktop and a phone and authorise them both ways.
pub async fn paired(relay: &Relay) -> (Device, Device) {
    let (mut desk, _) = Device::connect(relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(relay, new_key(), Role::Phone).await;
    desk.authorize(phone.id(), 1).await.expect("authorize phone");
    phone.authorize(desk.id(), 1).await.expect("authorize desktop");
    (desk, phone)
}

pub fn close_code(code: ErrorCode) -> End {
    End::Closed(code.close_code())
}

/// The value of one series (`name` or `name{label="value"}`) in a
/// Prometheus/OpenMetrics text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == series)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// Every frame the test's devices sent, once [`record_sent`] was called
/// (per process: nextest runs each test in its own).
static SENT: std::sync::Mutex<Option<Vec<Vec<u8>>>> = std::sync::Mutex::new(None);

fn record(bytes: &[u8]) {
    if let Some(v) = SENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
        v.push(bytes.to_vec());
    }
}

/// Start recording every message the devices send to the relay.
pub fn record_sent() {
    *SENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Vec::new());
}

/// Everything recorded so far.
pub fn sent_so_far() -> Vec<Vec<u8>> {
    SENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone().unwrap_or_default()
}

/// A pairing run through the relay with the real protocol, both ways authorised.
pub struct RealPair {
    pub desk: Device,
    pub phone: Device,
    /// The desktop's record of the phone.
    pub desk_view: PairedPeer,
    /// The phone's record of the desktop.
    pub phone_view: PairedPeer,
    /// The (now closed) mailbox.
    pub pairing_id: [u8; 16],
}

fn info(name: &str, platform: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: platform.into(),
        app_version: "0.1.0".into(),
        ephemeral: false,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Pair a new desktop and a new phone through `relay`'s mailbox with
/// `DesktopPairing`/`PhonePairing`, checking every relay hop on the way;
/// both sides then `Authorize` each other (as §6.8 orders) and the
/// mailbox is closed.
pub async fn pair_for_real(relay: &Relay) -> RealPair {
    let lo = std::net::IpAddr::from([127, 0, 0, 1]);
    pair_for_real_from(relay, lo, lo).await
}

/// [`pair_for_real`] with the desktop and the phone connecting from the
/// local addresses `desk_from` and `phone_from`.
pub async fn pair_for_real_from(
    relay: &Relay,
    desk_from: std::net::IpAddr,
    phone_from: std::net::IpAddr,
) -> RealPair {
    pair_for_real_between(relay, relay, desk_from, phone_from).await
}

/// [`pair_for_real_from`] with the desktop connected to `desk_relay` and the
/// phone to `phone_relay` (two nodes of one cluster).
pub async fn pair_for_real_between(
    desk_relay: &Relay,
    phone_relay: &Relay,
    desk_from: std::net::IpAddr,
    phone_from: std::net::IpAddr,
) -> RealPair {
    let mut e = Entropy::os();
    let (mut desk, _) = Device::connect_from(desk_relay, new_key(), Role::Desktop, desk_from).await;
    let (mut phone, _) =
        Device::connect_from(phone_relay, new_key(), Role::Phone, phone_from).await;
    let (desk_id, phone_id) = (desk.id(), phone.id());
    let now = unix_now();
    let offer = DesktopPairing::new(desk.key.clone(), now, 120, None, &mut e).expect("offer");
    let pid = offer.pairing_id();
    desk.send(&Frame::PairOpen { request_id: 7, pairing_id: pid, ttl_secs: 120 }).await;
    desk.result_of(7).await.expect("PairOpen");

    // The phone scans the QR code.
    let scanned = QrPayload::decode(&offer.payload().encode()).expect("QR");
    assert_eq!(scanned.pairing_id(), pid);
    let (phone_state, hello) =
        PhonePairing::start(&phone.key, &scanned, &info("test phone", "ios"), &mut e)
            .expect("hello");
    phone.send(&Frame::PairClaim { request_id: 8, pairing_id: pid, payload: hello.clone() }).await;
    phone.result_of(8).await.expect("PairClaim");

    let got = desk.expect("the claim", |f| matches!(f, Frame::PairMessage { .. })).await;
    let Frame::PairMessage { pairing_id, peer, payload } = got else { unreachable!() };
    assert_eq!((pairing_id, peer), (pid, phone_id), "the claim comes from the phone");
    assert_eq!(payload, hello, "the claim's payload is relayed byte for byte");
    let (desk_state, welcome) = offer
        .on_hello(&Envelope::decode(&payload).unwrap(), &info("test desk", "linux"), now, &mut e)
        .expect("welcome");
    desk.send(&Frame::PairMessage { pairing_id: pid, peer: phone_id, payload: welcome.clone() })
        .await;

    let got = phone.expect("the welcome", |f| matches!(f, Frame::PairMessage { .. })).await;
    let Frame::PairMessage { pairing_id, peer, payload } = got else { unreachable!() };
    assert_eq!((pairing_id, peer), (pid, desk_id), "peer is rewritten to the sender");
    assert_eq!(payload, welcome);
    let (phone_state, confirm) =
        phone_state.on_welcome(&Envelope::decode(&payload).unwrap()).expect("confirm");
    phone.send(&Frame::PairMessage { pairing_id: pid, peer: desk_id, payload: confirm }).await;

    let got = desk.expect("the confirm", |f| matches!(f, Frame::PairMessage { .. })).await;
    let Frame::PairMessage { peer, payload, .. } = got else { unreachable!() };
    assert_eq!(peer, phone_id);
    let user = desk_state.on_confirm(&Envelope::decode(&payload).unwrap()).expect("on_confirm");
    assert_eq!(user.phone_public().device_id(), phone_id, "the Noise key is the relay identity");
    assert_eq!(user.sas(), phone_state.sas(), "both screens show the same code");
    desk.authorize(phone_id, 9).await.expect("desktop authorises the phone");
    let (desk_view, result) = user.accept(&mut e).expect("accept");
    desk.send(&Frame::PairMessage { pairing_id: pid, peer: phone_id, payload: result }).await;

    let got = phone.expect("the result", |f| matches!(f, Frame::PairMessage { .. })).await;
    let Frame::PairMessage { payload, .. } = got else { unreachable!() };
    let phone_view = phone_state.on_result(&Envelope::decode(&payload).unwrap()).expect("result");
    assert_eq!(phone_view.public_key.device_id(), desk_id);
    assert_eq!(phone_view.sas, desk_view.sas);
    phone.authorize(desk_id, 9).await.expect("phone authorises the desktop");
    desk.send(&Frame::PairClose { request_id: 10, pairing_id: pid }).await;
    desk.result_of(10).await.expect("PairClose");
    RealPair { desk, phone, desk_view, phone_view, pairing_id: pid }
}
