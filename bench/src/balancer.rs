//! The bench as a load balancer, for the storm over several relay nodes:
//! a TCP listener on a free loopback port that hands each connection to
//! the next node in turn (round robin) and, when that node refuses (it was
//! killed), to the one after it, then copies bytes both ways. A device
//! whose node died thus reconnects, through the same URL, to one of the
//! survivors, as it would through haproxy with health checks; unlike
//! haproxy it learns of a dead node only from a refused connection, and it
//! sends no PROXY header (the nodes see every device from 127.0.0.1, which
//! the bench's generous per-address limits allow).
//!
//! By default (`--balancer auto`) the storm runs haproxy instead, with the
//! deployment's own configuration ([`Haproxy`]: leastconn, `/readyz`
//! checks every 500 ms, retries redispatched to another node, PROXY v2),
//! when haproxy is installed, `deploy/haproxy/haproxy.cfg` is in the tree
//! and there are at most three nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::error::{BenchError, Result};

/// How long one node may take to accept before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A running balancer; stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct Balancer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    /// Connections handed to each backend.
    handed: Vec<AtomicU64>,
    /// Attempts a backend refused (or did not answer in time).
    refused: AtomicU64,
}

impl Balancer {
    /// Listen on a free loopback port in front of `backends`
    /// (`host:port` each).
    ///
    /// # Errors
    /// [`BenchError::Usage`] with no backend or one that is not an
    /// address, [`BenchError::Io`] when it cannot listen.
    pub async fn start(backends: &[String]) -> Result<Self> {
        let backends: Vec<SocketAddr> = backends
            .iter()
            .map(|b| b.parse().map_err(|e| BenchError::Usage(format!("backend {b:?}: {e}"))))
            .collect::<Result<_>>()?;
        if backends.is_empty() {
            return Err(BenchError::Usage("a balancer needs a node".into()));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let handed = backends.iter().map(|_| AtomicU64::new(0)).collect();
        let shared = Arc::new(Shared {
            backends,
            next: AtomicUsize::new(0),
            handed,
            refused: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&shared)));
        Ok(Self { addr, shared, task })
    }

    /// The URL devices connect to.
    #[must_use]
    pub fn url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    /// Connections handed to each node so far, in the order of the nodes.
    #[must_use]
    pub fn handed(&self) -> Vec<u64> {
        self.shared.handed.iter().map(|h| h.load(Ordering::Acquire)).collect()
    }

    /// Attempts a node refused so far (each one moved the connection on to
    /// the next node).
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Acquire)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                conns.spawn(forward(client, Arc::clone(&shared)));
            }
            // Reap finished connections.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Hand `client` to the next node that accepts, then copy both ways.
async fn forward(mut client: TcpStream, shared: Arc<Shared>) {
    let n = shared.backends.len();
    let first = shared.next.fetch_add(1, Ordering::AcqRel);
    for i in 0..n {
        let at = (first + i) % n;
        let Some(&backend) = shared.backends.get(at) else { return };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            Ok(Ok(mut node)) => {
                if let Some(h) = shared.handed.get(at) {
                    h.fetch_add(1, Ordering::AcqRel);
                }
                let _ = client.set_nodelay(true);
                let _ = node.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
                return;
            }
            _ => {
                shared.refused.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    // Every node refused: the client sees its connection close.
}

/// The deployment's haproxy configuration (`deploy/haproxy/haproxy.cfg`
/// in this repository), when it is there.
#[must_use]
pub fn haproxy_config() -> Option<PathBuf> {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy/haproxy.cfg");
    cfg.exists().then_some(cfg)
}

/// Nodes the deployment's haproxy configuration knows (`TANDEM_NODE1…3`).
pub const HAPROXY_MAX_NODES: usize = 3;

/// Whether haproxy can run here and the deployment's configuration is in
/// the tree.
#[must_use]
pub fn haproxy_available() -> bool {
    haproxy_config().is_some()
        && Command::new("haproxy")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// The relay flags haproxy's PROXY headers need (the nodes trust them
/// from loopback).
pub const HAPROXY_NODE_ARGS: [&str; 4] =
    ["--trusted-proxies", "127.0.0.1/32", "--trusted-proxy-header", "proxy-protocol"];

/// haproxy with the deployment's configuration in front of the nodes
/// (`TANDEM_LB_BIND`, `TANDEM_NODE1…`); killed when dropped.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    addr: String,
}

impl Haproxy {
    /// Start it on a free loopback port in front of `nodes` (`host:port`).
    ///
    /// # Errors
    /// [`BenchError::Usage`] without the configuration,
    /// [`BenchError::Process`] when haproxy cannot run or does not listen.
    pub fn start(nodes: &[String]) -> Result<Self> {
        let cfg = haproxy_config().ok_or_else(|| {
            BenchError::Usage("--balancer haproxy: no deploy/haproxy/haproxy.cfg here".into())
        })?;
        if nodes.len() > HAPROXY_MAX_NODES {
            return Err(BenchError::Usage(format!(
                "--balancer haproxy: its configuration knows {HAPROXY_MAX_NODES} nodes, not {}",
                nodes.len()
            )));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&cfg).env("TANDEM_LB_BIND", &addr);
        for (i, n) in nodes.iter().enumerate() {
            cmd.env(format!("TANDEM_NODE{}", i + 1), n);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Process(format!("cannot run haproxy: {e}")))?;
        let mut lb = Self { child, addr };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&lb.addr).is_ok() {
                return Ok(lb);
            }
            if !matches!(lb.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = lb.child.kill();
        let _ = lb.child.wait();
        Err(BenchError::Process(format!("haproxy did not listen on {}", lb.addr)))
    }

    /// The URL devices connect to.
    #[must_use]
    pub fn url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server that prefixes every reply with `tag`.
    async fn echo(tag: u8) -> (String, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    while s.read_exact(&mut b).await.is_ok() {
                        if s.write_all(&[tag, b[0]]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    async fn ask(addr: SocketAddr) -> Option<u8> {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.ok()?;
        (b[1] == b'x').then_some(b[0])
    }

    #[tokio::test]
    async fn round_robin_and_around_a_dead_node() {
        let (a, ta) = echo(1).await;
        let (b, tb) = echo(2).await;
        let (c, tc) = echo(3).await;
        let lb = Balancer::start(&[a, b, c]).await.unwrap();
        assert!(lb.url().starts_with("ws://127.0.0.1:"));
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(lb.addr).await.unwrap());
        }
        assert_eq!(seen, [1, 2, 3, 1, 2, 3]);
        // Node 2 dies: its turns go to the next live node.
        tb.abort();
        let _ = tb.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(lb.addr).await.unwrap());
        }
        assert!(!seen.contains(&2), "{seen:?}");
        assert!(seen.contains(&1) && seen.contains(&3), "{seen:?}");
        assert!(lb.refused() >= 2, "{}", lb.refused());
        assert_eq!(lb.handed().iter().sum::<u64>(), 12);
        // Every node dead: a connection is closed, not hung.
        ta.abort();
        tc.abort();
        let _ = (ta.await, tc.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ask(lb.addr).await, None);
    }

    #[tokio::test]
    async fn bad_backends_are_refused() {
        assert!(Balancer::start(&[]).await.is_err());
        assert!(Balancer::start(&["not an address".into()]).await.is_err());
    }
}
