//! Answers that take a while (listing an executor's sessions may start an
//! ACP agent): computed off the daemon's loop, then sent from it like any
//! other answer. At most [`SLOTS`] run at once; a request beyond that is
//! refused with `busy` (the phone asks again), so a phone cannot make the
//! desktop start agents without bound; each gets [`LATE_TIMEOUT`], then is
//! answered `not_supported` (a hung store or agent does not keep a slot).

use std::sync::Arc;

use tandem_proto::message::Message;
use tokio::sync::{Semaphore, mpsc};

use super::Daemon;
use crate::tasks::{Audience, Later, Outgoing};

/// Slow answers computed at once.
pub(super) const SLOTS: usize = 2;

/// How long a slow answer may take.
pub(super) const LATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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

fn refusal(from: tandem_proto::DeviceId, code: &str, message: &str) -> Outgoing {
    let m = Message::Refused { task_id: None, code: code.into(), message: message.into() };
    vec![(Audience::Device(from), m)]
}

impl Daemon<'_> {
    /// Whether a slow answer can start now (else the asker is told `busy`
    /// before anything is read for it).
    pub(super) fn late_room(&self) -> bool {
        self.late.slots.available_permits() > 0
    }

    /// `busy`, for `from`.
    pub(super) fn busy(from: tandem_proto::DeviceId) -> Outgoing {
        refusal(from, "busy", "the desktop is still answering an earlier request; ask again")
    }

    /// Compute `answer` off the loop for `from`; it is sent when ready.
    /// With every slot taken, `from` is told `busy` now.
    pub(super) fn answer_later(&mut self, from: tandem_proto::DeviceId, answer: Later) -> Outgoing {
        let Ok(permit) = Arc::clone(&self.late.slots).try_acquire_owned() else {
            return Self::busy(from);
        };
        let tx = self.late.tx.clone();
        tokio::spawn(async move {
            let out = tokio::time::timeout(LATE_TIMEOUT, answer).await.unwrap_or_else(|_| {
                refusal(from, "not_supported", "the executor did not list its sessions in time")
            });
            drop(permit);
            let _ = tx.send(out).await;
        });
        Vec::new()
    }
}
