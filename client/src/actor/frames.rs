//! Frames from the relay, and writing the outbox and the acknowledgement.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem_proto::{ErrorCode, Frame};
use tracing::{debug, info, warn};

use super::{Actor, FLUSH_BATCH};
use crate::client::Event;
use crate::connect::Connection;
use crate::error::ClientError;

impl Actor {
    pub(super) async fn on_frame(
        &mut self,
        conn: &mut Connection,
        frame: Frame,
    ) -> Result<(), ClientError> {
        match frame {
            Frame::Deliver { delivery_id: relay_id, from, payload } => {
                let delivery_id = self.cursor.local(relay_id);
                self.shared.delivered.fetch_max(delivery_id, Ordering::AcqRel);
                let acked = self.shared.ack.load(Ordering::Acquire);
                if delivery_id <= acked {
                    // Already processed and acknowledged in this process and
                    // this store epoch: the earlier ack was lost with a
                    // connection. Say it again.
                    debug!(relay_id, acked, "dropping a redelivery");
                    if let Some(up_to) = self.cursor.relay(acked) {
                        conn.send(&Frame::Ack { up_to }).await?;
                    }
                    self.ack_sent = self.ack_sent.max(acked);
                } else {
                    debug!(relay_id, delivery_id, %from, len = payload.len(), "deliver");
                    self.hold(Event::Deliver { delivery_id, from, payload });
                }
            }
            Frame::Ok { ref_id } => match self.in_flight.remove(&ref_id) {
                Some(pending) => pending.answer(Ok(())),
                None => debug!(ref_id, "Ok for no pending request"),
            },
            Frame::Oks { runs } => {
                // Each `Send` in flight that a run covers, as by `Ok`; ids
                // not in flight (or not a `Send`) are not this answer's.
                for run in &runs {
                    let covered: Vec<u64> = self
                        .in_flight
                        .range(run.ids())
                        .filter(|(_, p)| matches!(p.frame, Frame::Send { .. }))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in covered {
                        if let Some(pending) = self.in_flight.remove(&id) {
                            pending.answer(Ok(()));
                        }
                    }
                }
            }
            Frame::Error { code, ref_id, message } => {
                match self.in_flight.remove(&ref_id).filter(|_| ref_id != 0) {
                    Some(pending) => {
                        debug!(ref_id, %code, "request refused");
                        pending.answer(Err(ClientError::Refused(code, message)));
                    }
                    None => {
                        warn!(ref_id, %code, %message, "the relay reported an error");
                        if ends_connection(code) {
                            self.last_error = Some(code);
                        }
                        self.hold(Event::Refused { code, ref_id, message });
                    }
                }
            }
            Frame::Ping { nonce } => conn.send(&Frame::Pong { nonce }).await?,
            Frame::Pong { .. } => {}
            Frame::Presence { peer, online } => {
                debug!(%peer, online, "presence");
                self.hold(Event::Presence { peer, online });
            }
            Frame::PairMessage { pairing_id, peer, payload } => {
                debug!(%peer, len = payload.len(), "pair message");
                self.hold(Event::PairMessage { pairing_id, peer, payload });
            }
            Frame::Restarting { reconnect_after_ms } => {
                let after = Duration::from_millis(u64::from(reconnect_after_ms));
                info!(?after, "the relay is restarting");
                self.restart_hint = Some(after);
                self.hold(Event::Restarting { after });
            }
            other => warn!(frame = %other.frame_type(), "ignoring an unexpected frame"),
        }
        Ok(())
    }

    /// Write the application's acknowledgement if it grew.
    pub(super) async fn flush_ack(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        let acked = self.shared.ack.load(Ordering::Acquire);
        if acked > self.ack_sent {
            // An acknowledgement of an older store epoch stays here.
            if let Some(up_to) = self.cursor.relay(acked) {
                conn.send(&Frame::Ack { up_to }).await?;
                debug!(up_to, "ack");
            }
            self.ack_sent = acked;
        }
        Ok(())
    }

    /// Write up to [`FLUSH_BATCH`] requests from the outbox.
    pub(super) async fn flush(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        for _ in 0..FLUSH_BATCH {
            let Some(pending) = self.outbox.pop_front() else { break };
            if pending.reply.is_closed() {
                debug!(id = pending.id, "dropping a request nobody waits for");
                continue;
            }
            match conn.send(&pending.frame).await {
                Ok(()) if pending.id == 0 => pending.answer(Ok(())),
                Ok(()) => {
                    debug!(id = pending.id, frame = %pending.frame.frame_type(), "written");
                    self.in_flight.insert(pending.id, pending);
                }
                Err(ClientError::TooLarge) => pending.answer(Err(ClientError::TooLarge)),
                Err(e) => {
                    // It may have been partly written: treat it as in flight.
                    if pending.id == 0 {
                        self.outbox.push_front(pending);
                    } else {
                        self.in_flight.insert(pending.id, pending);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Codes with which the relay ends a connection (§5).
fn ends_connection(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::AuthFailed
            | ErrorCode::NotAuthenticated
            | ErrorCode::HandshakeTimeout
            | ErrorCode::IdleTimeout
            | ErrorCode::Replaced
            | ErrorCode::Overloaded
            | ErrorCode::ShuttingDown
            | ErrorCode::PingTimeout
    )
}
