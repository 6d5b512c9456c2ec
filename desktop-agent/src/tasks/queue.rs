//! Running tasks: a phone submits one, it waits in the queue, and it starts
//! (its executor spawned, or resumed for a follow-up) when a slot is free.

use tandem_proto::DeviceId;
use tandem_proto::message::{FinishStatus, TaskEvent};
use tracing::{info, warn};

use super::{Active, Audience, Outgoing, TaskManager, TaskUpdate, now_ms, refused, to};
use crate::executor::{Control, resume, start};
use crate::history::{HistoryError, StoredState, TaskRecord};
use crate::peers::Scope;

impl TaskManager {
    /// Start queued tasks while there are free slots; first drop the
    /// queued tasks whose device may no longer have them run.
    pub(super) async fn pump(&mut self) -> Result<Outgoing, HistoryError> {
        let mut out = self.drop_unpermitted()?;
        while self.running() < self.options.max_concurrent {
            let Some(id) = self.queue.pop_front() else { break };
            out.extend(self.start(&id).await?);
        }
        Ok(out)
    }

    async fn start(&mut self, task_id: &str) -> Result<Outgoing, HistoryError> {
        let Some(mut a) = self.active.remove(task_id) else { return Ok(Vec::new()) };
        let config = self.executors.iter().find(|e| e.name == a.record.executor);
        // In its project's directory; a project no longer configured stops it.
        let project = match &a.record.project {
            Some(name) => match crate::projects::find(&self.options.projects, name) {
                Some(p) => Ok(Some(p)),
                None => Err(format!("the project {name:?} is no longer configured")),
            },
            None => Ok(None),
        };
        let config = match project {
            Ok(p) => Ok(config.map(|c| crate::projects::in_project(c, p))),
            Err(e) => Err(e),
        };
        // On disk as running before anything is spawned: a crash from here
        // on finishes it as interrupted, never runs it twice.
        let resume_text = a.record.pending_resume.take();
        a.record.state = StoredState::Running;
        a.record.updated_ms = now_ms();
        if let Err(e) = self.history.save(&mut a.record, None) {
            self.active.insert(task_id.to_owned(), a);
            return Err(e);
        }
        // A project's directory is not named to phones (PROTOCOL §15.3):
        // the desktop's log has it.
        let project = a.record.project.clone();
        let said = |e: crate::executor::ExecError| match (&e, &project) {
            (crate::executor::ExecError::Workdir { .. }, Some(name)) => {
                warn!(task = %task_id, error = %e, "the project's directory is not usable");
                format!(
                    "the project {name:?}'s directory is not usable (the desktop's log says why)"
                )
            }
            _ => e.to_string(),
        };
        let started = match (&config, resume_text) {
            (Err(e), _) => Err(e.clone()),
            (Ok(None), _) => {
                Err(format!("the executor {:?} is no longer configured", a.record.executor))
            }
            (Ok(Some(c)), Some(text)) => match &a.record.resume_token {
                Some(token) => resume(c, token, &text).map_err(said),
                None => Err("the task cannot be resumed".into()),
            },
            (Ok(Some(c)), None) => start(c, &a.record.text).map_err(said),
        };
        let running = match started {
            Ok(r) => r,
            Err(e) => {
                warn!(task = %task_id, error = %e, "executor failed to start");
                let m = self.append(
                    &mut a.record,
                    TaskEvent::Finished {
                        status: FinishStatus::Failed,
                        summary: format!("could not start: {e}"),
                        denied: Vec::new(),
                        expired: Vec::new(),
                        failed: Vec::new(),
                    },
                )?;
                return Ok(vec![(Audience::Everyone, m)]);
            }
        };
        info!(task = %task_id, executor = %a.record.executor, "task started");
        self.next_run += 1;
        a.run = self.next_run;
        a.controller = Some(running.controller());
        let updates = self.updates.clone();
        let (id, run) = (task_id.to_owned(), a.run);
        tokio::spawn(async move {
            let mut running = running;
            while let Some(event) = running.next().await {
                if updates.send(TaskUpdate { task_id: id.clone(), run, event }).await.is_err() {
                    break;
                }
            }
        });
        let follow_ups = std::mem::take(&mut a.record.pending_follow_ups);
        let mut senders = std::mem::take(&mut a.record.pending_follow_ups_from);
        senders.resize(follow_ups.len(), String::new());
        if !follow_ups.is_empty() {
            self.history.save(&mut a.record, None)?;
        }
        let controller = a.controller.clone();
        self.active.insert(task_id.to_owned(), a);
        let mut out = Vec::new();
        if let Some(c) = controller {
            for (text, sender) in follow_ups.into_iter().zip(senders) {
                // Its device was revoked or lowered below `submit` since it
                // sent this: its instruction is not delivered.
                if let Some(why) = self.follow_up_refusal(&sender) {
                    if let Some(m) =
                        self.append_active(task_id, TaskEvent::Progress { text: why })?
                    {
                        out.push((Audience::Everyone, m));
                    }
                    continue;
                }
                if let Err(e) = c.control(Control::FollowUp(text)).await
                    && let Some(m) = self.append_active(
                        task_id,
                        TaskEvent::Progress { text: format!("a follow-up was not delivered: {e}") },
                    )?
                {
                    out.push((Audience::Everyone, m));
                }
            }
        }
        Ok(out)
    }

    /// A phone submitted a task (`wanted`: what it asked to run it with).
    ///
    /// # Errors
    /// [`HistoryError`] if it cannot be recorded (nothing was started).
    pub async fn submit(
        &mut self,
        from: DeviceId,
        scope: Scope,
        task_id: String,
        text: &str,
        wanted: Wanted<'_>,
    ) -> Result<Outgoing, HistoryError> {
        let Wanted { executor, project, resume } = wanted;
        if !scope.allows_submit() {
            return Ok(to(from, refused(&task_id, "scope", "this device may only view")));
        }
        if task_id.is_empty() || task_id.len() > crate::executor::MAX_ID_LEN {
            return Ok(to(from, refused(&task_id, "bad_request", "task ids are 1 to 256 bytes")));
        }
        if self.active.contains_key(&task_id) || self.history.get(&task_id)?.is_some() {
            // Already accepted (a resubmission): nothing new to say.
            return Ok(Vec::new());
        }
        if self.active.len() >= self.options.max_unfinished {
            let msg = format!(
                "{} tasks are already queued or running on this computer (the most it takes); \
                 submit again when one has finished",
                self.active.len()
            );
            return Ok(to(from, refused(&task_id, "queue_full", &msg)));
        }
        let (placed, project) = match self.resolve(executor, project) {
            Ok(found) => found,
            Err((code, msg)) => return Ok(to(from, refused(&task_id, code, msg))),
        };
        if let Some(id) = resume
            && let Some((code, msg)) = self.check_resume(&placed, project.as_deref(), id)
        {
            return Ok(to(from, refused(&task_id, code, msg)));
        }
        let config = &placed;
        let now = now_ms();
        let mut record = TaskRecord {
            task_id: task_id.clone(),
            seq: self.next_seq,
            device: from.to_string(),
            run_by: None,
            executor: config.name.clone(),
            project: project.clone(),
            text: text.to_owned(),
            created_ms: now,
            updated_ms: now,
            state: StoredState::Queued,
            // Continuing a session: the task's text is its next prompt,
            // started as a resume is (`pump`).
            resume_token: resume.map(str::to_owned),
            pending_resume: resume.map(|_| text.to_owned()),
            pending_follow_ups: Vec::new(),
            pending_follow_ups_from: Vec::new(),
            next_offset: 0,
            earliest: 0,
        };
        self.next_seq += 1;
        info!(task = %task_id, executor = %config.name, project = ?project, "task accepted");
        // Other phones see it too: shown as it runs (the executor gets it as sent).
        let accepted = TaskEvent::Accepted {
            executor: config.name.clone(),
            project,
            text: Some(crate::text::visible(text)),
            resumed: resume.map(str::to_owned),
        };
        let m = self.append(&mut record, accepted)?;
        let mut out = vec![(Audience::Everyone, m)];
        let ahead = self.queue.len() + self.running();
        self.active.insert(task_id.clone(), Active::new(record));
        self.queue.push_back(task_id.clone());
        if ahead >= self.options.max_concurrent
            && let Some(m) = self.append_active(
                &task_id,
                TaskEvent::Progress { text: format!("queued: {ahead} task(s) ahead") },
            )?
        {
            out.push((Audience::Everyone, m));
        }
        out.extend(self.pump().await?);
        Ok(out)
    }
}

/// What a submitted task asked to run with (`task_submit`'s optional
/// fields): absent ones are the desktop's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted<'a> {
    /// The executor's name.
    pub executor: Option<&'a str>,
    /// The project's name.
    pub project: Option<&'a str>,
    /// A session to continue (`task_submit.resume`).
    pub resume: Option<&'a str>,
}
