//! A record from a paired device: opened by its link, each instruction
//! applied once (`daemon/instructions.rs`), and the link's receipt saved
//! together with the replies, before the relay delivery is acknowledged.

use std::time::Instant;

use tandem_proto::DeviceId;
use tandem_proto::link::LinkEvent;

use super::{Daemon, DaemonError, instructions, now_unix, outbox, renewal};
use crate::crashpoint::crash_point;
use crate::tasks::Audience;
use tracing::debug;

impl Daemon<'_> {
    pub(super) async fn deliver(
        &mut self,
        from: DeviceId,
        payload: &[u8],
    ) -> Result<(), DaemonError> {
        // A revocation or scope change made by `tandem revoke`/`scope` meanwhile.
        if !self.peers.sync_from_disk(&from)? {
            debug!(peer = %from, "record from a device that is not paired dropped");
            return Ok(());
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            // Not (or no longer) paired: nothing in it can be accepted.
            debug!(peer = %from, "record from an unknown device dropped");
            return Ok(());
        };
        let kind = renewal::Kind::of(payload);
        let events = match peer.link_mut().receive(self.key, payload, &mut self.entropy) {
            Ok(e) => e,
            Err(e) => {
                debug!(peer = %from, error = %e, "record refused");
                return Ok(());
            }
        };
        peer.mark_seen(now_unix());
        let scope = peer.scope();
        let link = instructions::link_key(from, peer.link());
        let step = renewal::Points::of(kind, &events);
        let renewed = events.iter().any(|e| matches!(e, LinkEvent::SessionRenewed));
        if renewed {
            self.session_renewed(from);
        }
        if let Some(p) = step {
            crash_point(p.received);
        }
        // Act before the link's receipt is saved (PROTOCOL §13.5 rule 3):
        // each instruction's effect and its applied marker are durable
        // first. A crash before the save below makes the relay deliver the
        // record again, the link accept it again, and the marker skip it.
        let at = instructions::Applying { link: &link, applied: self.tasks.applied(&link)? };
        let mut envelopes = Vec::new();
        let mut replies = Vec::new();
        let mut ack_due = false;
        let mut steps = None;
        for ev in events {
            match ev {
                LinkEvent::Message { seq, message } => {
                    // Anything from the phone re-attaches it.
                    self.last_heard.insert(from, Instant::now());
                    self.detached.remove(&from);
                    let (out, s) = self.apply(from, scope, &at, seq, &message).await?;
                    replies.extend(out);
                    steps = s.or(steps);
                }
                LinkEvent::Send(e) => envelopes.extend(e),
                LinkEvent::ResyncNeeded { from: a, to: b } => self.messages_lost(from, a, b),
                LinkEvent::AckDue => ack_due = true,
                // Counted above, before the first save.
                LinkEvent::SessionRenewed => {}
            }
        }
        // An acknowledgement may have made room for a waiting history page.
        let waiting: Vec<(String, u64)> = self
            .waiting_pages
            .range((from, String::new())..)
            .take_while(|((d, _), _)| *d == from)
            .map(|((_, t), o)| (t.clone(), *o))
            .collect();
        for (task, offset) in waiting {
            let taken = replies.iter().filter(|(a, _)| reaches(a, from)).count();
            replies.extend(self.history_page(from, &task, offset, taken)?);
        }
        // Data arrived: the acknowledgement rides on the first reply to this
        // device, or goes bare. Never in answer to an ack alone (the two
        // sides would ack each other's acks forever).
        let direct = replies.iter().any(|(a, _)| matches!(a, Audience::Device(d) if *d == from))
            || replies.iter().any(|(a, _)| *a == Audience::Everyone);
        if ack_due
            && !direct
            && let Some(peer) = self.peers.get_mut(&from)
            && let Ok(ack) = peer.link_mut().ack()
        {
            envelopes.push(ack);
        }
        // The receipt and the replies sealed under it are saved in one write
        // (PROTOCOL §13.5 rule 3): once the relay delivery is taken, its
        // answer (a refusal too, which leaves no applied marker and no
        // history) is in the outbox, sent again until the phone acknowledges
        // it, and the phone hears it once.
        let batch = self.seal_batch(replies, Some(from))?;
        let gone = self.save_batch(&batch)?;
        if gone.contains(&from) {
            return Ok(());
        }
        if let Some(p) = step {
            crash_point(p.saved);
        }
        if let Some(s) = steps {
            crash_point(s.link_saved);
            if !batch.sealed.is_empty() {
                crash_point(s.replied);
            }
        }
        // The renewal's answer (the accept, or the confirming ack) is the
        // last envelope: its crash point passes once the relay stored it.
        let last = envelopes.len().saturating_sub(1);
        for (i, e) in envelopes.into_iter().enumerate() {
            self.post_step(from, e, step.and_then(|p| p.sent).filter(|_| i == last));
        }
        let mut sealed = batch.sealed;
        // A renewal ended an exhausted session: what could not be sealed
        // goes out now, with the replies to this phone.
        if renewed && self.reseal.remove(&from) {
            sealed.retain(|(to, _, _)| *to != from);
            self.resend(from, outbox::Resend::All).await?;
        }
        self.post_sealed(sealed, &gone, steps);
        Ok(())
    }
}

/// Whether a message for `audience` goes to `device`.
fn reaches(audience: &Audience, device: DeviceId) -> bool {
    matches!(audience, Audience::Device(d) if *d == device) || *audience == Audience::Everyone
}
