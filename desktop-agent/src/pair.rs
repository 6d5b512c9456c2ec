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
//! pending ([`crate::peers::Peer::pairing_pending`]); the route is
//! authorised; the accepting `PairResult` is sent; the mark is cleared once
//! the phone shows it got the answer (the relay reports it online), and the
//! device is removed if it does not within `answer_wait` ("pairing
//! interrupted", [`claim`]). A crash after the save leaves a pending device:
//! the daemon clears the mark when the device shows it got the answer, and
//! forgets it otherwise ([`crate::daemon`]).
//!
//! A relay restart or a reconnection loses the relay's mailbox: it is
//! opened again on the new connection, for the code on screen and for a
//! claim under way alike (PROTOCOL §9.4, "Interruptions"; [`claim`]).
//!
//! Where the new device is kept is a [`PeerKeeper`]: the peer store itself
//! (`tandem pair`, [`StoreKeeper`]) or the running daemon (`tandem up`,
//! [`DaemonKeeper`]), which is how `tandem up` pairs more devices while it
//! serves the paired ones ([`pair_alongside`]).

mod alongside;
mod claim;
mod keeper;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tandem_client::{Client, ClientError, Event};
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::{Entropy, EntropyError};
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

use crate::executor::{ExecutorConfig, ExecutorKind};
use crate::peers::{PeerError, Scope};
use crate::text::escaped;
use claim::{Claim, Step};

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
    /// How long an accepted device has to show it got the answer (it comes
    /// online) before it is removed as "pairing interrupted" (PROTOCOL
    /// §9.4): the step timeout, or `unfinished_pairing_secs` if shorter.
    pub answer_wait: Duration,
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
            answer_wait: Duration::from_secs(60),
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
/// when one of them can ask for approvals (`jsonl`, `claude`, `acp`), `submit` when
/// there are only `command` executors, `view` when there is none.
#[must_use]
pub fn least_scope(executors: &[ExecutorConfig]) -> Scope {
    let asks = |e: &ExecutorConfig| {
        matches!(
            e.kind,
            ExecutorKind::Jsonl { .. } | ExecutorKind::Claude { .. } | ExecutorKind::Acp { .. }
        )
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

/// The mailbox of the code on screen, on the relay connection of `client`.
#[derive(Clone, Copy)]
struct Mailbox<'a> {
    client: &'a Client,
    pid: [u8; 16],
    /// Until when it is opened again after a reconnection.
    expires: Instant,
}

impl Mailbox<'_> {
    /// Open it again on a new connection (the relay closed it with the old
    /// one, or restarted), for what is left of its life. Not awaited: an
    /// answer waits for the connection, and a code that cannot be reopened
    /// rotates anyway.
    fn reopen(&self) -> bool {
        let left = self.expires.saturating_duration_since(Instant::now()).as_secs();
        if left == 0 {
            return false;
        }
        let reopen = self.client.pair_open(self.pid, u16::try_from(left).unwrap_or(u16::MAX));
        tokio::spawn(async move {
            match reopen.await {
                Ok(()) => info!("the pairing code on screen works again (mailbox reopened)"),
                Err(e) => debug!(error = %e, "the pairing mailbox could not be reopened"),
            }
        });
        true
    }
}

/// What a pairing step hears from the relay.
enum Heard {
    /// A message in the mailbox: a claim's payload, or the claimant's next.
    Message(DeviceId, Vec<u8>),
    /// The connection came back (the mailbox was opened again if it has
    /// life left): what was in flight is lost.
    Reconnected,
    /// A peer came online (a paired phone authorised its route).
    Online(DeviceId),
}

/// Wait for what concerns mailbox `mailbox` until `until` (`None` then).
/// Other events are dropped: `tandem pair` does not ack deliveries (the
/// relay keeps them for the next connection), and `tandem up` routes only
/// pairing messages, reconnections and presence here ([`split_events`]).
async fn hear(
    events: &mut mpsc::Receiver<Event>,
    mailbox: &Mailbox<'_>,
    until: Instant,
) -> Result<Option<Heard>, PairError> {
    loop {
        match timeout_at(until, events.recv()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(PairError::Closed),
            Ok(Some(Event::PairMessage { pairing_id, peer, payload }))
                if pairing_id == mailbox.pid =>
            {
                return Ok(Some(Heard::Message(peer, payload)));
            }
            Ok(Some(Event::Connected { .. })) => {
                if !mailbox.reopen() {
                    return Ok(None);
                }
                return Ok(Some(Heard::Reconnected));
            }
            Ok(Some(Event::Presence { peer, online: true })) => {
                return Ok(Some(Heard::Online(peer)));
            }
            Ok(Some(other)) => debug!(?other, "event while pairing"),
        }
    }
}

/// Run pairing until one phone is paired (returns it) or the deadline.
///
/// A relay restart or a reconnection while a code is shown or a claim is
/// under way is survived as PROTOCOL §9.4 "Interruptions" says: the same
/// code's mailbox is opened again, a claim that had not reached the user
/// starts over from the phone's next hello, and an accepted device that
/// shows no sign of having got the answer within `answer_wait` is removed
/// ("pairing interrupted").
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
        match client.pair_open(pid, u16::try_from(ttl_secs).unwrap_or(u16::MAX)).await {
            Ok(()) => {}
            // The connection dropped before the answer: the mailbox is
            // opened again on the next connection (`hear`, on `Connected`).
            Err(ClientError::Interrupted) => {
                info!("the relay dropped while the pairing code was opened; opening it again");
            }
            Err(e) => return Err(e.into()),
        }
        let mailbox = Mailbox { client, pid, expires: Instant::now() + opts.code_ttl };
        ui.show_code(&offer.payload().to_link(&unique_base(&opts.link_base, &mut entropy)?));
        let mut rotate_at = Instant::now() + opts.code_ttl.saturating_sub(opts.rotate_before);
        if let Some(d) = opts.deadline {
            rotate_at = rotate_at.min(started + d);
        }
        let outcome = loop {
            let (phone_id, hello) = match hear(events, &mailbox, rotate_at).await? {
                None => break None,
                Some(Heard::Message(peer, hello)) => (peer, hello),
                Some(_) => continue,
            };
            let mut claim = Claim { mailbox, offer: &offer, phone_id, opts };
            let mut hello = hello;
            let step = loop {
                match claim.run(events, &hello, ui, keeper, &mut entropy).await {
                    // Interrupted before the user saw it: the phone's next
                    // hello starts over on the same code.
                    Ok(Step::Again(Some((peer, next)))) => {
                        claim.phone_id = peer;
                        hello = next;
                    }
                    other => break other,
                }
            };
            match step {
                Ok(Step::Paired(p)) => break Some(p),
                Ok(Step::Again(_)) => {}
                Ok(Step::Over) => break None,
                Err(PairError::Pairing(e)) => {
                    ui.status(&format!("a device tried to pair and failed: {e}"));
                    break None;
                }
                Err(e) => {
                    let _ = client.pair_close(pid).await;
                    return Err(e);
                }
            }
        };
        let _ = client.pair_close(pid).await;
        if let Some(p) = outcome {
            return Ok(p);
        }
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
        let acp = executor(ExecutorKind::Acp {
            program: "x".into(),
            args: Vec::new(),
            session_meta: None,
        });
        assert_eq!(least_scope(&[command(), acp]), Scope::Approve);
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
