//! One claimed code, from the phone's hello to the phone's sign that it got
//! the answer, across relay restarts and reconnections (PROTOCOL §9.4,
//! "Interruptions").
//!
//! * Welcome sent, waiting for the confirmation: after a reconnection the
//!   mailbox is open again (same code) and the claim that comes next decides:
//!   a fresh hello starts over from it ([`Step::Again`]); the confirmation
//!   record (the phone got the welcome before the restart) goes on.
//! * Asking the user: reconnections reopen the mailbox meanwhile, so that
//!   the phone's repeated claim finds it.
//! * Answered: the device is saved *pending*, its route authorised, the
//!   `PairResult` sent. It is done only when the phone shows it got the
//!   answer: the relay reports it online (its `Authorize` completed the
//!   route). A claim repeating the confirmation record (the phone
//!   reconnected without the answer) gets the same `PairResult` again. No
//!   sign within `answer_wait`: the device is removed (audited as
//!   forgotten, its route revoked) and the terminal says "pairing
//!   interrupted", as the phone does.

use std::time::Duration;

use tandem_proto::DeviceId;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::pairing::{DesktopPairing, PairingError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    CONFIRM_TIMEOUT, ConfirmRequest, Decision, Heard, Mailbox, PairError, PairOptions, PairUi,
    Paired, PeerKeeper, hear, now_unix,
};
use crate::crashpoint::crash_point;
use crate::peers::Peer;
use tandem_client::Event;

/// What the terminal says when an accepted device never showed it got the
/// answer (the phone says the same: `PhoneError::PairingInterrupted`).
pub(super) const INTERRUPTED: &str = "pairing interrupted: scan again";

/// How a claim ended, when it did not fail.
pub(super) enum Step {
    /// Paired; the phone has its answer.
    Paired(Paired),
    /// Interrupted before the user was asked: the code stays. With the next
    /// hello if it came already (from that device).
    Again(Option<(DeviceId, Vec<u8>)>),
    /// Over (refused, timed out, interrupted after the answer): a new code.
    Over,
}

/// One claimed code.
pub(super) struct Claim<'a> {
    pub(super) mailbox: Mailbox<'a>,
    pub(super) offer: &'a DesktopPairing,
    pub(super) phone_id: DeviceId,
    pub(super) opts: &'a PairOptions,
}

fn is_hello(payload: &[u8]) -> bool {
    matches!(Envelope::decode(payload), Ok(Envelope::PairHello { .. }))
}

impl Claim<'_> {
    pub(super) async fn run<K: PeerKeeper>(
        &self,
        events: &mut mpsc::Receiver<Event>,
        hello: &[u8],
        ui: &mut dyn PairUi,
        keeper: &mut K,
        entropy: &mut Entropy,
    ) -> Result<Step, PairError> {
        let Self { mailbox, offer, opts, .. } = self;
        let (client, pid) = (mailbox.client, mailbox.pid);
        let hello = Envelope::decode(hello).map_err(|e| PairingError::Handshake(e.to_string()))?;
        let (waiting, welcome) = offer.on_hello(&hello, &opts.info, now_unix(), entropy)?;
        let mut phone_id = self.phone_id;
        client.pair_message(pid, phone_id, welcome).await?;
        let until = Instant::now() + opts.step_timeout;
        let mut reconnected = false;
        let confirm = loop {
            match hear(events, mailbox, until).await? {
                None => {
                    ui.status("the phone did not finish pairing in time");
                    return Ok(Step::Over);
                }
                Some(Heard::Reconnected) => {
                    debug!("reconnected during a claim: waiting for the phone's next claim");
                    reconnected = true;
                }
                Some(Heard::Message(peer, p)) if reconnected && is_hello(&p) => {
                    return Ok(Step::Again(Some((peer, p))));
                }
                Some(Heard::Message(peer, p)) if reconnected || peer == phone_id => {
                    phone_id = peer;
                    break p;
                }
                Some(_) => {}
            }
        };
        let confirm_record = confirm.clone();
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
        // From here the code's own life no longer bounds the mailbox: the
        // user may take longer, and the answer must still reach the phone.
        let mailbox =
            Mailbox { expires: Instant::now() + CONFIRM_TIMEOUT + opts.step_timeout, ..*mailbox };
        let decision = ask(events, &mailbox, ui, request).await?;
        let Some(Decision::Accept(scope)) = decision else {
            if decision.is_none() {
                ui.status("no answer in time");
            }
            let refusal = user.refuse("the codes did not match or the desktop user declined")?;
            client.pair_message(pid, phone_id, refusal).await?;
            keeper.refused(phone_id).await;
            ui.status("pairing refused");
            return Ok(Step::Over);
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
        if let Err(e) = client.pair_message(pid, phone_id, result.clone()).await {
            // Lost with the connection: sent again when the phone claims
            // the reopened mailbox.
            debug!(error = %e, "the pairing answer did not leave");
        }
        crash_point("pair.sent");
        let answered = (confirm_record.as_slice(), result.as_slice());
        if !got_answer(events, &mailbox, phone_id, answered, opts.answer_wait).await? {
            info!(peer = %phone_id, "the phone never showed it got the pairing answer");
            keeper.interrupted(phone_id).await?;
            // Best effort, not awaited (the relay may be down): the phone
            // never authorised, so no route exists; this withdraws this
            // side's half now rather than at the relay's expiry.
            let revoke = client.revoke(phone_id);
            tokio::spawn(async move {
                if let Err(e) = revoke.await {
                    warn!(peer = %phone_id, error = %e, "the relay did not take the revocation");
                }
            });
            ui.status(&format!(
                "{} did not get the answer: {INTERRUPTED} (a new code follows; it was not paired)",
                crate::text::escaped(&info.name)
            ));
            return Ok(Step::Over);
        }
        let devices = keeper.finished(phone_id).await?;
        Ok(Step::Paired(Paired {
            device_id: phone_id,
            name: info.name.clone(),
            scope,
            ephemeral: info.ephemeral,
            previous: current,
            devices,
        }))
    }
}

/// Ask the desktop user (at most [`CONFIRM_TIMEOUT`]; `None` then), opening
/// the mailbox again on every reconnection meanwhile.
async fn ask(
    events: &mut mpsc::Receiver<Event>,
    mailbox: &Mailbox<'_>,
    ui: &mut dyn PairUi,
    request: ConfirmRequest<'_>,
) -> Result<Option<Decision>, PairError> {
    let answer = tokio::time::timeout(CONFIRM_TIMEOUT, ui.confirm(request));
    tokio::pin!(answer);
    loop {
        tokio::select! {
            d = &mut answer => return Ok(d.ok()),
            ev = events.recv() => match ev {
                None => return Err(PairError::Closed),
                Some(Event::Connected { .. }) => {
                    mailbox.reopen();
                }
                // The phone claiming again: answered once the user decided.
                Some(other) => debug!(?other, "event while the user decides"),
            },
        }
    }
}

/// After the accepting answer: wait up to `wait` for the phone to come
/// online (its `Authorize` completed the route); answer a claim that
/// repeats the confirmation record with the same result again. Whether it
/// did.
async fn got_answer(
    events: &mut mpsc::Receiver<Event>,
    mailbox: &Mailbox<'_>,
    phone_id: DeviceId,
    (confirm, result): (&[u8], &[u8]),
    wait: Duration,
) -> Result<bool, PairError> {
    let mailbox = Mailbox { expires: Instant::now() + wait, ..*mailbox };
    let until = mailbox.expires;
    loop {
        match hear(events, &mailbox, until).await? {
            None => return Ok(false),
            Some(Heard::Online(peer)) if peer == phone_id => return Ok(true),
            Some(Heard::Message(peer, p)) if p == confirm => {
                info!("the phone asked for the pairing answer again");
                if let Err(e) =
                    mailbox.client.pair_message(mailbox.pid, peer, result.to_vec()).await
                {
                    debug!(error = %e, "the pairing answer did not leave");
                }
            }
            Some(_) => {}
        }
    }
}
