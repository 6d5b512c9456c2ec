//! Pairing mailboxes across nodes: a mailbox belongs to the node of the
//! desktop that opened it; `pair:<id>` (`node|desktop|claimer`) tells every
//! node where it is and who claimed it, `pairc:<id>` keeps the claim's
//! payload for as long as the mailbox lives.

use std::time::Duration;

use tandem_proto::DeviceId;
use tandem_proto::frame::Frame;
use tracing::warn;

use super::{Claim, Cluster, ClusterError, Message, hex, parse_hex};

impl Cluster {
    pub(super) fn pair_key(&self, id: &[u8; 16]) -> String {
        format!("{}pair:{}", self.prefix, hex(&DeviceId(*id)))
    }

    fn claim_key(&self, id: &[u8; 16]) -> String {
        format!("{}pairc:{}", self.prefix, hex(&DeviceId(*id)))
    }

    /// Register a mailbox `desktop` opened here; false if the id is taken
    /// on some node.
    pub(crate) async fn pair_open(
        &self,
        id: [u8; 16],
        desktop: DeviceId,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let mut c = self.link.conn().await?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let n: i64 = self
            .scripts
            .pair_open
            .key(self.pair_key(&id))
            .arg(&self.node)
            .arg(hex(&desktop))
            .arg(ms)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// Claim mailbox `id` for `claimer`; the desktop's node (if not this
    /// one) is told with `payload`.
    pub(crate) async fn pair_claim(
        &self,
        id: [u8; 16],
        claimer: DeviceId,
        payload: &[u8],
    ) -> Result<Claim, ClusterError> {
        use tandem_proto::ErrorCode;
        let mut c = self.link.conn().await?;
        let got: String = self
            .scripts
            .pair_claim
            .key(self.pair_key(&id))
            .key(self.claim_key(&id))
            .arg(hex(&claimer))
            .arg(&self.prefix)
            .arg(Message::claimed(id, claimer, payload))
            .arg(&self.node)
            .arg(payload)
            .invoke_async(&mut c)
            .await?;
        Ok(match got.as_str() {
            "not_found" => Claim::Refused(ErrorCode::PairingNotFound),
            "claimed" => Claim::Refused(ErrorCode::PairingClaimed),
            "self" => Claim::Refused(ErrorCode::UnexpectedFrame),
            won => match won.rsplit_once('|').and_then(|(n, d)| Some((n, parse_hex(d)?))) {
                Some((node, desktop)) => Claim::Won { desktop, here: node == self.node },
                None => Claim::Refused(ErrorCode::PairingNotFound),
            },
        })
    }

    /// Pass a pairing message in mailbox `id` from `from` to `to` (on
    /// another node); `Ok(None)` when sent, else the code to refuse with.
    pub(crate) async fn pair_route(
        &self,
        id: [u8; 16],
        from: DeviceId,
        to: DeviceId,
        frame: &Frame,
    ) -> Result<Option<tandem_proto::ErrorCode>, ClusterError> {
        use tandem_proto::ErrorCode;
        let bytes = frame.encode().map_err(|e| ClusterError::Redis(e.to_string()))?;
        let mut c = self.link.conn().await?;
        let n: i64 = self
            .scripts
            .pair_route
            .key(self.pair_key(&id))
            .key(self.key("own", &to))
            .arg(hex(&from))
            .arg(hex(&to))
            .arg(&self.prefix)
            .arg(Message::frame(to, &bytes))
            .invoke_async(&mut c)
            .await?;
        Ok(match n {
            1 => None,
            -1 => Some(ErrorCode::PairingNotFound),
            _ => Some(ErrorCode::PairingNotFound),
        })
    }

    /// Remove mailbox `id`'s registration (its desktop closed it, or went).
    pub(crate) async fn pair_close(&self, id: [u8; 16], desktop: DeviceId) {
        let Ok(mut c) = self.link.conn().await else { return };
        let r: Result<i64, _> = self
            .scripts
            .pair_close
            .key(self.pair_key(&id))
            .key(self.claim_key(&id))
            .arg(hex(&desktop))
            .invoke_async(&mut c)
            .await;
        if let Err(e) = r {
            warn!(error = %e, "could not remove a mailbox's registration; it expires by itself");
        }
    }

    /// The claim of mailbox `id` recorded in Redis, if it was claimed: who
    /// claimed it and with what (for a desktop's node that may have missed
    /// the `Claimed` message).
    pub(crate) async fn pair_claimed(
        &self,
        id: [u8; 16],
    ) -> Result<Option<(DeviceId, Vec<u8>)>, ClusterError> {
        let mut c = self.link.conn().await?;
        let (v, payload): (Option<String>, Option<Vec<u8>>) = redis::pipe()
            .get(self.pair_key(&id))
            .get(self.claim_key(&id))
            .query_async(&mut c)
            .await?;
        let claimer = v.as_deref().and_then(|v| v.rsplit('|').next()).and_then(parse_hex);
        Ok(claimer.zip(payload))
    }
}
