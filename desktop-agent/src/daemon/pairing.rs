//! Pairing while the daemon runs (`tandem up`): the pairing asks the daemon,
//! which owns the peer store, for a device's scope and to keep the new
//! device ([`crate::pair::DaemonKeeper`]); the new device joins the live
//! state at once (it is attached, and gets task events from then on).

use std::time::Instant;

use crate::pair::PairCall;

use super::Daemon;

impl Daemon<'_> {
    /// Answer one request from a pairing.
    pub(super) fn pair_call(&mut self, call: PairCall) {
        let kept = match &call {
            PairCall::Keep { peer, .. } => Some(peer.device_id()),
            _ => None,
        };
        let forgotten = match &call {
            PairCall::Interrupted { id, .. } => Some(*id),
            _ => None,
        };
        let mut events = Vec::new();
        call.apply(self.peers, &mut |e| events.push(e));
        for e in events {
            self.record(e);
        }
        if let Some(id) = kept
            && self.peers.get(&id).is_some()
        {
            // A device paired again starts afresh: attached, not yet online.
            self.last_heard.insert(id, Instant::now());
            self.detached.remove(&id);
            self.online.remove(&id);
        }
        if let Some(id) = forgotten {
            // Its pairing was interrupted after the answer: gone.
            self.last_heard.remove(&id);
            self.detached.remove(&id);
            self.online.remove(&id);
        }
    }
}
