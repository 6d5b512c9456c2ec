//! What phones are owed: task events a crash kept from them, and the
//! `detached` notice for a phone gone quiet.

use std::collections::BTreeMap;
use std::time::Instant;

use tandem_proto::DeviceId;
use tandem_proto::message::Message;
use tracing::info;

use super::{Daemon, DaemonError};
use crate::tasks::Audience;

impl Daemon<'_> {
    /// Send each phone the task events recorded after the last one sealed
    /// for it (a crash between the history and the link), at most a page per
    /// task: a longer gap shows as one, and the phone asks for the history.
    /// An unfinished task a phone has no cursor for is owed from its start:
    /// none of its events was sealed for that phone (the agent died after
    /// applying the submit, before sealing its replies), so its `accepted`
    /// and `queued` go now, not when it starts.
    pub(super) async fn catch_up(&mut self) -> Result<(), DaemonError> {
        let unfinished = self.tasks.unfinished_ids()?;
        let ids: Vec<DeviceId> = self.peers.list().iter().map(|p| p.device_id()).collect();
        for id in ids {
            let mut cursors: BTreeMap<String, u64> = match self.peers.get(&id) {
                Some(p) => p.task_cursors().clone(),
                None => continue,
            };
            for task in &unfinished {
                cursors.entry(task.clone()).or_insert(0);
            }
            let mut owed = Vec::new();
            let mut done = Vec::new();
            for (task, cursor) in cursors {
                match self.tasks.record(&task)? {
                    Some(r) if cursor < r.next_offset => {
                        for m in self.tasks.events(&task, cursor, crate::tasks::HISTORY_PAGE)? {
                            owed.push((Audience::Device(id), m));
                        }
                    }
                    Some(r) if !r.is_finished() => {}
                    _ => done.push(task),
                }
            }
            if let Some(p) = self.peers.get_mut(&id) {
                for t in &done {
                    p.drop_task_cursor(t);
                }
            }
            if !owed.is_empty() {
                info!(peer = %id, events = owed.len(), "sending task events a crash kept from this phone");
            }
            self.send_all(owed).await?;
        }
        Ok(())
    }

    /// Tell phones that were silent for the idle time that they are detached.
    pub(super) async fn detach_idle(&mut self) -> Result<(), DaemonError> {
        let now = Instant::now();
        let idle: Vec<DeviceId> = self
            .last_heard
            .iter()
            .filter(|(id, at)| {
                !self.detached.contains(id) && now.duration_since(**at) >= self.idle_detach
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            info!(peer = %id, "phone idle: detached until it sends something");
            self.detached.insert(id);
            let idle_secs = self.idle_detach.as_secs();
            self.send_all(vec![(Audience::Device(id), Message::Detached { idle_secs })]).await?;
        }
        Ok(())
    }
}
