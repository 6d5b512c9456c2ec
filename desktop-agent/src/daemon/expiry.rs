//! Forgetting devices that will not come back, through the same path as
//! `tandem revoke` (the relay is told, the device's state is deleted, both
//! audited, followed by an entry saying why):
//!
//! * an **ephemeral** device (a web page that keeps its keys only while it
//!   is open, PROTOCOL §15.4) that has been gone, neither connected to the
//!   relay nor sending anything, for `ephemeral_device_ttl_secs`: its page
//!   was closed, so its keys no longer exist;
//! * a device whose **pairing did not finish** (saved, then the agent
//!   stopped before the phone got its answer; [`crate::peers::Peer::pairing_pending`])
//!   and that gave no sign since, `unfinished_pairing_secs` after pairing.
//!
//! The clock is the device's last sign of life as saved with it (a record,
//! the relay reporting it offline, its pairing), so time the agent was
//! stopped counts: a restart does not end a phone's page, and the page
//! comes back online within moments. Nothing is forgotten while the relay
//! connection is down, nor in the first minute after it came up (at most
//! the TTL), which gives open pages the time to reconnect.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tandem_client::Event;
use tandem_proto::DeviceId;
use tracing::{info, warn};

use super::{Daemon, DaemonError, now_unix};
use crate::audit::AuditEvent;
use crate::peers::PeerError;

/// How long after (re)connecting nothing is forgotten (at most the TTL).
const SETTLE: Duration = Duration::from_secs(60);

/// The expiry settings and clock.
#[derive(Debug, Clone)]
pub(super) struct Expiry {
    pub(super) ephemeral_ttl: Duration,
    pub(super) unfinished_pairing: Duration,
    connected_since: Option<Instant>,
    /// Devices whose revocation failed in this run: not tried every second.
    failed: HashSet<DeviceId>,
}

impl Default for Expiry {
    fn default() -> Self {
        Self {
            ephemeral_ttl: Duration::from_secs(12 * 3600),
            unfinished_pairing: Duration::from_secs(600),
            connected_since: Some(Instant::now()),
            failed: HashSet::new(),
        }
    }
}

impl Daemon<'_> {
    /// What a relay event says about devices' lives: coming online means a
    /// device that was pending its pairing answer got it (a phone sends its
    /// half of the route only once paired); an ephemeral device going
    /// offline (or the relay connection going down while it was online)
    /// starts its clock.
    pub(super) fn note_presence(&mut self, ev: &Event) -> Result<(), DaemonError> {
        let now = now_unix();
        let changed: Vec<DeviceId> = match ev {
            Event::Connected { .. } => {
                self.expiry.connected_since = Some(Instant::now());
                Vec::new()
            }
            Event::Disconnected { .. } => {
                self.expiry.connected_since = None;
                let online: Vec<DeviceId> = self.online.iter().copied().collect();
                online
                    .into_iter()
                    .filter(|id| match self.peers.get_mut(id) {
                        Some(p) if p.ephemeral() => {
                            p.mark_offline(now);
                            true
                        }
                        _ => false,
                    })
                    .collect()
            }
            Event::Presence { peer, online } => match self.peers.get_mut(peer) {
                Some(p) if *online => {
                    if p.finish_pairing() {
                        vec![*peer]
                    } else {
                        Vec::new()
                    }
                }
                Some(p) if p.ephemeral() => {
                    p.mark_offline(now);
                    vec![*peer]
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        for id in changed {
            match self.peers.save(&id) {
                Err(PeerError::UnknownPeer(_)) => {}
                r => r?,
            }
        }
        Ok(())
    }

    /// Forget (revoke) the devices that are gone for good; see the module docs.
    pub(super) async fn forget_gone(&mut self) -> Result<(), DaemonError> {
        let Some(since) = self.expiry.connected_since else { return Ok(()) };
        // Devices get the same time to come back after every (re)connection,
        // whichever rule would forget them: a phone whose relay restarted
        // (`tandem up`) reconnects a moment after the agent.
        let up_for = since.elapsed();
        let settled = up_for >= self.expiry.ephemeral_ttl.min(SETTLE);
        let settled_pending = up_for >= self.expiry.unfinished_pairing.min(SETTLE);
        let now = now_unix();
        let mut gone = Vec::new();
        for p in self.peers.list() {
            let id = p.device_id();
            if self.online.contains(&id) || self.expiry.failed.contains(&id) {
                continue;
            }
            let silent = now.saturating_sub(p.last_heard_unix());
            if p.pairing_pending()
                && settled_pending
                && silent >= self.expiry.unfinished_pairing.as_secs()
            {
                gone.push((id, format!("its pairing never finished ({silent} s ago)")));
            } else if p.ephemeral() && settled && silent >= self.expiry.ephemeral_ttl.as_secs() {
                gone.push((id, format!("ephemeral device gone for {silent} s")));
            }
        }
        for (id, reason) in gone {
            info!(peer = %id, reason, "forgetting a device");
            match self.revoke(&id.to_string()).await? {
                // After the revocation's own entry: why it happened.
                Ok((id, _)) => {
                    self.relay_revoke(id, None);
                    self.record(AuditEvent::Forgotten { device: id.to_string(), reason });
                }
                Err(e) => {
                    warn!(peer = %id, error = e, "could not forget a device");
                    self.expiry.failed.insert(id);
                }
            }
        }
        Ok(())
    }
}
