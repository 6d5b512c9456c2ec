//! The relay at the frame level (`tandem-wire`): the same relay process as
//! the `tandem` target, and devices that authenticate with their own keys
//! and pair through the relay exactly as there ([`crate::pairing::pair`]:
//! mailbox, IKpsk2, both sides authorise the route), so the routes are
//! real. Then the pair's `tandem-client`s are closed and each device
//! reconnects with the minimal frame client of [`super::frames`]: the
//! desktop writes `Send` frames carrying opaque payloads of exactly the
//! sealed records' length, the phone reads `Deliver`s, acknowledges them
//! to the relay and returns an ack payload per burst.
//!
//! The relay cannot tell this from the real thing (it never opens
//! payloads); what is left out is the devices' work: sealing, opening,
//! end-to-end acks and `tandem-client`'s outbox. The load generator then
//! costs about what the forwarder's client costs ([`super::plain`]), so
//! `tandem-wire ÷ forwarder` compares the two servers; the `tandem` target
//! still measures the whole path.
//!
//! The same load runs against relay nodes on Redis ([`TandemWireTarget::between`]):
//! `tandem-wire-redis` (both devices on one node, its store in Redis) and
//! `tandem-wire-cluster` (each pair's desktop on node 1, its phone on node
//! 2: pairing crosses nodes through the shared mailbox, and every frame
//! crosses them through Redis and node 2's channel).

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tandem_proto::Role;

use super::{Health, PairIo, Target, channels, frames};
use crate::error::{BenchError, Result};
use crate::pairing::{Device, RelayAccess, pair};
use crate::wire::WireSizes;

/// Pairs set up at once.
const SETUP_CONCURRENCY: usize = 16;

/// The tandem relay driven at the frame level.
#[derive(Debug)]
pub struct TandemWireTarget {
    name: &'static str,
    /// Where the desktops connect.
    access: RelayAccess,
    /// Where the phones connect.
    phone_access: RelayAccess,
    pid: Option<u32>,
    sizes: WireSizes,
    health: Arc<Health>,
}

impl TandemWireTarget {
    /// A target at `access` (a plain `ws://` relay); `pid` is the relay
    /// process when it runs on this machine.
    ///
    /// # Errors
    /// [`BenchError::Usage`] for a TLS relay: the frame client speaks plain
    /// WebSocket only.
    pub fn new(access: RelayAccess, pid: Option<u32>, sizes: WireSizes) -> Result<Self> {
        Self::between("tandem-wire", access.clone(), access, pid, sizes)
    }

    /// A target called `name` whose desktops connect at `desktop` and
    /// phones at `phone` (two nodes of a cluster, or one); `pid` is the
    /// process reported as the target's.
    ///
    /// # Errors
    /// [`BenchError::Usage`] for a TLS relay.
    pub fn between(
        name: &'static str,
        desktop: RelayAccess,
        phone: RelayAccess,
        pid: Option<u32>,
        sizes: WireSizes,
    ) -> Result<Self> {
        for a in [&desktop, &phone] {
            if !a.url.starts_with("ws://") {
                return Err(BenchError::Usage(format!(
                    "the {name} target needs a plain ws:// relay, not {} (leave out --tls)",
                    a.url
                )));
            }
        }
        Ok(Self { name, access: desktop, phone_access: phone, pid, sizes, health: Arc::default() })
    }

    /// Pair two devices through the relay, then reconnect them as frame
    /// clients and start the pair's ends.
    async fn open_one(&self) -> Result<PairIo> {
        let mut desktop = Device::connect(&self.access, Role::Desktop).await?;
        let mut phone = Device::connect(&self.phone_access, Role::Phone).await?;
        pair(&mut desktop, &mut phone).await?;
        let (desktop_id, phone_id) = (desktop.id(), phone.id());
        // One connection per device: the clients go before the frame
        // clients come (a client left running would reconnect and replace them).
        desktop.client.close().await;
        phone.client.close().await;
        let d = frames::connect(&self.access.url, &desktop.key, Role::Desktop).await?;
        let p = frames::connect(&self.phone_access.url, &phone.key, Role::Phone).await?;
        let (mut io, ends) = channels();
        io.tasks =
            frames::spawn_ends((d, desktop_id), (p, phone_id), ends, self.sizes, &self.health);
        Ok(io)
    }
}

impl Target for TandemWireTarget {
    fn name(&self) -> &'static str {
        self.name
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn open(&self, pairs: usize) -> BoxFuture<'_, Result<Vec<PairIo>>> {
        super::open_pairs(pairs, SETUP_CONCURRENCY, || self.open_one()).boxed()
    }

    fn health(&self) -> &Health {
        &self.health
    }
}
