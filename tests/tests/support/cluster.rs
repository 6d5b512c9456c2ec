//! Several relay nodes for the fault suite: a real `redis-server` of the
//! test's own (a free port, AOF with `appendfsync always`: the relay's
//! tests' launcher, `relay/tests/support/redis.rs`), two or three relay
//! processes on it (`relay_process` with [`RELAY_REDIS_URL`]: `--store
//! redis`, a node id each, a PROXY header trusted from 127.0.0.1), and a
//! real haproxy in front with the deployment's own configuration
//! (`deploy/haproxy/haproxy.cfg`). The agent and the phone reach the
//! cluster only through haproxy.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// Used by faults.rs; the soak's binary includes this module too.
#[allow(unused_imports)]
pub use crate::common::redis::RedisServer as Redis;
use crate::common::redis::{RedisServer, free_port};
use crate::common::relay::{RELAY_NODE_ID, RELAY_REDIS_URL, Relay};

/// haproxy with `deploy/haproxy/haproxy.cfg` in front of the nodes.
pub struct Haproxy {
    child: Child,
    /// Its plain listener, `127.0.0.1:<port>`.
    pub addr: String,
}

impl Haproxy {
    /// Start it in front of `nodes` (their ports do not change across
    /// restarts), its log in `dir/haproxy.log`.
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
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&cfg).env("TANDEM_LB_BIND", &addr);
        for (i, n) in nodes.iter().enumerate() {
            cmd.env(format!("TANDEM_NODE{}", i + 1), n.addr.to_string());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("haproxy (scripts/test.sh installs it)");
        let mut lb = Haproxy { child, addr };
        for _ in 0..200 {
            if let Ok(Some(_)) = lb.child.try_wait() {
                return None;
            }
            let to = lb.addr.parse().unwrap();
            if std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok() {
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

    /// The devices' relay URL: haproxy's.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    /// What the pairing link points the phone at.
    pub fn link_base(&self) -> String {
        format!("http://{}/p", self.addr)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis, the relay nodes beyond the first (the world's `relay` is node
/// `n1`), and haproxy in front of all of them.
pub struct Cluster {
    /// Redis (with a Sentinel: its primary at the start).
    pub redis: RedisServer,
    /// With a Sentinel ([`Cluster::start_sentinel`]): the replica, then
    /// the Sentinel that watches them.
    pub replica: Option<RedisServer>,
    pub sentinel: Option<RedisServer>,
    /// Nodes `n2`, `n3`, …
    pub others: Vec<Relay>,
    pub lb: Haproxy,
}

/// The environment of node `id` on `redis`.
pub fn node_env(url: &str, id: &str) -> Vec<(String, String)> {
    vec![(RELAY_REDIS_URL.into(), url.into()), (RELAY_NODE_ID.into(), id.into())]
}

fn nodes(dir: &Path, url: &str, n: usize) -> Vec<Relay> {
    (1..=n.max(2))
        .map(|i| {
            let d = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&d).unwrap();
            Relay::start_with_env(&d, node_env(url, &format!("n{i}")))
        })
        .collect()
}

impl Cluster {
    /// Redis and `nodes` relay nodes (data in `dir/n1`, `dir/n2`, …),
    /// haproxy in front: node `n1` (to become the world's `relay`) and the
    /// cluster.
    pub fn start(dir: &Path, nodes: usize) -> (Relay, Cluster) {
        let redis = RedisServer::start();
        let mut all = self::nodes(dir, &redis.url(), nodes);
        let lb = Haproxy::start(dir, &all.iter().collect::<Vec<_>>());
        let first = all.remove(0);
        (first, Cluster { redis, replica: None, sentinel: None, others: all, lb })
    }

    /// As [`Cluster::start`], on a Redis primary with a replica and a
    /// Sentinel (quorum 1, quick to act) that the nodes find it through
    /// (`redis+sentinel://…/main`).
    pub fn start_sentinel(dir: &Path, nodes: usize) -> (Relay, Cluster) {
        let redis = RedisServer::start();
        let replica = RedisServer::start_replica_of(redis.port());
        let sentinel = RedisServer::start_sentinel(redis.port(), "main");
        let url = format!("redis+sentinel://127.0.0.1:{}/main", sentinel.port());
        let mut all = self::nodes(dir, &url, nodes);
        let lb = Haproxy::start(dir, &all.iter().collect::<Vec<_>>());
        let first = all.remove(0);
        let (replica, sentinel) = (Some(replica), Some(sentinel));
        (first, Cluster { redis, replica, sentinel, others: all, lb })
    }
}

/// How many established TCP connections the process `pid` holds on its
/// listening port `port` (haproxy's connections to it: devices, and the
/// odd health check).
pub fn connections(pid: u32, port: u16) -> usize {
    let out = Command::new("ss")
        .args(["-Htnp", "state", "established", "sport", "=", &format!(":{port}")])
        .output()
        .expect("ss (iproute2)");
    let pid = format!("pid={pid},");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&pid)).count()
}
