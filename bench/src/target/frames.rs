//! A minimal relay client at the frame level, for the `tandem-wire` target
//! ([`super::tandem_wire`]): one WebSocket per device, the relay handshake
//! (`Hello` offering levels `1..=LEVEL`, `Challenge`, `Auth`, `AuthOk`, as
//! `tandem-client` does), then [`Frame`]s written and read directly, with
//! the WebSocket limits of the baselines' client ([`plain::ws_config`]: a
//! 4 KiB read buffer, no write buffering). No outbox, no reconnection, no
//! end-to-end layer: a payload is opaque bytes, exactly as long as the
//! sealed record the real devices would send.
//!
//! ```text
//! data payload = message ‖ 0x5a padding       (WireSizes::data_frame − SEND_HEADER bytes)
//! ack payload  = up_to u64 ‖ zero padding     (WireSizes::ack_frame − SEND_HEADER bytes)
//! ```
//!
//! The desktop end writes `Send`s (at most [`MAX_IN_FLIGHT`] unanswered),
//! reads `Ok`/`Oks` (level 2) and the phone's ack payloads, and acknowledges
//! those deliveries to the relay; the phone end reads `Deliver`s, hands the
//! messages over, and per burst of up to [`ACK_BATCH`] sends a relay `Ack`
//! and one ack payload back to the desktop. Both answer the relay's pings.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tandem_proto::frame::LEVEL;
use tandem_proto::{DeviceId, DeviceKey, Frame, Role, relay_auth};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::plain::{self, ACK_BATCH};
use super::tandem::MAX_IN_FLIGHT;
use super::{Ends, Health, Received, Tasks};
use crate::error::{BenchError, Result};
use crate::wire::{self, WireSizes};

/// Bytes of a `Send` (and a `Deliver`) frame before its payload: version,
/// type, `send_id u64`, `to [16]`.
pub const SEND_HEADER: usize = 2 + 8 + 16;

/// An authenticated WebSocket to the relay.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connect to the relay at `url` (plain `ws://` only) and authenticate as
/// `key` in `role`; returns the socket once `AuthOk` came.
///
/// # Errors
/// [`BenchError::Usage`] for a `wss://` URL, [`BenchError::WebSocket`] when
/// the connection fails, [`BenchError::Protocol`] when the handshake does.
pub async fn connect(url: &str, key: &DeviceKey, role: Role) -> Result<Ws> {
    if !url.starts_with("ws://") {
        return Err(BenchError::Usage(format!(
            "the tandem-wire target speaks plain ws:// only, not {url} (no --tls)"
        )));
    }
    let dialed = tandem_client::Endpoint::new(url, &[])?.dialed_name().to_owned();
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(plain::ws_config()), true).await?;
    write(&mut ws, &Frame::Hello { min_version: 1, max_version: LEVEL, role }).await?;
    let challenge = handshake_frame(&mut ws).await?;
    let auth = relay_auth::prove(key, role, &dialed, &challenge)
        .map_err(|e| BenchError::Protocol(format!("relay challenge: {e}")))?;
    write(&mut ws, &auth).await?;
    match handshake_frame(&mut ws).await? {
        Frame::AuthOk { device_id, .. } if device_id == key.public().device_id() => Ok(ws),
        other => Err(BenchError::Protocol(format!("expected AuthOk, got {}", describe(&other)))),
    }
}

/// What a frame is, for an error message (never its payload).
fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Error { code, message, .. } => format!("Error {code}: {message}"),
        other => other.frame_type().to_string(),
    }
}

/// Encode and write one frame.
async fn write(ws: &mut Ws, frame: &Frame) -> Result<()> {
    ws.send(Message::Binary(encode(frame)?.into())).await?;
    Ok(())
}

/// A frame's bytes.
fn encode(frame: &Frame) -> Result<Vec<u8>> {
    frame.encode().map_err(|e| BenchError::Protocol(e.to_string()))
}

/// The next frame during the handshake (pings skipped).
async fn handshake_frame(ws: &mut Ws) -> Result<Frame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
                Ok(Frame::Ping { .. }) => {}
                Ok(frame) => return Ok(frame),
                Err(e) => return Err(BenchError::Protocol(format!("relay frame: {e}"))),
            },
            Some(Ok(Message::Close(_))) | None => {
                return Err(BenchError::Protocol("the relay closed during the handshake".into()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// The payload carrying `message`: padded to the sealed record's length.
#[must_use]
pub fn data_payload(mut message: Vec<u8>, sizes: WireSizes) -> Vec<u8> {
    let len = sizes.data_frame(message.len()).saturating_sub(SEND_HEADER).max(message.len());
    message.resize(len, 0x5a);
    message
}

/// The length of the message in a data payload of `payload_len` bytes.
#[must_use]
pub fn message_len(payload_len: usize, sizes: WireSizes) -> usize {
    let overhead = sizes.data_overhead.saturating_sub(SEND_HEADER);
    payload_len.saturating_sub(overhead).max(wire::HEADER_LEN.min(payload_len))
}

/// The payload of an end-to-end ack up to message `up_to`.
#[must_use]
pub fn ack_payload(up_to: u64, sizes: WireSizes) -> Vec<u8> {
    let mut p = up_to.to_be_bytes().to_vec();
    p.resize(sizes.ack_frame.saturating_sub(SEND_HEADER).max(8), 0);
    p
}

/// The message number an ack payload acknowledges up to.
#[must_use]
pub fn parse_ack(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Run both ends of a pair on two authenticated sockets: `desktop` sends
/// to `phone_id`, `phone` receives and acknowledges to `desktop_id`.
pub fn spawn_ends(
    (desktop, desktop_id): (Ws, DeviceId),
    (phone, phone_id): (Ws, DeviceId),
    ends: Ends,
    sizes: WireSizes,
    health: &Arc<Health>,
) -> Tasks {
    let Ends { outgoing, acked, incoming } = ends;
    let (d_sink, d_stream) = desktop.split();
    let (p_sink, p_stream) = phone.split();
    let room = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let sent = Arc::new(AtomicU64::new(0));
    let writer =
        DesktopWriter { to: phone_id, sizes, room: Arc::clone(&room), sent: Arc::clone(&sent) };
    let phone = PhoneEnd { to: desktop_id, sizes, health: Arc::clone(health) };
    Tasks::new(vec![
        tokio::spawn(writer.run(d_sink, outgoing, control_rx, Arc::clone(health))),
        tokio::spawn(desktop_reader(d_stream, acked, control_tx, (room, sent), Arc::clone(health))),
        tokio::spawn(phone.run(p_sink, p_stream, incoming)),
    ])
}

/// The desktop's writing half: its messages as `Send`s, and the frames its
/// reader asks for (relay acks, pongs).
struct DesktopWriter {
    to: DeviceId,
    sizes: WireSizes,
    /// One permit per `Send` that may still go out unanswered.
    room: Arc<Semaphore>,
    /// The highest send id given out (before the `Send` is written).
    sent: Arc<AtomicU64>,
}

impl DesktopWriter {
    async fn run<S>(
        self,
        mut sink: S,
        mut outgoing: mpsc::Receiver<Vec<u8>>,
        mut control: mpsc::UnboundedReceiver<Frame>,
        health: Arc<Health>,
    ) where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        let mut send_id = 0u64;
        loop {
            let room = self.room.available_permits() > 0;
            let frame = tokio::select! {
                biased;
                frame = control.recv() => match frame {
                    Some(frame) => frame,
                    None => return,
                },
                message = outgoing.recv(), if room => match message {
                    Some(message) => {
                        if let Ok(permit) = self.room.try_acquire() {
                            permit.forget();
                        }
                        send_id += 1;
                        self.sent.store(send_id, Ordering::Release);
                        let payload = data_payload(message, self.sizes);
                        Frame::Send { send_id, to: self.to, payload }
                    }
                    None => return,
                },
                // Full: wait for an answer (the permit goes straight back).
                _ = self.room.acquire(), if !room => continue,
            };
            let sent = match encode(&frame) {
                Ok(bytes) => {
                    sink.send(Message::Binary(bytes.into())).await.map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = sent {
                health.error(format!("wire desktop write: {e}"));
                return;
            }
        }
    }
}

/// The send ids the relay answered: each must be one the desktop sent, and
/// be answered once (ids above a contiguous answered prefix are kept).
#[derive(Debug, Default)]
struct Answered {
    /// Every id up to this is answered.
    floor: u64,
    above: BTreeSet<u64>,
}

impl Answered {
    fn answer(&mut self, id: u64, sent: u64) -> std::result::Result<(), String> {
        if id == 0 || id > sent {
            return Err(format!("an answer for send id {id}, never sent (highest sent {sent})"));
        }
        if id <= self.floor || !self.above.insert(id) {
            return Err(format!("send id {id} answered twice"));
        }
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        Ok(())
    }
}

/// The desktop's reading half: answers free room for more sends, ack
/// payloads move `acked`, and every burst of deliveries is acknowledged to
/// the relay.
async fn desktop_reader<S>(
    mut stream: S,
    acked: watch::Sender<u64>,
    control: mpsc::UnboundedSender<Frame>,
    (room, sent): (Arc<Semaphore>, Arc<AtomicU64>),
    health: Arc<Health>,
) where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut answered = Answered::default();
    let mut check = |id: u64| {
        if let Err(e) = answered.answer(id, sent.load(Ordering::Acquire)) {
            health.error(format!("wire desktop: {e}"));
        }
    };
    while let Some(batch) = super::next_batch(&mut stream, ACK_BATCH).await {
        let mut last_delivery = None;
        for message in batch {
            let frame = match read(message, &health, "desktop") {
                Read::Frame(frame) => frame,
                Read::Skip => continue,
                Read::Stop => return,
            };
            match frame {
                Frame::Ok { ref_id } => {
                    check(ref_id);
                    room.add_permits(1);
                }
                Frame::Oks { runs } => {
                    for r in &runs {
                        (r.first..r.first.saturating_add(u64::from(r.count))).for_each(&mut check);
                    }
                    let n: u64 = runs.iter().map(|r| u64::from(r.count)).sum();
                    room.add_permits(usize::try_from(n).unwrap_or(MAX_IN_FLIGHT));
                }
                Frame::Deliver { delivery_id, payload, .. } => {
                    last_delivery = Some(delivery_id);
                    match parse_ack(&payload) {
                        Some(up_to) => {
                            acked.send_if_modified(|a| {
                                let newer = up_to > *a;
                                *a = (*a).max(up_to);
                                newer
                            });
                        }
                        None => health.error("wire desktop: a delivery that is not an ack"),
                    }
                }
                Frame::Ping { nonce } => {
                    let _ = control.send(Frame::Pong { nonce });
                }
                other => unexpected(&health, "desktop", &other),
            }
        }
        if let Some(up_to) = last_delivery
            && control.send(Frame::Ack { up_to }).is_err()
        {
            return;
        }
    }
}

/// The phone end: one task reading deliveries and writing acks.
struct PhoneEnd {
    to: DeviceId,
    sizes: WireSizes,
    health: Arc<Health>,
}

impl PhoneEnd {
    async fn run<Si, St>(self, mut sink: Si, mut stream: St, incoming: mpsc::Sender<Received>)
    where
        Si: Sink<Message, Error = WsError> + Unpin,
        St: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let health = &self.health;
        let (mut last_seq, mut send_id) = (0u64, 0u64);
        let mut order = Order::default();
        while let Some(batch) = super::next_batch(&mut stream, ACK_BATCH).await {
            let mut replies = Vec::new();
            let mut last_delivery = None;
            for message in batch {
                let frame = match read(message, health, "phone") {
                    Read::Frame(frame) => frame,
                    Read::Skip => continue,
                    Read::Stop => return,
                };
                match frame {
                    Frame::Deliver { delivery_id, mut payload, .. } => {
                        let at = std::time::Instant::now();
                        last_delivery = Some(delivery_id);
                        if let Some((seq, _)) = wire::parse(&payload) {
                            if let Err(e) = order.check(delivery_id, seq) {
                                health.error(format!("wire phone: {e}"));
                            }
                            last_seq = last_seq.max(seq);
                        }
                        // The message without the record's overhead, as
                        // the tandem target hands it over.
                        payload.truncate(message_len(payload.len(), self.sizes));
                        if incoming.send(Received { at, message: payload }).await.is_err() {
                            return;
                        }
                    }
                    // The relay's answers to the ack payloads.
                    Frame::Ok { .. } | Frame::Oks { .. } => {}
                    Frame::Ping { nonce } => replies.push(Frame::Pong { nonce }),
                    other => unexpected(health, "phone", &other),
                }
            }
            if let Some(up_to) = last_delivery {
                replies.push(Frame::Ack { up_to });
                send_id += 1;
                let payload = ack_payload(last_seq, self.sizes);
                replies.push(Frame::Send { send_id, to: self.to, payload });
            }
            for frame in replies {
                let sent = match encode(&frame) {
                    Ok(b) => sink.send(Message::Binary(b.into())).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = sent {
                    health.error(format!("wire phone write: {e}"));
                    return;
                }
            }
        }
    }
}

/// What the phone end checks of every delivery on its one connection:
/// delivery ids strictly increase (PROTOCOL.md §6), and the desktop's
/// messages come in the order it sent them, none skipped. The first
/// violation names both deliveries, so a loss the tally counts can be
/// traced to the relay's ids.
#[derive(Debug, Default)]
struct Order {
    /// The last delivery and the message it carried.
    last: Option<(u64, u64)>,
}

impl Order {
    fn check(&mut self, delivery_id: u64, seq: u64) -> std::result::Result<(), String> {
        let previous = self.last.replace((delivery_id, seq));
        let Some((id, prev_seq)) = previous else { return Ok(()) };
        if delivery_id <= id || seq != prev_seq + 1 {
            return Err(format!(
                "message {seq} under delivery id {delivery_id} came after message {prev_seq} \
                 under delivery id {id}"
            ));
        }
        Ok(())
    }
}

/// One WebSocket message, read.
enum Read {
    Frame(Frame),
    Skip,
    Stop,
}

fn read(message: Result<Message, WsError>, health: &Health, end: &str) -> Read {
    match message {
        Ok(Message::Binary(b)) => match Frame::decode(&b) {
            Ok(frame) => Read::Frame(frame),
            Err(e) => {
                health.error(format!("wire {end}: a malformed frame: {e}"));
                Read::Skip
            }
        },
        Ok(Message::Close(_)) => {
            health.error(format!("wire {end}: the relay closed the connection"));
            Read::Stop
        }
        Ok(_) => Read::Skip,
        Err(e) => {
            health.error(format!("wire {end} read: {e}"));
            Read::Stop
        }
    }
}

/// Count a frame an end should never see in a benchmark (presence is fine).
fn unexpected(health: &Health, end: &str, frame: &Frame) {
    if !matches!(frame, Frame::Presence { .. } | Frame::Pong { .. }) {
        health.error(format!("wire {end}: unexpected {}", describe(frame)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_for_sent_ids_and_each_once() {
        let mut a = Answered::default();
        assert!(a.answer(2, 3).is_ok());
        assert!(a.answer(1, 3).is_ok());
        assert!(a.answer(3, 3).is_ok());
        assert_eq!((a.floor, a.above.len()), (3, 0), "a contiguous prefix keeps nothing");
        assert!(a.answer(2, 5).is_err(), "twice");
        assert!(a.answer(6, 5).is_err(), "never sent");
        assert!(a.answer(0, 5).is_err(), "no send id 0");
        assert!(a.answer(5, 5).is_ok());
        assert!(a.answer(5, 5).is_err(), "twice, above the prefix");
    }

    #[test]
    fn deliveries_must_keep_both_orders() {
        let mut o = Order::default();
        assert!(o.check(7, 40).is_ok(), "the first is whatever came");
        assert!(o.check(9, 41).is_ok(), "ids may skip (other senders)");
        let e = o.check(12, 43).unwrap_err();
        assert!(e.contains("message 43 under delivery id 12") && e.contains("message 41"), "{e}");
        assert!(o.check(12, 44).is_err(), "an id again");
        assert!(o.check(13, 44).is_err(), "a message again");
    }

    fn sizes() -> WireSizes {
        WireSizes::measure().unwrap()
    }

    #[test]
    fn send_frames_have_the_sealed_record_sizes() {
        let sizes = sizes();
        for len in [16, 64, 1024, 16 * 1024] {
            let message = wire::message(5, 9, len);
            let payload = data_payload(message.clone(), sizes);
            let frame = Frame::Send { send_id: 3, to: DeviceId([1; 16]), payload };
            let bytes = frame.encode().unwrap();
            assert_eq!(bytes.len(), sizes.data_frame(len), "{len}");
            let Frame::Send { payload, .. } = Frame::decode(&bytes).unwrap() else { panic!() };
            assert_eq!(wire::parse(&payload), Some((5, 9)));
            assert_eq!(&payload[..len], &message[..]);
            assert_eq!(message_len(payload.len(), sizes), len);
        }
        let ack =
            Frame::Send { send_id: 1, to: DeviceId([2; 16]), payload: ack_payload(77, sizes) };
        let bytes = ack.encode().unwrap();
        assert_eq!(bytes.len(), sizes.ack_frame);
        let Frame::Send { payload, .. } = Frame::decode(&bytes).unwrap() else { panic!() };
        assert_eq!(parse_ack(&payload), Some(77));
        assert_eq!(parse_ack(&[1, 2, 3]), None);
    }

    #[test]
    fn the_send_header_is_the_frames() {
        let empty = Frame::Send { send_id: u64::MAX, to: DeviceId([0; 16]), payload: Vec::new() };
        assert_eq!(empty.encode().unwrap().len(), SEND_HEADER);
        let deliver = Frame::Deliver { delivery_id: 1, from: DeviceId([0; 16]), payload: vec![] };
        assert_eq!(deliver.encode().unwrap().len(), SEND_HEADER);
    }

    #[tokio::test]
    async fn a_wss_url_is_a_usage_error() {
        let key = DeviceKey::generate(&mut tandem_proto::entropy::Entropy::os()).unwrap();
        let e = connect("wss://127.0.0.1:1/", &key, Role::Phone).await.unwrap_err();
        assert!(matches!(e, BenchError::Usage(_)), "{e}");
    }
}
