//! Push helpers for the relay's push tests (`push.rs`, `push_native_relay.rs`):
//! devices at protocol level 3 (the level that speaks push frames), the
//! foreground flag, and `Notify`.

use tandem_proto::frame::{Frame, PushSubscription};
use tandem_proto::{DeviceId, ErrorCode, Role};

use super::{Device, Relay, new_key};

/// Connect at protocol level 3 with a fresh key.
pub async fn device(relay: &Relay, role: Role) -> Device {
    Device::connect_at(relay, new_key(), role, 3).await.0
}

/// A desktop and a phone at level 3 with a mutual route.
pub async fn pair3(relay: &Relay) -> (Device, Device) {
    let mut desk = device(relay, Role::Desktop).await;
    let mut phone = device(relay, Role::Phone).await;
    desk.authorize(phone.id(), 1).await.expect("authorize phone");
    phone.authorize(desk.id(), 1).await.expect("authorize desktop");
    (desk, phone)
}

/// Say `Active{active}`, then a ping round trip: the relay has applied it.
pub async fn set_active(device: &mut Device, active: bool) {
    device.send(&Frame::Active { active }).await;
    device.send(&Frame::Ping { nonce: 77 }).await;
    device.expect("pong", |f| matches!(f, Frame::Pong { nonce: 77 })).await;
}

/// `Notify` request `id` to `to`, and its answer.
pub async fn notify(
    desk: &mut Device,
    id: u64,
    to: DeviceId,
    urgency: u8,
    topic: [u8; 16],
    blob: &[u8],
) -> Result<(), ErrorCode> {
    desk.send(&Frame::Notify { request_id: id, to, urgency, topic, blob: blob.to_vec() }).await;
    desk.result_of(id).await
}

/// Send `sub` as request `id` (a phone's `PushSubscribe`), and its answer.
pub async fn subscribe(
    phone: &mut Device,
    id: u64,
    sub: PushSubscription,
) -> Result<(), ErrorCode> {
    phone.send(&sub.frame(id)).await;
    phone.result_of(id).await
}
