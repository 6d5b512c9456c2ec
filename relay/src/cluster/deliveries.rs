//! Live deliveries to other nodes, gathered: a task of its own hands what
//! waits to Redis as one `ROUTE` script call (one owner lookup per device
//! and one liveness check per node in it, one publish per frame), while the
//! next gathers behind it. Frames go in the order they were submitted.
//!
//! A delivery is a hint: the frame is in the store before it is submitted
//! here, so a delivery that Redis refuses or that the connection loses
//! leaves the frame where the device reads it (as a lost publish does;
//! the module docs of [`super`]). Submitting waits only for room in the
//! channel, not for Redis.

use redis::Script;
use tandem_proto::DeviceId;
use tokio::sync::mpsc;
use tracing::debug;

use super::link::Link;
use super::{ClusterError, Message};

/// Most frames in one script call.
pub(super) const MAX_BATCH: usize = 256;
/// Most frames waiting for the task; past it a submitter waits.
const QUEUE: usize = 4 * MAX_BATCH;

/// One delivery: the recipient's `own` key and the message for its node.
type Delivery = (String, Vec<u8>);

/// Where deliveries are submitted.
pub(super) struct Deliveries {
    tx: mpsc::Sender<Delivery>,
}

impl Deliveries {
    /// Start the task on a connection of its own to `link`'s server; it
    /// ends when this is dropped.
    pub(super) fn start(link: Link, route: Script, prefix: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, link, route, prefix));
        Self { tx }
    }

    /// Hand `to`'s `Deliver` (encoded, its id taken under store epoch
    /// `epoch`) to the task, `own` being `to`'s owner key.
    pub(super) async fn submit(
        &self,
        own: String,
        to: DeviceId,
        epoch: u64,
        frame: &[u8],
    ) -> Result<(), ClusterError> {
        let msg = Message::deliver(to, epoch, frame);
        self.tx
            .send((own, msg))
            .await
            .map_err(|_| ClusterError::Redis("the delivery task has stopped".into()))
    }
}

async fn run(mut rx: mpsc::Receiver<Delivery>, link: Link, route: Script, prefix: String) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let mut inv = route.prepare_invoke();
        inv.arg(&prefix);
        for (own, msg) in batch {
            inv.key(own);
            inv.arg(msg);
        }
        let sent: Result<Vec<i64>, ClusterError> = async {
            let mut c = link.conn().await?;
            Ok(inv.invoke_async(&mut c).await?)
        }
        .await;
        if let Err(e) = sent {
            debug!(error = %e, "live deliveries to other nodes failed; the frames wait in the store");
        }
    }
}
