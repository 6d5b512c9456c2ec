//! The reader's push frames (PROTOCOL.md §6.14): `PushSubscribe` (phones
//! only), `Notify` (to a device with a mutual route) and `Active`, taken
//! only on connections at level [`LEVEL_PUSH`] or above.

use std::sync::Arc;

use tandem_proto::frame::push::{PushSubscription, check_notify};
use tandem_proto::frame::{Frame, LEVEL_PUSH};
use tandem_proto::{DeviceId, ErrorCode, Role};
use tracing::info;

use super::Reader;
use crate::push::{Push, Subscription};

/// What a device is told when the store cannot be written.
const STORE_DOWN: &str = "the relay cannot write its store right now; retry later";

impl Reader {
    /// A push frame from the device.
    pub(super) async fn on_push(&self, frame: Frame) {
        let ref_id = match &frame {
            Frame::PushSubscribe { request_id, .. } | Frame::Notify { request_id, .. } => {
                *request_id
            }
            _ => 0,
        };
        if self.level < LEVEL_PUSH {
            let m = format!("{} needs protocol level {LEVEL_PUSH}", frame.frame_type());
            self.refuse(ErrorCode::UnexpectedFrame, ref_id, &m).await;
            return;
        }
        match frame {
            Frame::Active { active } => self.handle.set_active(active),
            Frame::PushSubscribe { request_id, kind, data } => {
                self.on_subscribe(request_id, kind, &data).await;
            }
            Frame::Notify { request_id, to, urgency, topic, blob } => {
                self.on_notify(request_id, to, urgency, topic, blob).await;
            }
            _ => {}
        }
    }

    async fn on_subscribe(&self, request_id: u64, kind: u8, data: &[u8]) {
        let state = &self.state;
        if self.role != Role::Phone {
            let m = "only phones register push subscriptions";
            self.refuse(ErrorCode::UnexpectedFrame, request_id, m).await;
            return;
        }
        let sub = match PushSubscription::parse(kind, data) {
            Ok(s) => s,
            Err(e) => {
                let m = format!("bad push subscription: {e}");
                self.refuse(ErrorCode::MalformedFrame, request_id, &m).await;
                return;
            }
        };
        let written = match Subscription::from_wire(sub) {
            None => state.store.remove_push_subscription(self.device).await.map(|_| ()),
            Some(sub) => {
                if let Some((code, m)) = self.refusal(&sub) {
                    self.refuse(code, request_id, &m).await;
                    return;
                }
                let bytes = sub.to_wire().to_bytes();
                let written = state.store.put_push_subscription(self.device, bytes).await;
                if written.is_ok() {
                    info!(device = %self.device, subscription = ?sub, "push subscription stored");
                }
                written
            }
        };
        match written {
            Ok(()) => self.reply(Frame::Ok { ref_id: request_id }).await,
            Err(_) => self.refuse(ErrorCode::StoreUnavailable, request_id, STORE_DOWN).await,
        }
    }

    /// Why the relay will not keep `sub`, if it will not.
    fn refusal(&self, sub: &Subscription) -> Option<(ErrorCode, String)> {
        let push = &self.state.push;
        if !push.serves(sub) {
            let m = format!("this relay sends no {} pushes", sub.kind());
            return Some((ErrorCode::PushUnavailable, m));
        }
        if let Subscription::WebPush { endpoint, p256dh, .. } = sub {
            if !push.config().origin_allowed(endpoint) {
                let m = "this relay does not send to that push service".to_owned();
                return Some((ErrorCode::UnexpectedFrame, m));
            }
            if web_push_native::p256::PublicKey::from_sec1_bytes(p256dh).is_err() {
                let m = "bad push subscription: p256dh is not a P-256 point".to_owned();
                return Some((ErrorCode::MalformedFrame, m));
            }
        }
        None
    }

    async fn on_notify(
        &self,
        request_id: u64,
        to: DeviceId,
        urgency: u8,
        topic: [u8; 16],
        blob: Vec<u8>,
    ) {
        let state = &self.state;
        let (urgency, topic) = match check_notify(urgency, &topic, &blob) {
            Ok(v) => v,
            Err(e) => {
                let m = format!("bad notify: {e}");
                self.refuse(ErrorCode::MalformedFrame, request_id, &m).await;
                return;
            }
        };
        match state.routes.is_route(self.device, to).await {
            Ok(true) => {}
            Ok(false) => {
                let m = "no route: these devices have not authorised each other";
                self.refuse(ErrorCode::NotAuthorized, request_id, m).await;
                return;
            }
            Err(_) => {
                let m = "the relay cannot read its store right now; retry later";
                self.refuse(ErrorCode::StoreUnavailable, request_id, m).await;
                return;
            }
        }
        let ttl_secs = u32::try_from(state.config.push.ttl.as_secs()).unwrap_or(u32::MAX);
        let push = Push { urgency: urgency.into(), topic, blob: blob.into(), ttl_secs };
        match state.push.notify(&Arc::clone(state), self.device, to, push) {
            Ok(()) => self.reply(Frame::Ok { ref_id: request_id }).await,
            Err(code) => {
                let m = "too many pushes waiting for that device; slow down";
                self.refuse(code, request_id, m).await;
            }
        }
    }
}
