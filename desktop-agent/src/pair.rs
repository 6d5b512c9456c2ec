//! The desktop side of pairing, over a live relay connection: open a
//! mailbox, show the QR code (rotated before it expires), run the
//! `IKpsk2` handshake with the first phone that claims it, show the phone's
//! name and the 6-digit code, and only on the user's confirmation authorise
//! the route and send the session PSK.

use std::time::Duration;

use tandem_client::{Client, ClientError, Event};
use tandem_proto::entropy::{Entropy, EntropyError};
use tandem_proto::envelope::Envelope;
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PairedPeer, PairingError};
use tandem_proto::sas::Sas;
use tandem_proto::{DeviceId, DeviceKey};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

/// Why pairing stopped.
#[derive(Debug, Error)]
pub enum PairError {
    /// The relay refused or the connection failed.
    #[error("relay: {0}")]
    Relay(#[from] ClientError),
    /// The handshake failed (a phone with the wrong code, tampering).
    #[error("pairing: {0}")]
    Pairing(#[from] PairingError),
    /// No randomness.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The client stopped.
    #[error("the relay connection closed")]
    Closed,
    /// Nobody paired before the overall deadline.
    #[error("no phone paired within {0:?}")]
    TimedOut(Duration),
}

/// What the person at the desktop sees and decides.
pub trait PairUi: Send {
    /// A new QR code (first, or rotated) for this link.
    fn show_code(&mut self, link: &str);
    /// A phone claimed the code: show its name and the 6-digit code, and
    /// return whether the user confirms they match the phone's screen.
    fn confirm(&mut self, phone: &DeviceInfo, phone_id: DeviceId, sas: Sas) -> bool;
    /// Progress and errors worth telling the user.
    fn status(&mut self, message: &str);
}

/// How to run a pairing.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// The link base the QR code points at, e.g. `https://relay.example.com/p`.
    pub link_base: String,
    /// The relay origin when it differs from the link's (web client elsewhere).
    pub relay_origin: Option<String>,
    /// How long each code is valid.
    pub code_ttl: Duration,
    /// Rotate this long before a code expires.
    pub rotate_before: Duration,
    /// Give up after this long without a pairing (None: never).
    pub deadline: Option<Duration>,
    /// How long to wait for each step once a phone claimed a code.
    pub step_timeout: Duration,
    /// What this desktop calls itself.
    pub info: DeviceInfo,
}

impl PairOptions {
    /// Defaults: 2-minute codes rotated 20 s early, 60 s per step, no deadline.
    #[must_use]
    pub fn new(link_base: String, info: DeviceInfo) -> Self {
        Self {
            link_base,
            relay_origin: None,
            code_ttl: Duration::from_secs(120),
            rotate_before: Duration::from_secs(20),
            deadline: None,
            step_timeout: Duration::from_secs(60),
            info,
        }
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Wait for a pairing message in mailbox `pid` (from `from`, if given).
/// Other events (deliveries from paired devices, presence) are kept in
/// `deferred` for the caller to handle once pairing is over.
async fn next_pair_message(
    events: &mut mpsc::Receiver<Event>,
    deferred: &mut Vec<Event>,
    pid: [u8; 16],
    from: Option<DeviceId>,
    until: Instant,
) -> Result<Option<(DeviceId, Vec<u8>)>, PairError> {
    loop {
        match timeout_at(until, events.recv()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(PairError::Closed),
            Ok(Some(Event::PairMessage { pairing_id, peer, payload }))
                if pairing_id == pid && from.is_none_or(|f| f == peer) =>
            {
                return Ok(Some((peer, payload)));
            }
            Ok(Some(Event::PairMessage { .. })) => {}
            Ok(Some(other)) => deferred.push(other),
        }
    }
}

/// Run pairing until one phone is paired (returns it) or the deadline.
/// Events that are not about pairing are appended to `deferred`, in order.
///
/// # Errors
/// [`PairError`] when the relay connection fails or the deadline passes. A
/// phone that fails the handshake or is refused by the user does not end
/// pairing: a fresh code is shown.
pub async fn pair(
    client: &Client,
    events: &mut mpsc::Receiver<Event>,
    key: &DeviceKey,
    opts: &PairOptions,
    ui: &mut dyn PairUi,
    deferred: &mut Vec<Event>,
) -> Result<(PairedPeer, DeviceInfo), PairError> {
    let mut entropy = Entropy::os();
    let started = Instant::now();
    let ttl_secs = u32::try_from(opts.code_ttl.as_secs()).unwrap_or(120);
    loop {
        if let Some(d) = opts.deadline
            && started.elapsed() >= d
        {
            return Err(PairError::TimedOut(d));
        }
        let offer = DesktopPairing::new(
            key.clone(),
            now_unix(),
            ttl_secs,
            opts.relay_origin.clone(),
            &mut entropy,
        )?;
        let pid = offer.pairing_id();
        client.pair_open(pid, u16::try_from(ttl_secs).unwrap_or(u16::MAX)).await?;
        ui.show_code(&offer.payload().to_link(&opts.link_base));
        let mut rotate_at = Instant::now() + opts.code_ttl.saturating_sub(opts.rotate_before);
        if let Some(d) = opts.deadline {
            rotate_at = rotate_at.min(started + d);
        }
        let outcome = match next_pair_message(events, deferred, pid, None, rotate_at).await? {
            None => None,
            Some((phone_id, hello)) => {
                let step = async {
                    run_claim(
                        client,
                        events,
                        deferred,
                        &offer,
                        pid,
                        phone_id,
                        &hello,
                        opts,
                        ui,
                        &mut entropy,
                    )
                    .await
                };
                match step.await {
                    Ok(Some(paired)) => Some(paired),
                    Ok(None) => None,
                    Err(PairError::Pairing(e)) => {
                        ui.status(&format!("a device tried to pair and failed: {e}"));
                        None
                    }
                    Err(e) => {
                        let _ = client.pair_close(pid).await;
                        return Err(e);
                    }
                }
            }
        };
        let _ = client.pair_close(pid).await;
        if let Some(p) = outcome {
            return Ok(p);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_claim(
    client: &Client,
    events: &mut mpsc::Receiver<Event>,
    deferred: &mut Vec<Event>,
    offer: &DesktopPairing,
    pid: [u8; 16],
    phone_id: DeviceId,
    hello: &[u8],
    opts: &PairOptions,
    ui: &mut dyn PairUi,
    entropy: &mut Entropy,
) -> Result<Option<(PairedPeer, DeviceInfo)>, PairError> {
    let hello = Envelope::decode(hello).map_err(|e| PairingError::Handshake(e.to_string()))?;
    let (waiting, welcome) = offer.on_hello(&hello, &opts.info, now_unix(), entropy)?;
    client.pair_message(pid, phone_id, welcome).await?;
    let Some((_, confirm)) = next_pair_message(
        events,
        deferred,
        pid,
        Some(phone_id),
        Instant::now() + opts.step_timeout,
    )
    .await?
    else {
        ui.status("the phone did not finish pairing in time");
        return Ok(None);
    };
    let confirm = Envelope::decode(&confirm).map_err(|e| PairingError::Handshake(e.to_string()))?;
    let user = waiting.on_confirm(&confirm)?;
    // The relay only routes to keys the Noise handshake authenticated.
    let phone_key = user.phone_public();
    if phone_key.device_id() != phone_id {
        return Err(PairingError::Handshake(
            "the claim came from another device than the handshake".into(),
        )
        .into());
    }
    let info = user.phone_info().clone();
    if !ui.confirm(&info, phone_id, user.sas()) {
        let refusal = user.refuse("the codes did not match or the desktop user declined")?;
        client.pair_message(pid, phone_id, refusal).await?;
        ui.status("pairing refused");
        return Ok(None);
    }
    client.authorize(phone_id).await?;
    let (paired, result) = user.accept(entropy)?;
    client.pair_message(pid, phone_id, result).await?;
    Ok(Some((paired, info)))
}
