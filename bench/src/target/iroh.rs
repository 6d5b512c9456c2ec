//! iroh-relay as a target (cargo feature `iroh`): its server
//! (`iroh_relay::server::Server`, plain HTTP, no QUIC, no rate limits) in a
//! process of its own (`tandem-bench iroh-relay`, so its CPU time and
//! memory are measured like the relay's and the forwarder's), and each pair
//! as two `iroh_relay::client::Client`s, each with its own `SecretKey`
//! (the relay's handshake authenticates it). The desktop end sends datagrams
//! to the phone end's endpoint id; they carry the baselines' frames
//! ([`super::plain`]: padded to the size of the tandem relay frame that
//! would carry the same message), and the phone end acknowledges the same
//! way. iroh-relay drops a datagram when the receiver is not connected or
//! its queue is full, so the ends first hear each other once (the relay
//! registered both) and the window keeps the queues short: a drop shows as
//! a lost message.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use iroh_base::{EndpointId, RelayUrl, SecretKey};
use iroh_dns::dns::DnsResolver;
use iroh_relay::client::{Client, ClientBuilder};
use iroh_relay::protos::relay::{ClientToRelayMsg, Datagrams, RelayToClientMsg};
use iroh_relay::server::{RelayConfig, Server, ServerConfig};
use iroh_relay::tls::{CaTlsConfig, default_provider};
use tokio::sync::{mpsc, watch};

use super::plain::{ACK, ACK_BATCH, DATA, ack_frame, data_frame};
use super::{Ends, Health, PairIo, Received, Target, Tasks, channels};
use crate::error::{BenchError, Result};
use crate::wire::{self, WireSizes};

/// Pairs set up at once.
const SETUP_CONCURRENCY: usize = 32;
/// A datagram that only says "I am here" (before the load starts).
const HELLO: u8 = 0x03;
/// What the server prints first.
const LISTENING: &str = "tandem-bench iroh-relay listening on ";

/// Run an iroh-relay server on `listen` (plain HTTP) until the process ends.
///
/// # Errors
/// [`BenchError::Process`] when it does not start or stops.
pub async fn serve(listen: SocketAddr) -> Result<()> {
    let mut config = ServerConfig::default();
    config.relay = Some(RelayConfig::new(listen));
    let mut server =
        Server::spawn(config).await.map_err(|e| BenchError::Process(format!("iroh-relay: {e}")))?;
    let addr = server
        .http_addr()
        .ok_or_else(|| BenchError::Process("iroh-relay: no HTTP address".into()))?;
    println!("{LISTENING}http://{addr}");
    match server.join().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BenchError::Process(format!("iroh-relay: {e}"))),
        Err(e) => Err(BenchError::Process(format!("iroh-relay: {e}"))),
    }
}

/// The iroh-relay server process; killed when dropped.
#[derive(Debug)]
struct IrohProcess {
    child: Child,
    url: RelayUrl,
}

impl IrohProcess {
    fn start(exe: &Path) -> Result<Self> {
        let (mut child, url) = crate::relay::spawn_baseline(exe, "iroh-relay", LISTENING)?;
        match url.parse::<RelayUrl>() {
            Ok(url) => Ok(Self { child, url }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(BenchError::Process(format!("iroh-relay printed a bad URL {url:?}: {e}")))
            }
        }
    }
}

impl Drop for IrohProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// iroh-relay with its own client.
#[derive(Debug)]
pub struct IrohTarget {
    process: IrohProcess,
    dns: DnsResolver,
    sizes: WireSizes,
    health: Arc<Health>,
}

impl IrohTarget {
    /// Start the iroh-relay server process from this binary.
    ///
    /// # Errors
    /// [`BenchError::Process`] when it does not start.
    pub fn start(exe: &Path, sizes: WireSizes) -> Result<Self> {
        Ok(Self {
            process: IrohProcess::start(exe)?,
            dns: DnsResolver::new(),
            sizes,
            health: Arc::default(),
        })
    }

    async fn connect(&self) -> Result<(EndpointId, Client)> {
        let key = SecretKey::generate();
        let id = key.public();
        let tls = CaTlsConfig::default().client_config(default_provider())?;
        let client = ClientBuilder::new(self.process.url.clone(), key, self.dns.clone())
            .tls_client_config(tls)
            .connect()
            .await
            .map_err(|e| BenchError::Process(format!("iroh-relay connect: {e}")))?;
        Ok((id, client))
    }

    async fn open_one(&self) -> Result<PairIo> {
        let (desktop_id, mut desktop) = self.connect().await?;
        let (phone_id, mut phone) = self.connect().await?;
        hear(&mut desktop, &mut phone, phone_id).await?;
        hear(&mut phone, &mut desktop, desktop_id).await?;
        let (mut io, ends) = channels();
        let Ends { outgoing, acked, incoming } = ends;
        io.tasks = Tasks::new(vec![
            tokio::spawn(desktop_end(
                desktop,
                phone_id,
                outgoing,
                acked,
                self.sizes,
                Arc::clone(&self.health),
            )),
            tokio::spawn(phone_end(
                phone,
                desktop_id,
                incoming,
                self.sizes,
                Arc::clone(&self.health),
            )),
        ]);
        Ok(io)
    }
}

fn datagram(to: EndpointId, frame: &[u8]) -> ClientToRelayMsg {
    ClientToRelayMsg::Datagrams { dst_endpoint_id: to, datagrams: Datagrams::from(frame) }
}

/// `from` sends hellos to `to_id` until `to` has one (both are registered).
async fn hear(from: &mut Client, to: &mut Client, to_id: EndpointId) -> Result<()> {
    for _ in 0..100 {
        from.send(datagram(to_id, &[HELLO]))
            .await
            .map_err(|e| BenchError::Process(format!("iroh-relay send: {e}")))?;
        let deadline = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => break,
                m = to.next() => match m {
                    Some(Ok(RelayToClientMsg::Datagrams { datagrams, .. }))
                        if datagrams.contents.first() == Some(&HELLO) => return Ok(()),
                    Some(Ok(RelayToClientMsg::Ping(p))) => {
                        to.send(ClientToRelayMsg::Pong(p))
                            .await
                            .map_err(|e| BenchError::Process(format!("iroh-relay send: {e}")))?;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(BenchError::Process(format!("iroh-relay recv: {e}"))),
                    None => return Err(BenchError::Process("iroh-relay closed".into())),
                },
            }
        }
    }
    Err(BenchError::Process("iroh-relay: the ends never heard each other".into()))
}

/// Send the messages to `phone`; read its acks (and answer the relay's pings).
async fn desktop_end(
    mut client: Client,
    phone: EndpointId,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    acked: watch::Sender<u64>,
    sizes: WireSizes,
    health: Arc<Health>,
) {
    loop {
        let out = tokio::select! {
            m = outgoing.recv() => match m {
                Some(message) => datagram(phone, &data_frame(&message, sizes)),
                None => return,
            },
            m = client.next() => match m {
                Some(Ok(RelayToClientMsg::Datagrams { datagrams, .. })) => {
                    let b = &datagrams.contents;
                    match (b.first(), b.get(1..9)) {
                        (Some(&ACK), Some(n)) => {
                            acked.send_replace(u64::from_be_bytes(n.try_into().unwrap_or_default()));
                        }
                        (Some(&HELLO), _) => {}
                        _ => health.error("iroh desktop: not an ack"),
                    }
                    continue;
                }
                Some(Ok(RelayToClientMsg::Ping(p))) => ClientToRelayMsg::Pong(p),
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    health.error(format!("iroh desktop read: {e}"));
                    return;
                }
                None => {
                    health.error("iroh desktop: the relay closed the connection");
                    return;
                }
            },
        };
        if let Err(e) = client.send(out).await {
            health.error(format!("iroh desktop write: {e}"));
            return;
        }
    }
}

/// Take in what comes from the desktop end and acknowledge it in batches
/// (as the other baselines do).
async fn phone_end(
    mut client: Client,
    desktop: EndpointId,
    incoming: mpsc::Sender<Received>,
    sizes: WireSizes,
    health: Arc<Health>,
) {
    let mut last = 0u64;
    while let Some(batch) = super::next_batch(&mut client, ACK_BATCH).await {
        let mut got = false;
        for message in batch {
            match message {
                Ok(RelayToClientMsg::Datagrams { datagrams, .. }) => {
                    let at = std::time::Instant::now();
                    let Some((&kind, rest)) = datagrams.contents.split_first() else {
                        health.error("iroh phone: empty datagram");
                        continue;
                    };
                    if kind == HELLO {
                        continue;
                    }
                    if kind != DATA {
                        health.error("iroh phone: not data");
                        continue;
                    }
                    if let Some((seq, _)) = wire::parse(rest) {
                        last = last.max(seq);
                        got = true;
                    }
                    if incoming.send(Received { at, message: rest.to_vec() }).await.is_err() {
                        return;
                    }
                }
                Ok(RelayToClientMsg::Ping(p)) => {
                    if let Err(e) = client.send(ClientToRelayMsg::Pong(p)).await {
                        health.error(format!("iroh phone write: {e}"));
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    health.error(format!("iroh phone read: {e}"));
                    return;
                }
            }
        }
        if got && let Err(e) = client.send(datagram(desktop, &ack_frame(last, sizes))).await {
            health.error(format!("iroh phone write: {e}"));
            return;
        }
    }
    health.error("iroh phone: the relay closed the connection");
}

impl Target for IrohTarget {
    fn name(&self) -> &'static str {
        "iroh"
    }

    fn pid(&self) -> Option<u32> {
        Some(self.process.child.id())
    }

    fn open(&self, pairs: usize) -> BoxFuture<'_, Result<Vec<PairIo>>> {
        super::open_pairs(pairs, SETUP_CONCURRENCY, || self.open_one()).boxed()
    }

    fn health(&self) -> &Health {
        &self.health
    }

    fn lossy(&self) -> bool {
        true
    }
}
