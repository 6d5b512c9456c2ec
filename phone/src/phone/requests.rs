//! What the app asks of a desktop: tasks, follow-ups, cancels, approval
//! decisions, history pages and task lists, each sealed, saved and handed
//! to the relay in order.

use super::*;

impl Phone {
    /// Seal `m` for a desktop, save, and hand it to the connection's
    /// in-order sender. Resolves when the relay stored it, or after a while
    /// if the relay is unreachable or refuses it for now (it stays in the
    /// outbox and goes out again: see [`super::outbox`]). A refusal for good
    /// after it was sealed is [`PhoneError::Queued`]: the message is still in
    /// the outbox and may yet arrive, so the caller must not report it as
    /// not sent.
    pub(super) async fn send(&self, desktop_id: &str, m: &Message) -> Result<(), PhoneError> {
        let bytes = m.encode().map_err(|e| PhoneError::Protocol(e.to_string()))?;
        let answer = {
            let mut st = self.lock();
            let st = &mut *st;
            if st.closed {
                return Err(PhoneError::Closed);
            }
            let d = st
                .desktops
                .get_mut(desktop_id)
                .ok_or_else(|| PhoneError::UnknownDesktop(desktop_id.into()))?;
            // What the desktop's file holds now: a save that fails (a full
            // disk) puts the link back as it was, so that nothing is queued
            // when the caller is told [`PhoneError::Storage`] (the message
            // would otherwise go out with the next one, and a retry under
            // a new id would run the task twice).
            let before = zeroize::Zeroizing::new(
                serde_json::to_vec(&d.record.link)
                    .map_err(|e| PhoneError::Protocol(e.to_string()))?,
            );
            let reseal_before = d.reseal;
            let sealed = match d.record.link.send(bytes) {
                Ok(sealed) => Some(sealed),
                // Queued, not sealed: the session's counters are used up. It
                // goes out after the renewal the schedule starts.
                Err(RecordError::Exhausted) => {
                    d.reseal = true;
                    None
                }
                Err(e) => return Err(PhoneError::Protocol(e.to_string())),
            };
            if let Err(e) = self.save_locked(d) {
                d.record.link = serde_json::from_slice(&before)
                    .map_err(|e| PhoneError::Protocol(e.to_string()))?;
                d.reseal = reseal_before;
                return Err(e);
            }
            crash_point("phone.send_saved");
            // Handed to the client under the lock: in the order it was
            // sealed relative to every other record (see the module docs).
            sealed.map(|(seq, record)| {
                let (tx, rx) = oneshot::channel();
                d.sent.wait(seq, tx);
                outbox::post(&st.relays, d, seq, record);
                rx
            })
        };
        let Some(answer) = answer else {
            self.upkeep(desktop_id);
            return Ok(());
        };
        match tokio::time::timeout(SEND_WAIT, answer).await {
            Ok(Ok(Err(e))) => Err(PhoneError::Queued { task_id: None, cause: Box::new(e) }),
            // Stored; or not yet: it stays in the outbox and goes out again.
            _ => Ok(()),
        }
    }

    /// Submit a task under a fresh id; returns its id.
    ///
    /// # Errors
    /// [`PhoneError::UnknownDesktop`], [`PhoneError::Storage`],
    /// [`PhoneError::Closed`] (nothing was queued);
    /// [`PhoneError::Queued`] with the task's id: refused for now, still
    /// queued, it may run later; retry with [`Phone::submit_with_id`] and
    /// that id, never with a new submit.
    pub async fn submit(
        &self,
        desktop_id: &str,
        text: &str,
        executor: Option<String>,
    ) -> Result<String, PhoneError> {
        self.submit_in(desktop_id, text, executor, None).await
    }

    /// Submit a task under a fresh id with `executor` in `project` (names
    /// from [`Phone::choices`]; `None`: the desktop's default); returns its
    /// id. A name the desktop does not offer is refused
    /// ([`PhoneEvent::Refused`], `unknown_executor` or `unknown_project`).
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn submit_in(
        &self,
        desktop_id: &str,
        text: &str,
        executor: Option<String>,
        project: Option<String>,
    ) -> Result<String, PhoneError> {
        let task_id = self.fresh_task_id()?;
        self.submit_with_id_in(desktop_id, &task_id, text, executor, project).await?;
        Ok(task_id)
    }

    fn fresh_task_id(&self) -> Result<String, PhoneError> {
        let mut raw = [0u8; 16];
        self.inner
            .entropy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fill(&mut raw)
            .map_err(storage)?;
        Ok(data_encoding::HEXLOWER.encode(&raw))
    }

    /// Submit a task under `task_id` (1 to 256 bytes): the desktop runs a
    /// task id once, so submitting the same id again (a retry after
    /// [`PhoneError::Queued`] or a timeout) never runs it twice.
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn submit_with_id(
        &self,
        desktop_id: &str,
        task_id: &str,
        text: &str,
        executor: Option<String>,
    ) -> Result<(), PhoneError> {
        self.submit_with_id_in(desktop_id, task_id, text, executor, None).await
    }

    /// [`Phone::submit_with_id`] with a project ([`Phone::submit_in`]).
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn submit_with_id_in(
        &self,
        desktop_id: &str,
        task_id: &str,
        text: &str,
        executor: Option<String>,
        project: Option<String>,
    ) -> Result<(), PhoneError> {
        self.submit_message(desktop_id, task_id, text, executor, project, None).await
    }

    /// Continue the session `session` (an id from [`Phone::sessions`] for
    /// the same executor and project) with `text` as its next prompt, as a
    /// new task under a fresh id; returns the id. The hand-off from the
    /// terminal: the agent picks up the conversation held on the desktop.
    /// A session the desktop does not list is refused
    /// ([`PhoneEvent::Refused`], `unknown_session`).
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn submit_resume(
        &self,
        desktop_id: &str,
        text: &str,
        executor: Option<String>,
        project: Option<String>,
        session: &str,
    ) -> Result<String, PhoneError> {
        let task_id = self.fresh_task_id()?;
        self.submit_message(
            desktop_id,
            &task_id,
            text,
            executor,
            project,
            Some(session.to_owned()),
        )
        .await?;
        Ok(task_id)
    }

    /// The sessions `executor` (`None`: the default) can continue in
    /// `project` (`None`: the default), newest first: Claude Code's
    /// sessions on the desktop, including those started at its terminal.
    ///
    /// # Errors
    /// [`PhoneError::Refused`] when the desktop cannot list them
    /// (`not_supported`: the executor keeps none; `unknown_executor`,
    /// `unknown_project`, `scope`, `busy`); otherwise as [`Phone::history`].
    pub async fn sessions(
        &self,
        desktop_id: &str,
        executor: Option<String>,
        project: Option<String>,
    ) -> Result<Vec<tandem_proto::message::SessionSummary>, PhoneError> {
        let (tx, rx) = oneshot::channel();
        self.lock().session_lists.entry(desktop_id.to_owned()).or_default().push(tx);
        let m = Message::SessionsRequest { executor, workspace: project };
        if let Err(e) = self.send(desktop_id, &m).await {
            if let Some(waiting) = self.lock().session_lists.get_mut(desktop_id) {
                waiting.retain(|w| !w.is_closed());
            }
            return Err(e);
        }
        tokio::time::timeout(ANSWER_WAIT, rx)
            .await
            .map_err(|_| PhoneError::Timeout)?
            .map_err(|_| PhoneError::Closed)?
            .map_err(|(code, message)| PhoneError::Refused { code, message })
    }

    async fn submit_message(
        &self,
        desktop_id: &str,
        task_id: &str,
        text: &str,
        executor: Option<String>,
        project: Option<String>,
        resume: Option<String>,
    ) -> Result<(), PhoneError> {
        let m = Message::TaskSubmit {
            task_id: task_id.to_owned(),
            text: text.to_owned(),
            workspace: project,
            executor,
            resume,
        };
        self.send(desktop_id, &m).await.map_err(|e| match e {
            PhoneError::Queued { cause, .. } => {
                PhoneError::Queued { task_id: Some(task_id.to_owned()), cause }
            }
            e => e,
        })
    }

    /// More input for a running or finished (resumable) task.
    ///
    /// # Errors
    /// As [`Phone::submit`]; [`PhoneError::Queued`] means the follow-up may
    /// still arrive: do not send it again.
    pub async fn follow_up(
        &self,
        desktop_id: &str,
        task_id: &str,
        text: &str,
    ) -> Result<(), PhoneError> {
        let m = Message::FollowUp { task_id: task_id.into(), text: text.into() };
        self.send(desktop_id, &m).await
    }

    /// Stop a task.
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn cancel(&self, desktop_id: &str, task_id: &str) -> Result<(), PhoneError> {
        self.send(desktop_id, &Message::Cancel { task_id: task_id.into() }).await
    }

    /// Answer an approval request.
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn decide(
        &self,
        desktop_id: &str,
        task_id: &str,
        approval_id: &str,
        allow: bool,
    ) -> Result<(), PhoneError> {
        self.decision(desktop_id, task_id, approval_id, allow, false).await
    }

    /// Allow an approval and ask the desktop to allow this tool use from
    /// now on in the task's project ("always allow"): the resolution names
    /// the rule it added (`approval_resolved.rule`). A device the desktop
    /// did not give the `rules` scope has the step allowed once and gets a
    /// [`PhoneEvent::Refused`] (`scope`) saying no rule was added.
    ///
    /// # Errors
    /// As [`Phone::submit`].
    pub async fn allow_always(
        &self,
        desktop_id: &str,
        task_id: &str,
        approval_id: &str,
    ) -> Result<(), PhoneError> {
        self.decision(desktop_id, task_id, approval_id, true, true).await
    }

    async fn decision(
        &self,
        desktop_id: &str,
        task_id: &str,
        approval_id: &str,
        allow: bool,
        remember: bool,
    ) -> Result<(), PhoneError> {
        let m = Message::ApprovalDecision {
            task_id: task_id.into(),
            approval_id: approval_id.into(),
            allow,
            remember,
        };
        self.send(desktop_id, &m).await
    }

    /// One page of a task's history from `from_offset`. Also re-attaches a
    /// detached phone.
    ///
    /// # Errors
    /// As [`Phone::submit`]; [`PhoneError::Timeout`] without an answer.
    pub async fn history(
        &self,
        desktop_id: &str,
        task_id: &str,
        from_offset: u64,
    ) -> Result<HistoryPage, PhoneError> {
        let (tx, rx) = oneshot::channel();
        let key = (desktop_id.to_owned(), task_id.to_owned());
        self.lock().histories.entry(key.clone()).or_default().push(PendingHistory {
            from: from_offset,
            events: Vec::new(),
            unavailable_before: None,
            reply: tx,
        });
        let m = Message::HistoryRequest { task_id: Some(task_id.into()), from_offset };
        if let Err(e) = self.send(desktop_id, &m).await {
            if let Some(pages) = self.lock().histories.get_mut(&key) {
                pages.retain(|p| !p.reply.is_closed());
            }
            return Err(e);
        }
        tokio::time::timeout(ANSWER_WAIT, rx)
            .await
            .map_err(|_| PhoneError::Timeout)?
            .map_err(|_| PhoneError::Closed)
    }

    /// The desktop's most recent tasks, newest first.
    ///
    /// # Errors
    /// As [`Phone::history`].
    pub async fn tasks(&self, desktop_id: &str) -> Result<Vec<TaskSummary>, PhoneError> {
        let (tx, rx) = oneshot::channel();
        self.lock().lists.entry(desktop_id.to_owned()).or_default().push(tx);
        self.send(desktop_id, &Message::HistoryRequest { task_id: None, from_offset: 0 }).await?;
        tokio::time::timeout(ANSWER_WAIT, rx)
            .await
            .map_err(|_| PhoneError::Timeout)?
            .map_err(|_| PhoneError::Closed)
    }
}
