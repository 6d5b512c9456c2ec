//! The desktop side of pairing, over a live relay connection: open a
//! mailbox, show the QR code (rotated before it expires), run the
//! `IKpsk2` handshake with the first phone that claims it, show the phone's
//! name, the 6-digit code and the scope it would get, and only on the user's
//! confirmation keep it and answer it.
//!
//! Once the user accepted, in this order (PROTOCOL §9.4): a device paired
//! again has its old route revoked at the relay (dropping what was queued
//! under its old link, and so that its old route cannot report it online);
//! the new device is saved with its link and the chosen scope, marked as
//! pending ([`Peer::pairing_pending`]); the route is authorised; the
//! accepting `PairResult` is sent; the mark is cleared. A crash after the save leaves a pending device: the daemon
//! clears the mark when the device shows it got the answer, and forgets it
//! otherwise ([`crate::daemon`]).
//!
//! Where the new device is kept is a [`PeerKeeper`]: the peer store itself
//! (`tandem pair`, [`StoreKeeper`]) or the running daemon (`tandem up`,
//! [`DaemonKeeper`]), which is how `tandem up` pairs more devices while it
//! serves the paired ones ([`pair_alongside`]).

mod alongside;
mod keeper;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tandem_client::{Client, ClientError, Event};
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::{Entropy, EntropyError};
use tandem_proto::envelope::Envelope;
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PairingError};
use tandem_proto::sas::Sas;
use tandem_proto::{DeviceId, DeviceKey};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tracing::{debug, info};

pub use alongside::{ON_DEMAND_DEADLINE, PairAlongside, pair_alongside, split_events};
pub use keeper::{DaemonKeeper, PairCall, PeerKeeper, StoreKeeper, keep_peer};

use crate::crashpoint::crash_point;
use crate::executor::{ExecutorConfig, ExecutorKind};
use crate::peers::{Peer, PeerError, Scope};
use crate::text::escaped;

/// How long the desktop user has to answer the confirmation (the phone
/// engine waits as long for the answer).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// The new device could not be saved: it was not answered.
    #[error("saving the new device: {0}")]
    Store(#[from] PeerError),
    /// The client (or the daemon keeping the devices) stopped.
    #[error("the relay connection closed")]
    Closed,
    /// Nobody paired before the overall deadline.
    #[error("no phone paired within {0:?}")]
    TimedOut(Duration),
}

/// What the desktop user is asked once a phone proved it scanned the code.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmRequest<'a> {
    /// What the phone says about itself (its name is the phone's choice:
    /// show it through [`crate::text::escaped`]).
    pub phone: &'a DeviceInfo,
    /// The phone's id, from its Noise-authenticated key.
    pub phone_id: DeviceId,
    /// The code both screens show.
    pub sas: Sas,
    /// The scope an answer of "yes" gives it.
    pub proposed: Scope,
    /// Its scope if this device is paired already (pairing it again).
    pub current: Option<Scope>,
}

/// The desktop user's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The codes match: pair with this scope.
    Accept(Scope),
    /// Refused (codes differ, unknown device, no answer).
    Refuse,
}

/// A future a [`PairUi`] returns.
pub type UiFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the person at the desktop sees and decides.
pub trait PairUi: Send {
    /// A new QR code (first, or rotated) for this link.
    fn show_code(&mut self, link: &str);
    /// A phone claimed the code: show its name, whether it is ephemeral, the
    /// 6-digit code and the proposed scope, and return the user's decision.
    fn confirm<'a>(&'a mut self, request: ConfirmRequest<'a>) -> UiFuture<'a, Decision>;
    /// Progress and errors worth telling the user.
    fn status(&mut self, message: &str);
}

/// How to run a pairing.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// The link base the QR code points at, e.g. `https://relay.example.com/p`.
    /// On plain `http://` every code's link gets a fresh `?n=<nonce>`.
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
    /// The scope proposed for a new device ([`least_scope`]).
    pub default_scope: Scope,
    /// The scope the user asked for (`--scope`), proposed for every device,
    /// new or paired again.
    pub scope: Option<Scope>,
    /// The outbox limits of a newly paired device's link (kept in the link).
    pub outbox: OutboxLimits,
}

impl PairOptions {
    /// Defaults: 2-minute codes rotated 20 s early, 60 s per step, no
    /// deadline, `view` proposed.
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
            default_scope: Scope::View,
            scope: None,
            outbox: OutboxLimits::default(),
        }
    }

    /// The scope proposed for a device whose scope is `current` (if paired).
    /// Pairing again keeps the scope unless the user asked for one.
    #[must_use]
    pub fn proposed(&self, current: Option<Scope>) -> Scope {
        self.scope.or(current).unwrap_or(self.default_scope)
    }
}

/// The least scope that lets the user work with these executors: `approve`
/// when one of them can ask for approvals (`jsonl`, `claude`), `submit` when
/// there are only `command` executors, `view` when there is none.
#[must_use]
pub fn least_scope(executors: &[ExecutorConfig]) -> Scope {
    let asks = |e: &ExecutorConfig| {
        matches!(e.kind, ExecutorKind::Jsonl { .. } | ExecutorKind::Claude { .. })
    };
    if executors.iter().any(asks) {
        Scope::Approve
    } else if executors.is_empty() {
        Scope::View
    } else {
        Scope::Submit
    }
}

/// A device that paired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired {
    /// Its id.
    pub device_id: DeviceId,
    /// Its name, as the phone sent it.
    pub name: String,
    /// The scope it got.
    pub scope: Scope,
    /// Whether it keeps its keys only while it runs.
    pub ephemeral: bool,
    /// Its scope before, if it was paired already.
    pub previous: Option<Scope>,
    /// How many devices are paired now.
    pub devices: usize,
}

impl Paired {
    /// What the terminal says once it paired.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut s = format!(
            "Paired with {} ({}), scope {}.",
            escaped(&self.name),
            self.device_id,
            self.scope
        );
        match self.previous {
            Some(p) if p == self.scope => s.push_str(" It was paired already: its scope is kept."),
            Some(p) => s.push_str(&format!(" It was paired already with scope {p}.")),
            None => {}
        }
        if self.ephemeral {
            s.push_str(
                " This page only: it keeps its keys while it is open, and this computer forgets it once it has been gone for a while.",
            );
        }
        s
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `base` with a fresh `n=<8 base32 characters>` query on plain `http://`,
/// so no two codes open the same address (a page planted in the phone's
/// HTTP cache for the bare address is never what a scan opens).
fn unique_base(base: &str, entropy: &mut Entropy) -> Result<String, EntropyError> {
    if !base.starts_with("http://") {
        return Ok(base.to_owned());
    }
    let mut nonce = [0u8; 5];
    entropy.fill(&mut nonce)?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{sep}n={}", data_encoding::BASE32_NOPAD.encode(&nonce)))
}

/// Wait for a pairing message in mailbox `pid` (from `from`, if given).
/// Other events are dropped: `tandem pair` does not ack deliveries (the
/// relay keeps them for the next connection), and `tandem up` routes only
/// pairing messages and reconnections here ([`split_events`]).
///
/// The relay closes a mailbox when the connection that opened it goes away.
/// After a reconnection, a code still waiting for its phone (`from` is
/// `None`) gets its mailbox again, for what is left of its life (`expires`);
/// a claim under way (`from` is set) is over: `None`, and a fresh code.
async fn next_pair_message(
    events: &mut mpsc::Receiver<Event>,
    mailbox: (&Client, [u8; 16], Instant),
    from: Option<DeviceId>,
    until: Instant,
) -> Result<Option<(DeviceId, Vec<u8>)>, PairError> {
    let (client, pid, expires) = mailbox;
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
            Ok(Some(Event::Connected { .. })) if from.is_some() => {
                debug!("reconnected during a claim: its mailbox is gone");
                return Ok(None);
            }
            Ok(Some(Event::Connected { .. })) => {
                let left = expires.saturating_duration_since(Instant::now()).as_secs();
                if left == 0 {
                    return Ok(None);
                }
                // Not awaited: an answer waits for the connection, and a code
                // that cannot be reopened rotates at `until` anyway.
                let reopen = client.pair_open(pid, u16::try_from(left).unwrap_or(u16::MAX));
                tokio::spawn(async move {
                    match reopen.await {
                        Ok(()) => {
                            info!("the pairing code on screen works again (mailbox reopened)")
                        }
                        Err(e) => debug!(error = %e, "the pairing mailbox could not be reopened"),
                    }
                });
            }
            Ok(Some(other)) => debug!(?other, "event while pairing"),
        }
    }
}

/// Run pairing until one phone is paired (returns it) or the deadline.
///
/// # Errors
/// [`PairError`] when the relay connection fails, the new device cannot be
/// saved, or the deadline passes. A phone that fails the handshake or is
/// refused by the user does not end pairing: a fresh code is shown.
pub async fn pair<K: PeerKeeper>(
    client: &Client,
    events: &mut mpsc::Receiver<Event>,
    key: &DeviceKey,
    opts: &PairOptions,
    ui: &mut dyn PairUi,
    keeper: &mut K,
) -> Result<Paired, PairError> {
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
        let expires = Instant::now() + opts.code_ttl;
        ui.show_code(&offer.payload().to_link(&unique_base(&opts.link_base, &mut entropy)?));
        let mut rotate_at = Instant::now() + opts.code_ttl.saturating_sub(opts.rotate_before);
        if let Some(d) = opts.deadline {
            rotate_at = rotate_at.min(started + d);
        }
        let outcome =
            match next_pair_message(events, (client, pid, expires), None, rotate_at).await? {
                None => None,
                Some((phone_id, hello)) => {
                    let claim = Claim { client, offer: &offer, pid, phone_id, opts };
                    match claim.run(events, &hello, ui, keeper, &mut entropy).await {
                        Ok(paired) => paired,
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

/// One claimed code.
struct Claim<'a> {
    client: &'a Client,
    offer: &'a DesktopPairing,
    pid: [u8; 16],
    phone_id: DeviceId,
    opts: &'a PairOptions,
}

impl Claim<'_> {
    async fn run<K: PeerKeeper>(
        &self,
        events: &mut mpsc::Receiver<Event>,
        hello: &[u8],
        ui: &mut dyn PairUi,
        keeper: &mut K,
        entropy: &mut Entropy,
    ) -> Result<Option<Paired>, PairError> {
        let Self { client, offer, pid, phone_id, opts } = *self;
        let hello = Envelope::decode(hello).map_err(|e| PairingError::Handshake(e.to_string()))?;
        let (waiting, welcome) = offer.on_hello(&hello, &opts.info, now_unix(), entropy)?;
        client.pair_message(pid, phone_id, welcome).await?;
        let until = Instant::now() + opts.step_timeout;
        let Some((_, confirm)) =
            next_pair_message(events, (client, pid, until), Some(phone_id), until).await?
        else {
            ui.status("the phone did not finish pairing in time");
            return Ok(None);
        };
        let confirm =
            Envelope::decode(&confirm).map_err(|e| PairingError::Handshake(e.to_string()))?;
        let user = waiting.on_confirm(&confirm)?;
        // The relay only routes to keys the Noise handshake authenticated.
        if user.phone_public().device_id() != phone_id {
            return Err(PairingError::Handshake(
                "the claim came from another device than the handshake".into(),
            )
            .into());
        }
        let info = user.phone_info().clone();
        let current = keeper.scope_of(phone_id).await?;
        let request = ConfirmRequest {
            phone: &info,
            phone_id,
            sas: user.sas(),
            proposed: opts.proposed(current),
            current,
        };
        let decision = match tokio::time::timeout(CONFIRM_TIMEOUT, ui.confirm(request)).await {
            Ok(d) => d,
            Err(_) => {
                ui.status("no answer in time");
                Decision::Refuse
            }
        };
        let Decision::Accept(scope) = decision else {
            let refusal = user.refuse("the codes did not match or the desktop user declined")?;
            client.pair_message(pid, phone_id, refusal).await?;
            keeper.refused(phone_id).await;
            ui.status("pairing refused");
            return Ok(None);
        };
        let (paired, result) = user.accept(entropy)?;
        if current.is_some() {
            // Pairing again: what the relay queued under the old link can
            // never be opened by either side; revoking drops it. Before the
            // save: until the new route is authorised, the relay must not
            // report the device online through its old route, which would
            // clear the pending mark of a link the phone never got.
            client.revoke(phone_id).await?;
        }
        // Saved before the phone is answered (PROTOCOL §9.4).
        let peer = Peer::from_paired(paired, scope, now_unix(), opts.outbox).pending();
        keeper.keep(peer).await?;
        crash_point("pair.saved");
        client.authorize(phone_id).await?;
        client.pair_message(pid, phone_id, result).await?;
        crash_point("pair.sent");
        let devices = keeper.finished(phone_id).await?;
        Ok(Some(Paired {
            device_id: phone_id,
            name: info.name.clone(),
            scope,
            ephemeral: info.ephemeral,
            previous: current,
            devices,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(kind: ExecutorKind) -> ExecutorConfig {
        ExecutorConfig { name: "e".into(), kind, workdir: None, env: Vec::new() }
    }

    #[test]
    fn the_least_scope_that_lets_the_user_work() {
        let command = || executor(ExecutorKind::Command { program: "x".into(), args: Vec::new() });
        let jsonl = || executor(ExecutorKind::Jsonl { program: "x".into(), args: Vec::new() });
        let claude = || {
            executor(ExecutorKind::Claude {
                program: "x".into(),
                args: Vec::new(),
                setting_sources: Vec::new(),
            })
        };
        assert_eq!(least_scope(&[]), Scope::View);
        assert_eq!(least_scope(&[command()]), Scope::Submit);
        assert_eq!(least_scope(&[command(), jsonl()]), Scope::Approve);
        assert_eq!(least_scope(&[claude()]), Scope::Approve);
    }

    #[test]
    fn pairing_again_proposes_the_current_scope_unless_one_was_asked_for() {
        let info = DeviceInfo {
            name: "d".into(),
            platform: "linux".into(),
            app_version: "0".into(),
            ephemeral: false,
        };
        let mut o = PairOptions::new("https://r/p".into(), info);
        o.default_scope = Scope::Approve;
        assert_eq!(o.proposed(None), Scope::Approve);
        assert_eq!(o.proposed(Some(Scope::View)), Scope::View, "never raised silently");
        o.default_scope = Scope::View;
        assert_eq!(o.proposed(Some(Scope::Approve)), Scope::Approve, "never lowered silently");
        o.scope = Some(Scope::Submit);
        assert_eq!(o.proposed(Some(Scope::View)), Scope::Submit);
        assert_eq!(o.proposed(None), Scope::Submit);
    }

    #[test]
    fn plain_http_links_get_a_fresh_nonce() {
        let mut e = Entropy::os();
        let a = unique_base("http://192.168.1.5:7878/p", &mut e).unwrap();
        let b = unique_base("http://192.168.1.5:7878/p", &mut e).unwrap();
        assert_ne!(a, b);
        for l in [&a, &b] {
            let n = l.strip_prefix("http://192.168.1.5:7878/p?n=").unwrap();
            assert_eq!(n.len(), 8);
            assert!(n.bytes().all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)));
        }
        assert!(
            unique_base("http://x.local/p?a=1", &mut e)
                .unwrap()
                .starts_with("http://x.local/p?a=1&n=")
        );
        assert_eq!(
            unique_base("https://relay.example.com/p", &mut e).unwrap(),
            "https://relay.example.com/p"
        );
    }
}
