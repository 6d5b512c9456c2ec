//! The direct path: no server between the two ends. The phone end listens
//! on loopback inside the bench and the desktop end connects to it, over
//! the same WebSocket stack and with the same frames as the forwarder. What
//! a target adds to this path is its added latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::plain::{self, Side};
use super::{Health, PairIo, Target, channels};
use crate::error::{BenchError, Result};
use crate::wire::WireSizes;

type Accepted = WebSocketStream<TcpStream>;
type Expected = Arc<Mutex<HashMap<[u8; 16], oneshot::Sender<Accepted>>>>;

/// The direct loopback path.
#[derive(Debug)]
pub struct DirectTarget {
    url: String,
    expected: Expected,
    accept: JoinHandle<()>,
    sizes: WireSizes,
    health: Arc<Health>,
}

impl DirectTarget {
    /// Listen on a free loopback port.
    ///
    /// # Errors
    /// [`BenchError::Io`] when it cannot listen.
    pub async fn start(sizes: WireSizes) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}/", listener.local_addr()?);
        let expected: Expected = Arc::default();
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&expected)));
        Ok(Self { url, expected, accept, sizes, health: Arc::default() })
    }

    async fn open_one(&self) -> Result<PairIo> {
        let id = plain::pair_id()?;
        let (tx, rx) = oneshot::channel();
        self.expected
            .lock()
            .map_err(|_| BenchError::Protocol("lock poisoned".into()))?
            .insert(id, tx);
        let desktop = plain::connect(&self.url, plain::hello(id, Side::Desktop)).await?;
        let phone = tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .map_err(|_| BenchError::Timeout("the direct listener".into()))?
            .map_err(|_| BenchError::Protocol("the direct listener dropped a pair".into()))?;
        let (mut io, ends) = channels();
        io.tasks = plain::spawn_ends(desktop, phone, ends, self.sizes, &self.health);
        Ok(io)
    }
}

impl Drop for DirectTarget {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, expected: Expected) {
    while let Ok((tcp, _)) = listener.accept().await {
        let expected = Arc::clone(&expected);
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(tcp, Some(plain::ws_config())).await
            else {
                return;
            };
            let Some(Ok(Message::Binary(b))) = ws.next().await else { return };
            let Some((id, Side::Desktop)) = plain::parse_hello(&b) else { return };
            let slot = expected.lock().ok().and_then(|mut m| m.remove(&id));
            if let Some(slot) = slot {
                let _ = slot.send(ws);
            }
        });
    }
}

impl Target for DirectTarget {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn open(&self, pairs: usize) -> BoxFuture<'_, Result<Vec<PairIo>>> {
        super::open_pairs(pairs, 32, || self.open_one()).boxed()
    }

    fn health(&self) -> &Health {
        &self.health
    }
}
