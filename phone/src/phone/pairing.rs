//! Pairing from a scanned QR code: the claim, the desktop's welcome and
//! code, and the wait for the person at the desktop.
//!
//! A relay restart (or a dropped connection) loses the relay's mailboxes
//! and every pairing message in flight (PROTOCOL §6.9, §9.4
//! "Interruptions"). The desktop opens the same mailbox again when it
//! reconnects; this side claims it again when its own connection comes back,
//! or when its claim got no answer: with a fresh hello until the desktop's
//! welcome arrived, and with the same confirmation record once it was sent
//! (the desktop then answers with its result, again if it had sent it).
//! `pairing_claimed` on such a claim means the mailbox survived with this
//! phone's claim: it keeps waiting. Claims are retried at most
//! [`CLAIM_ATTEMPTS`] times, within [`CLAIM_RETRY_WINDOW`] (a first claim
//! refused outright: [`FIRST_CLAIM_WINDOW`]) and the code's life; out of retries, a resumed pairing fails with
//! [`PhoneError::PairingInterrupted`].

use super::*;

use tandem_proto::ErrorCode;
use tokio::time::Instant;

/// Claims one pairing step may make, the first included.
pub(super) const CLAIM_ATTEMPTS: u32 = 8;
/// How long a failing claim is retried after its first attempt, once a
/// claim of this pairing may have reached the relay (or after a
/// reconnection).
pub(super) const CLAIM_RETRY_WINDOW: Duration = Duration::from_secs(30);
/// As [`CLAIM_RETRY_WINDOW`] for a first claim refused outright
/// (`pairing_not_found`: the desktop may be reconnecting after a relay
/// restart, or the code was used): a used code is reported within seconds.
pub(super) const FIRST_CLAIM_WINDOW: Duration = Duration::from_secs(6);
/// The first pause between two claims; it doubles up to [`CLAIM_PAUSE_MAX`].
const CLAIM_PAUSE: Duration = Duration::from_millis(500);
const CLAIM_PAUSE_MAX: Duration = Duration::from_secs(4);

/// What a pairing under way hears from its relay connection.
#[derive(Debug)]
pub(super) enum PairInput {
    /// A message in its mailbox.
    Message(Vec<u8>),
    /// The connection to its relay came (back) up: the relay may have
    /// restarted and forgotten the mailbox.
    Reconnected,
    /// The connection to its relay dropped: what the desktop sends now is
    /// lost.
    Disconnected,
}

/// Whether a failed claim is worth another try: it may not have reached a
/// relay that kept it, or the desktop has not opened its mailbox again yet.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Refused(code, _) => *code == ErrorCode::PairingNotFound,
        other => unanswered(other),
    }
}

/// A request the connection lost or never answered (it may not have
/// reached the relay).
fn unanswered(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Interrupted
            | ClientError::Disconnected { .. }
            | ClientError::Timeout
            | ClientError::Io(_)
            | ClientError::WebSocket(_)
    )
}

/// Claim mailbox `pid` with what `make` produces (a fresh hello and its
/// state, or the same confirmation again), retrying as the module docs say.
/// `again`: an earlier claim of this pairing may hold the mailbox already.
/// Returns the state of the claim the relay took, or `None` when the relay
/// answered `pairing_claimed` to a repeated claim: the earlier claim holds
/// the mailbox (the caller keeps its state).
async fn claim<S>(
    client: &Client,
    pid: [u8; 16],
    url: &str,
    expires_at: Option<u64>,
    mut again: bool,
    mut make: impl FnMut() -> Result<(S, Vec<u8>), PhoneError>,
) -> Result<Option<S>, PhoneError> {
    let started = Instant::now();
    let mut pause = CLAIM_PAUSE;
    // The state of a claim that may have reached the relay unanswered.
    let mut unanswered: Option<S> = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (state, payload) = make()?;
        let err = match tokio::time::timeout(SEND_WAIT, client.pair_claim(pid, payload)).await {
            Ok(Ok(())) => return Ok(Some(state)),
            Ok(Err(ClientError::Refused(ErrorCode::PairingClaimed, _))) if again => {
                debug!("the mailbox kept this phone's earlier claim");
                return Ok(unanswered);
            }
            Ok(Err(e)) if retryable(&e) => {
                if matches!(e, ClientError::Interrupted | ClientError::Timeout) {
                    again = true;
                    unanswered = Some(state);
                }
                PhoneError::from(e)
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                again = true;
                unanswered = Some(state);
                PhoneError::RelayUnreachable(format!("no answer from {url}"))
            }
        };
        let next = Instant::now() + pause;
        let expired = expires_at.is_some_and(|t| now_unix() + pause.as_secs() + 1 >= t);
        let window = if again { CLAIM_RETRY_WINDOW } else { FIRST_CLAIM_WINDOW };
        if attempt >= CLAIM_ATTEMPTS || next > started + window || expired {
            debug!(attempt, error = %err, "giving up the claim");
            return Err(err);
        }
        debug!(attempt, error = %err, "claiming the pairing code again");
        tokio::time::sleep_until(next).await;
        pause = (pause * 2).min(CLAIM_PAUSE_MAX);
    }
}

impl Phone {
    /// Start pairing from a scanned QR code or its link. Returns once the
    /// desktop answered, with the 6-digit code to compare; then
    /// [`Pairing::wait`] for the person at the desktop to confirm. A relay
    /// restart on the way is survived (module docs).
    ///
    /// # Errors
    /// [`PhoneError::InvalidQr`], [`PhoneError::Expired`],
    /// [`PhoneError::AlreadyClaimed`], [`PhoneError::WrongRelay`],
    /// [`PhoneError::RelayUnreachable`], [`PhoneError::Timeout`],
    /// [`PhoneError::PairingInterrupted`].
    pub async fn start_pairing(&self, qr: &str) -> Result<Pairing, PhoneError> {
        let link = PairingLink::parse(qr, now_unix())?;
        let url = relay_url(link.relay_origin());
        let pid = link.payload.pairing_id();
        let desktop = link.payload.desktop.device_id();
        let expires_at = u64::from(link.payload.expires_at);
        let (tx, mut rx) = mpsc::channel(8);
        let client = {
            let mut st = self.lock();
            if st.closed {
                return Err(PhoneError::Closed);
            }
            st.pairings.insert(pid, (url.clone(), tx));
            self.start_relay(&mut st, &url)
        };
        let hello = || {
            let mut entropy =
                self.inner.entropy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(PhonePairing::start(&self.inner.key, &link.payload, &self.inner.info, &mut entropy)?)
        };
        let result = async {
            let mut pairing = claim(&client, pid, &url, Some(expires_at), false, hello)
                .await?
                .ok_or(PhoneError::AlreadyClaimed)?;
            let mut until = Instant::now() + WELCOME_WAIT;
            let welcome = loop {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Err(_) => return Err(PhoneError::Timeout),
                    Ok(None) => return Err(PhoneError::Closed),
                    Ok(Some(PairInput::Message(m))) => break m,
                    // The claim is made again once the connection is back.
                    Ok(Some(PairInput::Disconnected)) => {}
                    Ok(Some(PairInput::Reconnected)) => {
                        // A fresh hello: the desktop starts over from it.
                        // A claim made again that cannot be made ends the
                        // pairing with the words both sides use.
                        let again = claim(&client, pid, &url, Some(expires_at), true, hello)
                            .await
                            .map_err(|e| match e {
                                PhoneError::WrongRelay(_)
                                | PhoneError::RelayUnreachable(_)
                                | PhoneError::Timeout => PhoneError::PairingInterrupted,
                                e => e,
                            })?;
                        if let Some(p) = again {
                            pairing = p;
                            until = Instant::now() + WELCOME_WAIT;
                        }
                    }
                }
            };
            let envelope =
                Envelope::decode(&welcome).map_err(|e| PhoneError::Protocol(e.to_string()))?;
            let (waiting, confirm) = pairing.on_welcome(&envelope)?;
            if let Err(e) = client.pair_message(pid, desktop, confirm.clone()).await {
                // Lost with the connection: claimed again with it once the
                // connection is back (`Pairing::wait`).
                debug!(error = %e, "the confirmation did not leave");
            }
            Ok((waiting, confirm))
        }
        .await;
        match result {
            Ok((waiting, confirm)) => {
                Ok(Pairing { phone: self.clone(), waiting, rx, pid, url, desktop, confirm })
            }
            Err(e) => {
                self.lock().pairings.remove(&pid);
                self.drop_unused_relay(&url);
                Err(e)
            }
        }
    }

    /// Stop a relay connection that no desktop uses (after a failed pairing).
    fn drop_unused_relay(&self, url: &str) {
        let mut st = self.lock();
        let used = st.desktops.values().any(|d| d.record.relay_url == url)
            || st.pairings.values().len() > 0;
        if used {
            return;
        }
        if let Some(r) = st.relays.remove(url) {
            for t in r.tasks {
                t.abort();
            }
            let client = r.client;
            tokio::spawn(async move { client.close().await });
        }
    }
}

/// A pairing under way: the code is known, the desktop has not confirmed yet.
pub struct Pairing {
    phone: Phone,
    waiting: PhoneAwaitingResult,
    rx: mpsc::Receiver<PairInput>,
    pid: [u8; 16],
    url: String,
    desktop: DeviceId,
    /// The confirmation record sent: claimed again with it after a
    /// reconnection.
    confirm: Vec<u8>,
}

impl std::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pairing").field("desktop", &self.desktop).finish_non_exhaustive()
    }
}

impl Pairing {
    /// The 6-digit code both screens show.
    #[must_use]
    pub fn sas(&self) -> String {
        self.waiting.sas().to_string()
    }

    /// What the desktop calls itself.
    #[must_use]
    pub fn desktop_name(&self) -> String {
        self.waiting.desktop_info().name.clone()
    }

    /// Wait for the person at the desktop to confirm; then the desktop is
    /// paired and saved.
    ///
    /// # Errors
    /// [`PhoneError::DesktopRefused`], [`PhoneError::Timeout`],
    /// [`PhoneError::Storage`], [`PhoneError::PairingInterrupted`] (the
    /// relay connection was lost and the desktop's answer could not be
    /// fetched again).
    pub async fn wait(self) -> Result<DesktopSummary, PhoneError> {
        let Pairing { phone, waiting, rx, pid, url, desktop, confirm } = self;
        let r = finish(&phone, waiting, (rx, pid, confirm), &url, desktop).await;
        phone.lock().pairings.remove(&pid);
        match &r {
            Err(_) => phone.drop_unused_relay(&url),
            // With push on, the new desktop gets a key (and this relay the
            // registration, if it is a new one).
            Ok(d) => {
                phone.resubscribe_later(&url);
                phone.rotate_push_key_later(&d.desktop_id);
            }
        }
        r
    }
}

/// Wait for the desktop's result in the mailbox; after a reconnection,
/// claim the mailbox again with the same confirmation record, so that the
/// desktop sends its result (again).
///
/// While the connection is down the wait is cut to `interrupted_wait` from
/// the drop ([`PhoneConfig::pairing_interrupted_wait`]): a result sent
/// meanwhile is lost, and the desktop gives up on a phone that shows no
/// sign of having got it after about that long. A connection back in time
/// claims again, which makes the desktop answer again (or fails: the
/// desktop gave up), and waits as before.
async fn result(
    client: &Client,
    (rx, pid, confirm): &mut (mpsc::Receiver<PairInput>, [u8; 16], Vec<u8>),
    url: &str,
    interrupted_wait: Duration,
) -> Result<Vec<u8>, PhoneError> {
    let confirm_until = Instant::now() + CONFIRM_WAIT;
    let mut until = confirm_until;
    let mut interrupted = false;
    loop {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Err(_) if interrupted => return Err(PhoneError::PairingInterrupted),
            Err(_) => return Err(PhoneError::Timeout),
            Ok(None) => return Err(PhoneError::Closed),
            Ok(Some(PairInput::Message(m))) => return Ok(m),
            Ok(Some(PairInput::Disconnected)) => {
                interrupted = true;
                until = until.min(Instant::now() + interrupted_wait);
            }
            Ok(Some(PairInput::Reconnected)) => {
                interrupted = true;
                until = confirm_until;
                let again = || Ok(((), confirm.clone()));
                if let Err(e) = claim(client, *pid, url, None, true, again).await {
                    info!(error = %e, "the pairing could not be taken up again");
                    return Err(PhoneError::PairingInterrupted);
                }
            }
        }
    }
}

/// Tries at authorising the new desktop's route: a refusal for now
/// (`store_unavailable`, `rate_limited`) or a dropped connection is tried
/// again, within the desktop's wait for this phone's presence (about 10 s
/// here against its 60 s), before the pairing is taken back.
const AUTHORIZE_ATTEMPTS: u32 = 5;

/// Whether an authorisation that failed may succeed if made again.
fn authorize_again(e: &ClientError) -> bool {
    match e {
        ClientError::Refused(code, _) => {
            matches!(code, ErrorCode::StoreUnavailable | ErrorCode::RateLimited)
        }
        other => unanswered(other),
    }
}

/// Authorise the route to `desktop`, again after a temporary failure (as
/// [`AUTHORIZE_ATTEMPTS`] says); the last error otherwise.
async fn authorize(client: &Client, desktop: DeviceId) -> Result<(), ClientError> {
    let mut pause = CLAIM_PAUSE;
    let mut attempt = 1;
    loop {
        match client.authorize(desktop).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < AUTHORIZE_ATTEMPTS && authorize_again(&e) => {
                info!(desktop = %desktop, error = %e, attempt, "route not authorised yet: again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(CLAIM_PAUSE_MAX);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn finish(
    phone: &Phone,
    waiting: PhoneAwaitingResult,
    mut mailbox: (mpsc::Receiver<PairInput>, [u8; 16], Vec<u8>),
    url: &str,
    desktop: DeviceId,
) -> Result<DesktopSummary, PhoneError> {
    let client = {
        let mut st = phone.lock();
        phone.start_relay(&mut st, url)
    };
    let result = result(&client, &mut mailbox, url, phone.inner.pairing_interrupted_wait).await?;
    let envelope = Envelope::decode(&result).map_err(|e| PhoneError::Protocol(e.to_string()))?;
    let info = waiting.desktop_info().clone();
    let paired = waiting.on_result(&envelope)?;
    let record = DesktopRecord {
        desktop_id: desktop.to_string(),
        info,
        relay_url: url.to_owned(),
        paired_at_unix: now_unix(),
        link: tandem_proto::link::Link::from_paired(paired, Default::default()),
        offsets: BTreeMap::new(),
        finished: Vec::new(),
    };
    // Saved before the route is authorised: the desktop takes the phone's
    // presence (which the authorisation brings) as proof that the phone
    // holds the pairing, so it must already be on disk. An authorisation
    // that fails takes the file back: nothing one-sided is left.
    store::save(&phone.inner.data_dir, &record).map_err(storage)?;
    if let Err(e) = authorize(&client, desktop).await {
        if let Err(d) = store::remove(&phone.inner.data_dir, &record.desktop_id) {
            warn!(desktop = %desktop, error = %d, "cannot remove the pairing the relay refused");
        }
        return Err(e.into());
    }
    let mut st = phone.lock();
    let d = Desktop::new(desktop, record, Offsets::default(), true);
    let s = summary(&st, &d);
    st.desktops.insert(d.record.desktop_id.clone(), d);
    drop(st);
    info!(desktop = %desktop, "paired");
    // The renewal schedule's clock starts now (saved), not at the next tick.
    phone.upkeep(&s.desktop_id);
    Ok(s)
}
