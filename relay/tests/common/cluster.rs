//! Several relay nodes on one real `redis-server`, behind a real haproxy
//! run with the deployment's own configuration (`deploy/haproxy/haproxy.cfg`).
//! Every process listens on a free loopback port and is killed on drop.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tandem_proto::{DeviceKey, Role};

use super::{Device, Relay, ws_connect};

#[allow(unused_imports)]
pub use super::redis_server::{RedisServer as Redis, form_cluster, free_port};

/// Whether something answers on `addr` (TCP).
fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(200))
        .is_ok()
}

/// Start node `id` of the cluster on `redis` (plain WebSocket, a data
/// directory of its own under `dir`), trusting PROXY headers from loopback
/// (haproxy sends them).
pub fn node(dir: &Path, redis: &Redis, id: &str, extra: &[&str]) -> Relay {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).expect("node dir");
    let url = redis.url();
    let mut args = vec![
        "--store",
        "redis",
        "--redis-url",
        &url,
        "--node-id",
        id,
        "--trusted-proxies",
        "127.0.0.1/32",
        "--trusted-proxy-header",
        "proxy-protocol",
        "--restart-hint-ms",
        "200",
    ];
    args.extend_from_slice(extra);
    Relay::start(&d, &args)
}

/// haproxy in front of `nodes`, with `deploy/haproxy/haproxy.cfg`.
pub struct Haproxy {
    child: Child,
    pub addr: String,
    pub url: String,
}

impl Haproxy {
    pub fn start(dir: &Path, nodes: &[&Relay]) -> Haproxy {
        // A free port is only free when `free_port` looked: a haproxy that
        // could not bind (another test took it) exits, and tries another.
        for _ in 0..5 {
            if let Some(lb) = Self::try_start(dir, nodes, free_port()) {
                return lb;
            }
        }
        panic!("haproxy did not start in 5 tries; its log: {}", dir.join("haproxy.log").display());
    }

    fn try_start(dir: &Path, nodes: &[&Relay], port: u16) -> Option<Haproxy> {
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg");
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("log");
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&cfg).env("TANDEM_LB_BIND", &addr);
        for (i, n) in nodes.iter().enumerate() {
            cmd.env(format!("TANDEM_NODE{}", i + 1), &n.addr);
        }
        let child =
            cmd.stdout(Stdio::null()).stderr(log).spawn().expect("haproxy (apt install haproxy)");
        let url = format!("ws://{addr}/v1/connect");
        let mut lb = Haproxy { child, addr, url };
        for _ in 0..200 {
            if let Ok(Some(_)) = lb.child.try_wait() {
                return None;
            }
            if listening(&lb.addr) {
                // Ours, not another test's listener: still running.
                std::thread::sleep(Duration::from_millis(50));
                return match lb.child.try_wait() {
                    Ok(None) => Some(lb),
                    _ => None,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("haproxy did not start on {}", lb.addr);
    }

    /// Connect and authenticate through the load balancer.
    pub async fn connect(&self, key: DeviceKey, role: Role) -> (Device, u32) {
        let ws = ws_connect(&self.url).await;
        Device::authenticate(ws, &self.addr, key, role).await
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `node` from 127.0.0.2 (127.0.0.1 is haproxy's address,
/// which the nodes expect a PROXY header from), with the harness's metrics
/// token: its status and body (status 0: no answer).
pub async fn get(node: &Relay, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let from = std::net::IpAddr::from([127, 0, 0, 2]);
    let Ok(mut s) = super::tcp_from(&node.addr, from).await else { return (0, String::new()) };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\n\r\n",
        super::METRICS_TOKEN
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// `GET /readyz` on `node` (see [`get`]): its status.
pub async fn ready(node: &Relay) -> u16 {
    get(node, "/readyz").await.0
}

/// Poll `/readyz` on `node` every 100 ms until it answers `want` or `secs`
/// passed; the last status.
pub async fn wait_ready(node: &Relay, want: u16, secs: u64) -> u16 {
    let mut status = 0;
    for _ in 0..secs * 10 {
        status = ready(node).await;
        if status == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    status
}
