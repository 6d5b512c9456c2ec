//! Simulated devices and how they pair: a `tandem-client` connection per
//! device and the real pairing (`DesktopPairing` / `PhonePairing`, IKpsk2)
//! through the relay's one-time mailbox, with the code on both screens
//! compared by the bench instead of a person. Also a pairing entirely in
//! memory, for the wire sizes and the direct path.

use std::time::Duration;

use tandem_client::proto::ErrorCode;
use tandem_client::{Client, ClientConfig, ClientError, Event};
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::Link;
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PairedPeer, PhonePairing};
use tandem_proto::qr::PairingLink;
use tandem_proto::{DeviceId, DeviceKey, Role};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use crate::error::{BenchError, Result};

/// How long one step of a pairing may take before it counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a device may take to connect and authenticate.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The QR code's lifetime.
const CODE_TTL_SECS: u16 = 120;

/// One simulated device: its key, its relay client and the client's events.
#[derive(Debug)]
pub struct Device {
    /// The long-term key.
    pub key: DeviceKey,
    /// Desktop or phone.
    pub role: Role,
    /// The relay client.
    pub client: Client,
    /// What the client reports (deliveries, reconnects, pairing messages).
    pub events: mpsc::Receiver<Event>,
}

/// Where and how devices connect.
#[derive(Debug, Clone)]
pub struct RelayAccess {
    /// The relay URL.
    pub url: String,
    /// Extra root certificates (PEM) for a self-signed relay.
    pub roots: Vec<String>,
}

impl Device {
    /// A fresh key, connected and authenticated (waits for `Connected`).
    ///
    /// # Errors
    /// [`BenchError::Client`] when the relay refuses, [`BenchError::Timeout`]
    /// when it does not answer.
    pub async fn connect(access: &RelayAccess, role: Role) -> Result<Self> {
        let key = DeviceKey::generate(&mut Entropy::os())
            .map_err(|e| BenchError::Protocol(e.to_string()))?;
        Self::connect_as(access, role, key).await
    }

    /// [`Device::connect`] with a key of its own (a device coming back).
    ///
    /// # Errors
    /// As [`Device::connect`].
    pub async fn connect_as(access: &RelayAccess, role: Role, key: DeviceKey) -> Result<Self> {
        let mut config = ClientConfig::new(access.url.clone(), key.clone(), role);
        config.extra_roots_pem.clone_from(&access.roots);
        config.event_capacity = 1024;
        config.connect_timeout = CONNECT_TIMEOUT;
        let (client, mut events) = Client::try_start(config)?;
        let until = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match timeout_at(until, events.recv()).await {
                Ok(Some(Event::Connected { .. })) => break,
                Ok(Some(Event::Disconnected { retry_in, reason, code }))
                    if retry_in == Duration::MAX =>
                {
                    return Err(BenchError::Client(ClientError::Disconnected { code, reason }));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(BenchError::Client(ClientError::Closed)),
                Err(_) => return Err(BenchError::Timeout("a device connecting".into())),
            }
        }
        Ok(Self { key, role, client, events })
    }

    /// This device's id.
    #[must_use]
    pub fn id(&self) -> DeviceId {
        self.client.device_id()
    }

    /// Wait for the next pairing message in mailbox `pid`, skipping other
    /// events (presence, the relay's `Ok`s arrive as answers, not events).
    async fn pair_message(&mut self, pid: [u8; 16]) -> Result<(DeviceId, Envelope)> {
        let until = Instant::now() + STEP_TIMEOUT;
        loop {
            match timeout_at(until, self.events.recv()).await {
                Ok(Some(Event::PairMessage { pairing_id, peer, payload })) if pairing_id == pid => {
                    let envelope = Envelope::decode(&payload)
                        .map_err(|e| BenchError::Pairing(format!("bad envelope: {e}")))?;
                    return Ok((peer, envelope));
                }
                Ok(Some(Event::Refused { code, message, .. })) => {
                    return Err(BenchError::Pairing(format!(
                        "the relay refused: {code}: {message}"
                    )));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(BenchError::Client(ClientError::Closed)),
                Err(_) => return Err(BenchError::Timeout("a pairing message".into())),
            }
        }
    }
}

fn info(role: Role) -> DeviceInfo {
    DeviceInfo {
        name: format!("bench {}", if role == Role::Desktop { "desktop" } else { "phone" }),
        platform: "linux".into(),
        app_version: concat!("tandem-bench/", env!("CARGO_PKG_VERSION")).into(),
        ephemeral: false,
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn pairing_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Pairing(e.to_string())
}

/// Pair `desktop` and `phone` through the relay, as `tandem pair` and the
/// phone engine do: mailbox, QR link, claim, IKpsk2, confirm, both sides
/// authorise the route, result. Returns each side's `Link`.
///
/// # Errors
/// [`BenchError::Pairing`] when a step fails or the two codes differ,
/// [`BenchError::Client`] when the relay refuses.
pub async fn pair(desktop: &mut Device, phone: &mut Device) -> Result<(Link, Link)> {
    let mut entropy = Entropy::os();
    let offer = DesktopPairing::new(
        desktop.key.clone(),
        now_unix(),
        u32::from(CODE_TTL_SECS),
        None,
        &mut entropy,
    )
    .map_err(pairing_err)?;
    let pid = offer.pairing_id();
    desktop.client.pair_open(pid, CODE_TTL_SECS).await?;
    let result = exchange(desktop, phone, &offer, pid, &mut entropy).await;
    let _ = desktop.client.pair_close(pid).await;
    let (desktop_side, phone_side) = result?;
    Ok((
        Link::from_paired(desktop_side, Default::default()),
        Link::from_paired(phone_side, Default::default()),
    ))
}

async fn exchange(
    desktop: &mut Device,
    phone: &mut Device,
    offer: &DesktopPairing,
    pid: [u8; 16],
    entropy: &mut Entropy,
) -> Result<(PairedPeer, PairedPeer)> {
    // The phone scans the code: the link as the QR carries it, parsed back.
    let link = offer.payload().to_link("http://127.0.0.1/p");
    let scanned = PairingLink::parse(&link, now_unix()).map_err(pairing_err)?;
    let (pairing, hello) =
        PhonePairing::start(&phone.key, &scanned.payload, &info(Role::Phone), entropy)
            .map_err(pairing_err)?;
    claim(phone, pid, hello).await?;

    let (phone_id, hello) = desktop.pair_message(pid).await?;
    let (waiting, welcome) =
        offer.on_hello(&hello, &info(Role::Desktop), now_unix(), entropy).map_err(pairing_err)?;
    desktop.client.pair_message(pid, phone_id, welcome).await?;

    let (desktop_id, welcome) = phone.pair_message(pid).await?;
    if desktop_id != desktop.id() {
        return Err(BenchError::Pairing("the welcome came from another device".into()));
    }
    let (awaiting, confirm) = pairing.on_welcome(&welcome).map_err(pairing_err)?;
    phone.client.pair_message(pid, desktop_id, confirm).await?;

    let (_, confirm) = desktop.pair_message(pid).await?;
    let user = waiting.on_confirm(&confirm).map_err(pairing_err)?;
    if user.phone_public().device_id() != phone_id || phone_id != phone.id() {
        return Err(BenchError::Pairing("the claim came from another device".into()));
    }
    // The person at the desktop compares the codes; here the bench does.
    if user.sas() != awaiting.sas() {
        return Err(BenchError::Pairing("the two screens show different codes".into()));
    }
    desktop.client.authorize(phone_id).await?;
    let (desktop_side, result) = user.accept(entropy).map_err(pairing_err)?;
    desktop.client.pair_message(pid, phone_id, result).await?;

    let (_, result) = phone.pair_message(pid).await?;
    let phone_side = awaiting.on_result(&result).map_err(pairing_err)?;
    phone.client.authorize(desktop_id).await?;
    Ok((desktop_side, phone_side))
}

/// Claim the mailbox; a claim refused by the relay's per-address brake
/// changed nothing and is tried again.
async fn claim(phone: &Device, pid: [u8; 16], hello: Vec<u8>) -> Result<()> {
    let until = Instant::now() + STEP_TIMEOUT;
    loop {
        match phone.client.pair_claim(pid, hello.clone()).await {
            Err(ClientError::Refused(ErrorCode::RateLimited, _)) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other.map_err(BenchError::from),
        }
    }
}

/// Pair two fresh keys in memory (no relay): `((desktop key, desktop's
/// link), (phone key, phone's link))`.
///
/// # Errors
/// [`BenchError::Pairing`] if a step fails (it does not).
pub fn pair_in_memory() -> Result<((DeviceKey, Link), (DeviceKey, Link))> {
    let mut entropy = Entropy::os();
    let desktop_key = DeviceKey::generate(&mut entropy).map_err(pairing_err)?;
    let phone_key = DeviceKey::generate(&mut entropy).map_err(pairing_err)?;
    let offer = DesktopPairing::new(desktop_key.clone(), now_unix(), 60, None, &mut entropy)
        .map_err(pairing_err)?;
    let (pairing, hello) =
        PhonePairing::start(&phone_key, offer.payload(), &info(Role::Phone), &mut entropy)
            .map_err(pairing_err)?;
    let decode = |b: &[u8]| Envelope::decode(b).map_err(pairing_err);
    let (waiting, welcome) = offer
        .on_hello(&decode(&hello)?, &info(Role::Desktop), now_unix(), &mut entropy)
        .map_err(pairing_err)?;
    let (awaiting, confirm) = pairing.on_welcome(&decode(&welcome)?).map_err(pairing_err)?;
    let user = waiting.on_confirm(&decode(&confirm)?).map_err(pairing_err)?;
    let (desktop_side, result) = user.accept(&mut entropy).map_err(pairing_err)?;
    let phone_side = awaiting.on_result(&decode(&result)?).map_err(pairing_err)?;
    Ok((
        (desktop_key, Link::from_paired(desktop_side, Default::default())),
        (phone_key, Link::from_paired(phone_side, Default::default())),
    ))
}
