//! Test harness: a real `tandem-relay` process on 127.0.0.1:0 with its own
//! data directory, and a raw WebSocket device that speaks relay frames.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::Frame;
use tandem_proto::relay_auth::prove;
use tandem_proto::{DeviceId, DeviceKey, ErrorCode, Role};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A relay process.
pub struct Relay {
    child: Child,
    pub dir: PathBuf,
    pub url: String,
    pub addr: String,
    args: Vec<String>,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tandem-relay")
}

impl Relay {
    /// Start a plain-WebSocket relay on a free loopback port with `args`.
    pub fn start(dir: &Path, args: &[&str]) -> Relay {
        Self::start_on(dir, "127.0.0.1:0", args.iter().map(|s| (*s).to_owned()).collect())
    }

    fn start_on(dir: &Path, listen: &str, args: Vec<String>) -> Relay {
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
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn tandem-relay");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("tandem-relay listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let addr = url.trim_start_matches("ws://").trim_end_matches("/v1/connect").to_owned();
        Relay { child, dir: dir.to_owned(), url, addr, args }
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
            let r =
                std::panic::catch_unwind(|| Self::start_on(&self.dir, &addr, self.args.clone()));
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default()
    }

    /// GET a path over plain HTTP; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(&self.addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
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

impl Device {
    pub fn id(&self) -> DeviceId {
        self.key.public().device_id()
    }

    /// Connect and authenticate; panics unless `AuthOk` arrives.
    pub async fn connect(relay: &Relay, key: DeviceKey, role: Role) -> (Device, u32) {
        let mut d = Device {
            key,
            role,
            ws: ws_connect(&relay.url).await,
            backlog: Vec::new(),
            auto_pong: true,
        };
        d.send(&Frame::Hello { min_version: 1, max_version: 1, role }).await;
        let challenge = d.recv().await;
        let auth = prove(&d.key, role, &relay.addr, &challenge).expect("prove");
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
        self.ws.send(Message::Binary(f.encode().expect("encode").into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        let _ = self.ws.send(m).await;
    }

    /// The next frame (5 s deadline), answering pings if `auto_pong`.
    pub async fn recv(&mut self) -> Frame {
        self.recv_within(Duration::from_secs(5)).await.expect("a frame in time")
    }

    pub async fn recv_within(&mut self, d: Duration) -> Result<Frame, End> {
        if !self.backlog.is_empty() {
            return Ok(self.backlog.remove(0));
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(m) => m,
                Err(_) => panic!("no frame within {d:?}"),
            };
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    let f = Frame::decode(&b).expect("relay sent a valid frame");
                    if let (true, Frame::Ping { nonce }) = (self.auto_pong, &f) {
                        let pong = Frame::Pong { nonce: *nonce };
                        self.send(&pong).await;
                        continue;
                    }
                    return Ok(f);
                }
                Some(Ok(Message::Close(c))) => {
                    return Err(End::Closed(c.map_or(1005, |c| u16::from(c.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(End::Dropped),
            }
        }
    }

    /// Wait for a frame matching `pred`, keeping others in the backlog.
    pub async fn expect<F: Fn(&Frame) -> bool>(&mut self, what: &str, pred: F) -> Frame {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let mut seen = Vec::new();
        loop {
            let f = match self.recv_within(Duration::from_secs(5)).await {
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
