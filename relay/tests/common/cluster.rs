//! Several relay nodes on one real `redis-server`, behind a real haproxy
//! run with the deployment's own configuration (`deploy/haproxy/haproxy.cfg`).
//! Every process listens on a free loopback port and is killed on drop.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tandem_proto::{DeviceKey, Role};

use super::{Device, Relay, ws_connect};

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Whether something answers on `addr` (TCP).
fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(200))
        .is_ok()
}

/// A `redis-server` of its own (never the machine's 6379), with AOF and an
/// fsync per write, so a `kill -9` loses nothing it acknowledged.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = Redis { child: None, port: free_port(), dir };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).expect("log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt install redis-server)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        for _ in 0..200 {
            if listening(&addr) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on {addr}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -9`, then start again on the same port and files (AOF).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
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
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg");
        let port = free_port();
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
        let lb = Haproxy { child, addr, url };
        for _ in 0..200 {
            if listening(&lb.addr) {
                return lb;
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
