//! Records from a desktop: open them, save the link and offsets, act on
//! the messages (task events in order, history pages, task lists), answer.

use super::*;

impl Phone {
    /// A record from a desktop: open, save, act. `false` if it could not be
    /// saved (then the in-memory state is reloaded from disk and the relay
    /// must deliver it again).
    pub(super) fn deliver(&self, url: &str, from: DeviceId, payload: &[u8]) -> bool {
        let id = from.to_string();
        // Envelopes to send, in order, with the outbox seq of those that
        // carry a message (tracked until the relay takes them).
        let mut out: Vec<(Option<u64>, Vec<u8>)> = Vec::new();
        let mut emitted = Vec::new();
        let mut requests = Vec::new();
        let kind = renewal::Kind::of(payload);
        let mut reseal = false;
        let mut rotate_push = false;
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(d) = st.desktops.get_mut(&id) else {
                debug!(peer = %id, "record from a device that is not paired dropped");
                return true;
            };
            let received = {
                let mut entropy =
                    self.inner.entropy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                d.record.link.receive(&self.inner.key, payload, &mut entropy)
            };
            let events = match received {
                Ok(e) => e,
                Err(LinkError::Record(RecordError::Replay(_))) => {
                    // Seen before (a redelivery): tell the desktop again what we have.
                    if let Ok(ack) = d.record.link.ack() {
                        out.push((None, ack));
                    }
                    Vec::new()
                }
                Err(e) => {
                    debug!(peer = %id, error = %e, "record refused");
                    return true;
                }
            };
            crash_point("phone.deliver_received");
            let step = renewal::Points::of(kind, &events);
            if events.iter().any(|e| matches!(e, LinkEvent::SessionRenewed)) {
                info!(desktop = %id, "session renewed");
                // What the relay holds was sealed under a session the desktop
                // may no longer have: the outbox goes out again under the new
                // one (exhausted or not).
                d.reseal = false;
                reseal = true;
                // The push key is rotated with the session.
                rotate_push = true;
            }
            if let Some(p) = step {
                self.step(p.received);
            }
            let mut direct_reply = false;
            let mut ack_due = false;
            for ev in events {
                match ev {
                    LinkEvent::Message { message, .. } => match Message::decode(&message) {
                        Ok(Decoded::Known(m)) => {
                            apply(st, &id, m, &mut emitted, &mut requests);
                        }
                        Ok(Decoded::Unknown { kind, .. }) => {
                            debug!(kind, "message kind from a newer desktop ignored");
                        }
                        Err(e) => warn!(error = %e, "malformed message from the desktop"),
                    },
                    LinkEvent::Send(e) => out.extend(e.into_iter().map(|r| (None, r))),
                    LinkEvent::ResyncNeeded { from: a, to: b } => {
                        warn!(desktop = %id, a, b, "messages from the desktop were lost");
                        emitted.push(PhoneEvent::MessagesLost {
                            desktop_id: id.clone(),
                            from_seq: a,
                            to_seq: b,
                        });
                    }
                    LinkEvent::AckDue => ack_due = true,
                    // Noted above.
                    LinkEvent::SessionRenewed => {}
                }
            }
            let Some(d) = st.desktops.get_mut(&id) else { return true };
            for m in requests {
                let Ok(bytes) = m.encode() else { continue };
                match d.record.link.send(bytes) {
                    Ok((seq, r)) => {
                        out.push((Some(seq), r));
                        direct_reply = true;
                    }
                    Err(e) => {
                        warn!(error = %e, "history request not sealed");
                        d.reseal |= matches!(e, RecordError::Exhausted);
                    }
                }
            }
            // Data arrived: acknowledge (never in answer to an ack alone, or
            // the two sides would ack each other forever).
            if ack_due
                && !direct_reply
                && let Ok(ack) = d.record.link.ack()
            {
                out.push((None, ack));
            }
            if let Err(e) = self.save_locked(d) {
                warn!(error = %e, "cannot save the desktop's state; the relay will redeliver");
                // Back to what is on disk, so the redelivery opens again.
                if let Ok(Some(r)) = store::load_one(&self.inner.data_dir, &id) {
                    d.offsets = Offsets::from_stored(r.offsets.clone(), r.finished.clone());
                    d.record = r;
                }
                return false;
            }
            crash_point("phone.deliver_saved");
            // What the desktop acknowledged needs no resending.
            let oldest = d.record.link.outbound().oldest();
            d.sent.prune(oldest);
            if let Some(p) = step {
                self.step(p.saved);
            }
            if let Some(r) = st.relays.get(url) {
                // The renewal's answer (the accept, or the confirming ack) is
                // the last envelope: its step passes once the relay stored it.
                let last = out.len().saturating_sub(1);
                for (i, (seq, rec)) in out.into_iter().enumerate() {
                    let stored = step.and_then(|p| p.sent).filter(|_| i == last);
                    match seq {
                        Some(seq) => outbox::post(&st.relays, d, seq, rec),
                        None => {
                            r.post(from, rec, stored, None);
                        }
                    }
                }
            }
        }
        for e in emitted {
            self.emit(e);
        }
        crash_point("phone.deliver_emitted");
        if reseal {
            // A renewal completed: the outbox goes out now, all of it.
            self.resend(&id, true);
        }
        if rotate_push {
            self.rotate_push_key_later(&id);
        }
        true
    }
}

/// Act on one message from desktop `id`: events to emit, requests to send.
fn apply(
    st: &mut State,
    id: &str,
    m: Message,
    emitted: &mut Vec<PhoneEvent>,
    requests: &mut Vec<Message>,
) {
    match m {
        Message::TaskEvent { task_id, offset, at_ms, event } => {
            let record =
                TaskEventRecord { desktop_id: id.to_owned(), task_id, offset, at_ms, event };
            // A page takes only the events that continue it: live events
            // racing the replay are not part of it.
            if let Some(pages) = st.histories.get_mut(&(id.to_owned(), record.task_id.clone())) {
                for p in pages.iter_mut() {
                    let start = p.unavailable_before.map_or(p.from, |e| e.max(p.from));
                    if offset == start + p.events.len() as u64 {
                        p.events.push(record.clone());
                    }
                }
            }
            let Some(d) = st.desktops.get_mut(id) else { return };
            match d.offsets.observe(&record.task_id, offset) {
                Verdict::Deliver => {
                    let done = matches!(record.event, TaskEvent::Finished { .. });
                    d.offsets.note(&record.task_id, done);
                    if done {
                        d.active.remove(&record.task_id);
                    } else {
                        d.active.insert(record.task_id.clone());
                    }
                    emitted.push(PhoneEvent::Task(record));
                }
                Verdict::Fill { from } => requests.push(Message::HistoryRequest {
                    task_id: Some(record.task_id),
                    from_offset: from,
                }),
                Verdict::Drop => {}
            }
        }
        Message::HistoryEnd { task_id, next_offset, more } => {
            if let Some(d) = st.desktops.get_mut(id)
                && let Some(from) = d.offsets.history_end(&task_id, next_offset, more)
            {
                requests.push(Message::HistoryRequest {
                    task_id: Some(task_id.clone()),
                    from_offset: from,
                });
            }
            // The reply that covered a page's range resolves it (a reply for
            // another range, e.g. a gap fill, leaves it waiting).
            let key = (id.to_owned(), task_id);
            if let Some(pages) = st.histories.get_mut(&key) {
                let mut i = 0;
                while i < pages.len() {
                    let start = pages.get(i).map(|p| {
                        (p.unavailable_before.map_or(p.from, |e| e.max(p.from)), p.events.len())
                    });
                    match start {
                        Some((start, n)) if start + n as u64 == next_offset => {
                            let p = pages.remove(i);
                            let _ = p.reply.send(HistoryPage {
                                events: p.events,
                                next_offset,
                                more,
                                unavailable_before: p.unavailable_before,
                            });
                        }
                        _ => i += 1,
                    }
                }
                if pages.is_empty() {
                    st.histories.remove(&key);
                }
            }
        }
        Message::HistoryUnavailable { task_id, earliest, .. } => {
            if let Some(d) = st.desktops.get_mut(id)
                && let Some((from, to)) = d.offsets.unavailable(&task_id, earliest)
            {
                warn!(desktop = %id, task = %task_id, from, to, "task events no longer kept by the desktop");
                emitted.push(PhoneEvent::TaskEventsLost {
                    desktop_id: id.to_owned(),
                    task_id: task_id.clone(),
                    from_offset: from,
                    to_offset: to,
                });
            }
            if let Some(pages) = st.histories.get_mut(&(id.to_owned(), task_id)) {
                for p in pages.iter_mut().filter(|p| p.from < earliest && p.events.is_empty()) {
                    p.unavailable_before = Some(earliest);
                }
            }
        }
        Message::TaskList { tasks } => {
            if let Some(d) = st.desktops.get_mut(id) {
                // Newest first: each listed finished task goes before the
                // others, so the oldest ends up forgotten first.
                for t in &tasks {
                    if t.state == tandem_proto::message::TaskState::Finished {
                        d.active.remove(&t.task_id);
                        d.offsets.listed_finished(&t.task_id);
                    } else {
                        d.active.insert(t.task_id.clone());
                    }
                }
            }
            for w in st.lists.remove(id).unwrap_or_default() {
                let _ = w.send(tasks.clone());
            }
        }
        Message::Choices { executors, projects, default_executor, default_project } => {
            // Sent with every task list: told to the app when it changed.
            let choices = Choices { executors, projects, default_executor, default_project };
            if let Some(d) = st.desktops.get_mut(id)
                && d.choices.as_ref() != Some(&choices)
            {
                d.choices = Some(choices.clone());
                emitted.push(PhoneEvent::Choices { desktop_id: id.to_owned(), choices });
            }
        }
        Message::Detached { idle_secs } => {
            emitted.push(PhoneEvent::Detached { desktop_id: id.to_owned(), idle_secs });
        }
        Message::Sessions { sessions, .. } => {
            for w in st.session_lists.remove(id).unwrap_or_default() {
                let _ = w.send(Ok(sessions.clone()));
            }
        }
        Message::Refused { task_id, code, message } => {
            // A refusal about no task answers the oldest sessions request.
            if task_id.is_none()
                && let Some(waiting) = st.session_lists.get_mut(id)
                && !waiting.is_empty()
            {
                let _ = waiting.remove(0).send(Err((code.clone(), message.clone())));
            }
            emitted.push(PhoneEvent::Refused { desktop_id: id.to_owned(), task_id, code, message });
        }
        Message::DeviceInfo(info) => {
            if let Some(d) = st.desktops.get_mut(id) {
                d.record.info = info;
            }
        }
        _ => debug!("a phone-to-desktop message from a desktop ignored"),
    }
}
