//! Requests in, events out: requests are taken from the shared queue while
//! the outbox has room, and events are held for the application while its
//! channel is full.

use super::{Actor, Pending};
use crate::client::{Command, Event, Request};

impl Actor {
    /// Take requests from the shared queue, in the order they were made,
    /// while there is room (all of them once stopped for good: they fail at
    /// once). Requests whose callers gave up make room.
    pub(super) fn intake(&mut self) {
        let requests = &self.shared.requests;
        if self.fatal.is_some() {
            for command in requests.take(usize::MAX) {
                self.on_command(command);
            }
            return;
        }
        let capacity = self.config.outbox_capacity.max(1);
        let mut held = self.outbox.len() + self.in_flight.len();
        if held >= capacity && requests.is_waiting() && requests.take_gave_up() {
            // Forget requests whose callers gave up: keeps both collections
            // bounded by the live requests.
            self.outbox.retain(|p| !p.reply.is_closed());
            self.in_flight.retain(|_, p| !p.reply.is_closed());
            held = self.outbox.len() + self.in_flight.len();
        }
        for command in requests.take(capacity.saturating_sub(held)) {
            self.on_command(command);
        }
    }

    /// Whether the actor may take another request.
    pub(super) fn has_room(&self) -> bool {
        self.outbox.len() + self.in_flight.len() < self.config.outbox_capacity.max(1)
    }

    /// Give a request its id and put it at the end of the outbox (or answer
    /// it at once when stopped for good).
    fn on_command(&mut self, command: Command) {
        let Command { request, reply } = command;
        if let Some(error) = &self.fatal {
            let _ = reply.send(Err(error.clone()));
            return;
        }
        let id = if request.has_id() {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            id
        } else {
            0
        };
        let frame = Request::into_frame(request, id);
        self.outbox.push_back(Pending { id, frame, reply });
    }

    /// Keep an event for the application, after those held before it; the
    /// connection loop hands them over as the channel makes room.
    pub(super) fn hold(&mut self, event: Event) {
        self.held_bytes += held_len(&event);
        self.held.push_back(event);
    }

    /// Hand an event to the application (after those still held), taking
    /// requests while the channel is full. Events are dropped if nobody
    /// listens any more.
    pub(super) async fn emit(&mut self, event: Event) {
        self.hold(event);
        while let Some(event) = self.held.pop_front() {
            self.held_bytes -= held_len(&event);
            self.emit_one(event).await;
        }
    }

    async fn emit_one(&mut self, event: Event) {
        let events = self.events.clone();
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    self.stopping = true;
                    return;
                }
                permit = events.reserve() => {
                    if let Ok(permit) = permit {
                        permit.send(event);
                    }
                    return;
                }
                () = self.shared.requests.notify.notified() => self.intake(),
            }
        }
    }
}

/// What a held event counts against [`MAX_HELD_BYTES`].
pub(super) fn held_len(event: &Event) -> usize {
    match event {
        Event::Deliver { payload, .. } | Event::PairMessage { payload, .. } => payload.len(),
        _ => 0,
    }
}
