//! A `redis-server` of a test's own: a free loopback port, a temporary
//! directory, AOF on (`appendfsync always` unless told otherwise), no RDB
//! snapshots. Never the server on 6379. Killed when dropped.
//!
//! Shared by the relay's unit tests (`src/store/tests/`, through `#[path]`)
//! and its integration tests (`mod support { pub mod redis; }`, as
//! `tests/redis_store.rs` does). Also a replica
//! ([`RedisServer::start_replica_of`]) and a Sentinel
//! ([`RedisServer::start_sentinel`]).

#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` process (and the directory of its AOF).
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    fsync: &'static str,
    /// More arguments (`--replicaof`), or a sentinel's config file first.
    extra: Vec<String>,
    sentinel: bool,
    /// Its port is fixed (given, or it ran once: a restart keeps it).
    keep_port: bool,
}

impl RedisServer {
    /// A server with `appendfsync always` (every acknowledged write on disk).
    pub fn start() -> Self {
        Self::start_with("always")
    }

    /// A server with `appendfsync` `fsync` (`always`, `everysec`, `no`).
    pub fn start_with(fsync: &'static str) -> Self {
        Self::start_full(free_port(), fsync)
    }

    /// A server (`appendfsync always`) on `port` (from [`free_port`]).
    pub fn start_on(port: u16) -> Self {
        let mut s = Self::unstarted(port, "always");
        s.keep_port = true;
        s.spawn();
        s
    }

    /// A replica of the server on `primary` (AOF on, `appendfsync always`).
    pub fn start_replica_of(primary: u16) -> Self {
        let mut s = Self::unstarted(free_port(), "always");
        s.extra = vec!["--replicaof".into(), "127.0.0.1".into(), primary.to_string()];
        s.spawn();
        s
    }

    /// A Sentinel (`redis-server --sentinel`) watching the primary on
    /// `primary` under `name`, alone (quorum 1), quick to act (1 s).
    pub fn start_sentinel(primary: u16, name: &str) -> Self {
        let mut s = Self::unstarted(free_port(), "always");
        let conf = s.dir.path().join("sentinel.conf");
        let text = format!(
            "port {}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {primary} 1\n\
             sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n",
            s.port,
            s.dir.path().display()
        );
        std::fs::write(&conf, text).expect("the sentinel's config");
        s.extra = vec![conf.display().to_string()];
        s.sentinel = true;
        s.spawn();
        s
    }

    /// A node of a Redis Cluster (not yet joined: see [`form_cluster`]),
    /// its cluster bus on a free port of its own.
    pub fn start_cluster_node() -> Self {
        let mut s = Self::unstarted(free_port(), "always");
        let conf = s.dir.path().join("nodes.conf").display().to_string();
        s.extra = vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            conf,
            "--cluster-port".into(),
            free_port().to_string(),
            "--cluster-node-timeout".into(),
            "2000".into(),
        ];
        s.spawn();
        s
    }

    fn start_full(port: u16, fsync: &'static str) -> Self {
        let mut s = Self::unstarted(port, fsync);
        s.spawn();
        s
    }

    fn unstarted(port: u16, fsync: &'static str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self { child: None, port, dir, fsync, extra: Vec::new(), sentinel: false, keep_port: false }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where its AOF lives.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Start the process and wait until it, not another test's server that
    /// took the same port meanwhile (a free port is only free when
    /// [`free_port`] looked), answers. A server of its own that could not
    /// bind moves to another free port, unless it must keep its port (a
    /// restart): then the test stops with the reason.
    fn spawn(&mut self) {
        let fixed = self.keep_port;
        for _ in 0..5 {
            match self.spawn_once() {
                Ok(()) => {
                    self.keep_port = true;
                    return;
                }
                Err(why) if !fixed => {
                    eprintln!("redis-server on port {}: {why}; trying another port", self.port);
                    self.move_to(free_port());
                }
                Err(why) => panic!("redis-server on port {}: {why}", self.port),
            }
        }
        panic!("redis-server found no free port in 5 tries");
    }

    /// Use `port` instead of the current one (a sentinel's config says it).
    fn move_to(&mut self, port: u16) {
        let old = self.port;
        self.port = port;
        if self.sentinel
            && let Some(conf) = self.extra.first()
            && let Ok(text) = std::fs::read_to_string(conf)
        {
            let text = text.replacen(&format!("port {old}\n"), &format!("port {port}\n"), 1);
            std::fs::write(conf, text).expect("the sentinel's config");
        }
        if let Some(i) = self.extra.iter().position(|a| a == "--cluster-port")
            && let Some(bus) = self.extra.get_mut(i + 1)
        {
            *bus = free_port().to_string();
        }
    }

    fn spawn_once(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        if self.sentinel {
            cmd.args(&self.extra).arg("--sentinel");
        } else {
            cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "yes", "--appendfsync", self.fsync])
                .arg("--dir")
                .arg(self.dir.path())
                .args(&self.extra);
        }
        let child = cmd
            .args(["--protected-mode", "yes", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(format!("exited at start ({status}); the port may be taken"));
            }
            if !self.command("PING").is_some_and(|r| r.starts_with("+PONG")) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            if let Some(info) = self.command("INFO server") {
                let theirs = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse::<u32>().ok());
                match theirs {
                    Some(p) if p == pid => return Ok(()),
                    Some(p) => {
                        self.kill();
                        return Err(format!("another server (pid {p}) answers on it"));
                    }
                    // Not that far in the reply's first read: try again.
                    None => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err("did not answer within 10 s".into())
    }

    /// Kill it (SIGKILL) and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and directory (it reloads its AOF).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Stop (SIGSTOP) or continue (SIGCONT) the process: a server that
    /// hangs without closing its connections.
    pub fn pause(&self, stop: bool) {
        if let Some(c) = &self.child {
            let sig = if stop { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    /// Send one inline command; the first reply line (and what followed in
    /// the same read), or `None` when the server does not answer.
    pub fn command(&self, line: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(buf.get(..n)?).into_owned())
    }

    /// Send one command given as its arguments (binary safe: RESP).
    pub fn call(&self, args: &[&[u8]]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut msg = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            msg.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            msg.extend_from_slice(a);
            msg.extend_from_slice(b"\r\n");
        }
        s.write_all(&msg).ok()?;
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(buf.get(..n)?).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.pause(false);
        self.kill();
    }
}

/// Join `nodes` (from [`RedisServer::start_cluster_node`]) into one Redis
/// Cluster with `replicas` replicas per primary (`redis-cli --cluster
/// create`), and wait until every node says the cluster is up.
pub fn form_cluster(nodes: &[RedisServer], replicas: u32) {
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .expect("redis-cli runs (scripts/test.sh installs redis-tools)");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in nodes {
        while !n.command("CLUSTER INFO").is_some_and(|i| i.contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the cluster never came up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A loopback port nothing listens on now (bound, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}
