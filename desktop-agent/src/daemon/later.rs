//! Answers that take a while (listing an executor's sessions may start an
//! ACP agent): computed off the daemon's loop, then sent from it like any
//! other answer. At most [`SLOTS`] run at once; a request beyond that is
//! refused with `busy` (the phone asks again), so a phone cannot make the
//! desktop start agents without bound.

use std::sync::Arc;

use tandem_proto::message::Message;
use tokio::sync::{Semaphore, mpsc};

use super::Daemon;
use crate::tasks::{Audience, Later, Outgoing};

/// Slow answers computed at once.
pub(super) const SLOTS: usize = 2;

/// The channel slow answers come back on.
pub(super) struct LateAnswers {
    tx: mpsc::Sender<Outgoing>,
    pub(super) rx: mpsc::Receiver<Outgoing>,
    slots: Arc<Semaphore>,
}

impl Default for LateAnswers {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(16);
        Self { tx, rx, slots: Arc::new(Semaphore::new(SLOTS)) }
    }
}

impl Daemon<'_> {
    /// Compute `answer` off the loop for `from`; it is sent when ready.
    /// With every slot taken, `from` is told `busy` now.
    pub(super) fn answer_later(&mut self, from: tandem_proto::DeviceId, answer: Later) -> Outgoing {
        let Ok(permit) = Arc::clone(&self.late.slots).try_acquire_owned() else {
            let busy = Message::Refused {
                task_id: None,
                code: "busy".into(),
                message: "the desktop is still answering an earlier request; ask again".into(),
            };
            return vec![(Audience::Device(from), busy)];
        };
        let tx = self.late.tx.clone();
        tokio::spawn(async move {
            let out = answer.await;
            drop(permit);
            let _ = tx.send(out).await;
        });
        Vec::new()
    }
}
