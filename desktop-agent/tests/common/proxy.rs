//! A TCP proxy between a client and the relay that a test can cut or
//! blackhole: the connection drops (or stalls) while the relay keeps
//! running, on the same store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow.
    Open,
    /// Every connection is closed; new ones are closed as soon as accepted.
    Cut,
    /// Connections stay open but no byte moves, either way (they sit in the
    /// sockets' buffers, as in a network that drops packets and TCP that
    /// retransmits); new ones are accepted and held. Flow resumes when
    /// opened again.
    Blackhole,
}

/// A transparent TCP proxy to the relay (the agent dials it; the `Host`
/// header passes unchanged, and the relay compares names without ports).
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections accepted (held ones included).
    accepted: Arc<AtomicUsize>,
    /// Connections closed at once while cut.
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Open);
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (acc, refs) = (Arc::clone(&accepted), Arc::clone(&refused));
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if *mode_rx.borrow() == Mode::Cut {
                    refs.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                acc.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(pipe(client, upstream, mode_rx.clone()));
            }
        });
        Proxy { addr, mode, accepted, refused, task }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set(Mode::Cut);
    }
}

/// Wait while blackholed: `true` once open, `false` when cut.
async fn flowing(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Open => return true,
            Mode::Cut => return false,
            Mode::Blackhole => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// Carry one connection both ways, as `mode` says.
async fn pipe(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if !flowing(&mut mode).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut client_open, mut server_open) = (true, true);
    while client_open || server_open {
        let open = match *mode.borrow_and_update() {
            Mode::Cut => return, // dropping the sockets closes both sides
            Mode::Open => true,
            Mode::Blackhole => false,
        };
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            r = client_read.read(&mut up), if open && client_open => match r {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = server_write.shutdown().await;
                }
                Ok(n) => {
                    if server_write.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
            },
            r = server_read.read(&mut down), if open && server_open => match r {
                Ok(0) | Err(_) => {
                    server_open = false;
                    let _ = client_write.shutdown().await;
                }
                Ok(n) => {
                    if client_write.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}
