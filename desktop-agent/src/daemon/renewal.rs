//! Session renewal and rekeying for every paired phone: the schedule of
//! `docs/PROTOCOL.md` §10.6 ([`tandem_proto::link::Link::upkeep`]) run on
//! the daemon's one-second tick and as soon as a phone comes online, the
//! link persisted before the `SessionInit` leaves, the crash points of each
//! step ([`crate::crashpoint`]), and what `tandem status` shows of it.

use serde_json::{Value, json};
use tandem_proto::DeviceId;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::LinkEvent;
use tracing::{debug, info, warn};

use super::{Daemon, DaemonError};
use crate::crashpoint::crash_point;
use crate::peers::{Peer, PeerError};

/// Unix milliseconds by the system clock (0 if it is before 1970).
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What kind of envelope a delivery is, as far as renewal is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A `SessionInit`: this side answers as responder.
    Init,
    /// A `SessionAccept`: the answer to this side's renewal.
    Accept,
    /// A record (or anything else).
    Record,
}

impl Kind {
    pub(super) fn of(payload: &[u8]) -> Kind {
        match Envelope::decode(payload) {
            Ok(Envelope::SessionInit { .. }) => Kind::Init,
            Ok(Envelope::SessionAccept { .. }) => Kind::Accept,
            _ => Kind::Record,
        }
    }
}

/// The crash points a delivery passes when it is a step of a renewal: once
/// opened, once persisted, and (when it is answered) once the relay stored
/// the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Points {
    pub(super) received: &'static str,
    pub(super) saved: &'static str,
    pub(super) sent: Option<&'static str>,
}

impl Points {
    /// The points of a delivery of `kind` that led to `events`, if it was a
    /// renewal step.
    pub(super) fn of(kind: Kind, events: &[LinkEvent]) -> Option<Points> {
        let renewed = events.iter().any(|e| matches!(e, LinkEvent::SessionRenewed));
        let answered = events.iter().any(|e| matches!(e, LinkEvent::Send(_)));
        match kind {
            Kind::Init if answered => Some(Points {
                received: "renew.init_received",
                saved: "renew.next_saved",
                sent: Some("renew.accept_sent"),
            }),
            Kind::Accept if renewed => Some(Points {
                received: "renew.accept_received",
                saved: "renew.switch_saved",
                sent: Some("renew.confirm_sent"),
            }),
            Kind::Record if renewed => Some(Points {
                received: "renew.confirm_received",
                saved: "renew.promoted_saved",
                sent: None,
            }),
            _ => None,
        }
    }
}

impl Daemon<'_> {
    /// Run the schedule for every paired phone (the one-second tick).
    pub(super) fn upkeep_all(&mut self) -> Result<(), DaemonError> {
        let ids: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
        for id in ids {
            self.upkeep(id)?;
        }
        Ok(())
    }

    /// Run the schedule for one phone: rekey, abandon an unanswered
    /// renewal, start one when due and the phone is online. Anything that
    /// changed is persisted before the `SessionInit` is handed to the relay.
    pub(super) fn upkeep(&mut self, id: DeviceId) -> Result<(), DaemonError> {
        let online = self.connected && self.online.contains(&id);
        let now = now_ms();
        let Some(peer) = self.peers.get_mut(&id) else { return Ok(()) };
        let done = match peer.link_mut().upkeep(
            self.key,
            now,
            online,
            &self.schedule,
            &mut self.entropy,
        ) {
            Ok(done) => done,
            Err(e) => {
                // No randomness for a renewal; the rest of the upkeep is done
                // and may have changed the link: persist it anyway.
                warn!(peer = %id, error = %e, "cannot start a session renewal");
                tandem_proto::upkeep::Upkeep { changed: true, ..Default::default() }
            }
        };
        if !done.must_persist() {
            return Ok(());
        }
        // A revocation or scope change made by another process meanwhile:
        // never write back a stale scope, never bring a revoked device back.
        if !self.peers.sync_from_disk(&id)? {
            return Ok(());
        }
        match self.peers.save(&id) {
            Err(PeerError::UnknownPeer(_)) => return Ok(()),
            r => r?,
        }
        if done.rekeyed {
            debug!(peer = %id, "sending key ratcheted");
        }
        if done.abandoned {
            info!(peer = %id, "session renewal got no answer in time; abandoned");
        }
        if let Some(init) = done.renewal {
            debug!(peer = %id, "renewing the session");
            crash_point("renew.init_saved");
            self.post_step(id, init, Some("renew.init_sent"));
        }
        Ok(())
    }

    /// A new session is in use with `id` (either side's renewal finished):
    /// count it for `tandem status`. The caller persists the peer.
    pub(super) fn session_renewed(&mut self, id: DeviceId) {
        let Some(peer) = self.peers.get_mut(&id) else { return };
        peer.note_renewal(super::now_unix());
        info!(
            peer = %id,
            session = %hex(&peer.link().session_id()),
            renewals = peer.renewals().count,
            "session renewed"
        );
    }

    /// Whether records for `id` could not be sealed (the session's counters
    /// are used up): a renewal fixes it, and the outbox follows at once.
    pub(super) fn needs_reseal(&mut self, id: DeviceId) {
        self.reseal.insert(id);
    }
}

/// Lower-case hex, for session ids in logs and `tandem status`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A device's session as `tandem status` shows it.
pub(super) fn session_status(peer: &Peer, now_ms: u64) -> Value {
    let link = peer.link();
    let (age_ms, records) = link.session_age(now_ms);
    let renewals = peer.renewals();
    json!({
        "id": hex(&link.session_id()),
        "age_secs": age_ms / 1000,
        "records": records,
        "send_epoch": link.send_epoch(),
        "renewal_pending": link.renewal_pending(),
        "renewals": renewals.count,
        "last_renewal_unix": renewals.last_unix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_renewal_steps_have_crash_points() {
        let answered = [LinkEvent::Send(vec![vec![1]])];
        let renewed = [LinkEvent::SessionRenewed, LinkEvent::Send(vec![vec![1]])];
        let init = Points::of(Kind::Init, &answered).unwrap();
        assert_eq!((init.received, init.sent), ("renew.init_received", Some("renew.accept_sent")));
        // A collision this side wins, or an old init: no answer, no step.
        assert_eq!(Points::of(Kind::Init, &[]), None);
        let accept = Points::of(Kind::Accept, &renewed).unwrap();
        assert_eq!(accept.saved, "renew.switch_saved");
        // An accept that did not switch (refused) is no step either.
        assert_eq!(Points::of(Kind::Accept, &answered), None);
        let promoted = Points::of(Kind::Record, &[LinkEvent::SessionRenewed]).unwrap();
        assert_eq!((promoted.saved, promoted.sent), ("renew.promoted_saved", None));
        assert_eq!(Points::of(Kind::Record, &[LinkEvent::AckDue]), None);
        assert_eq!(Kind::of(b"garbage"), Kind::Record);
    }
}
