//! The baselines' side of a pair: plain WebSocket binary messages, no
//! authentication, no encryption, padded to the size of the relay frame
//! that would carry the same message ([`WireSizes`]).
//!
//! ```text
//! hello = pair_id [16] ‖ side u8          (0 desktop, 1 phone)
//! data  = 0x01 ‖ message ‖ zero padding    (WireSizes::data_frame bytes)
//! ack   = 0x02 ‖ up_to u64 ‖ zero padding  (WireSizes::ack_frame bytes)
//! ```
//!
//! The WebSocket limits are the relay's and the client's: a 4 KiB read
//! buffer, no write buffering, frames of at most 64 KiB.

use std::sync::Arc;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tandem_proto::frame::MAX_FRAME_LEN;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Ends, Health, Received, Tasks};
use crate::error::{BenchError, Result};
use crate::wire::{self, WireSizes};

pub(crate) const DATA: u8 = 0x01;
pub(crate) const ACK: u8 = 0x02;
/// Messages the phone end takes in before it acknowledges.
pub(crate) const ACK_BATCH: usize = 256;

/// Which end of a pair a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Sends messages.
    Desktop,
    /// Receives them and acknowledges.
    Phone,
}

/// The first message on a baseline connection.
#[must_use]
pub fn hello(pair_id: [u8; 16], side: Side) -> Vec<u8> {
    let mut h = pair_id.to_vec();
    h.push(u8::from(side == Side::Phone));
    h
}

/// Read a hello.
#[must_use]
pub fn parse_hello(bytes: &[u8]) -> Option<([u8; 16], Side)> {
    if bytes.len() != 17 {
        return None;
    }
    let id = bytes.get(..16)?.try_into().ok()?;
    let side = match bytes.get(16)? {
        0 => Side::Desktop,
        1 => Side::Phone,
        _ => return None,
    };
    Some((id, side))
}

/// The relay's WebSocket limits.
#[must_use]
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * MAX_FRAME_LEN)
        .max_message_size(Some(MAX_FRAME_LEN))
        .max_frame_size(Some(MAX_FRAME_LEN))
}

/// A client WebSocket to `url` (no Nagle), with `hello` sent.
///
/// # Errors
/// [`BenchError::WebSocket`] when the connection fails.
pub async fn connect(
    url: &str,
    hello: Vec<u8>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
    ws.send(Message::Binary(hello.into())).await?;
    Ok(ws)
}

pub(crate) fn data_frame(message: &[u8], sizes: WireSizes) -> Vec<u8> {
    let mut f = Vec::with_capacity(sizes.data_frame(message.len()));
    f.push(DATA);
    f.extend_from_slice(message);
    f.resize(sizes.data_frame(message.len()).max(1 + message.len()), 0);
    f
}

pub(crate) fn ack_frame(up_to: u64, sizes: WireSizes) -> Vec<u8> {
    let mut f = Vec::with_capacity(sizes.ack_frame);
    f.push(ACK);
    f.extend_from_slice(&up_to.to_be_bytes());
    f.resize(sizes.ack_frame.max(9), 0);
    f
}

/// Run both ends of a pair on two WebSockets: `desktop` sends, `phone`
/// receives and acknowledges.
pub fn spawn_ends<D, P>(
    desktop: D,
    phone: P,
    ends: Ends,
    sizes: WireSizes,
    health: &Arc<Health>,
) -> Tasks
where
    D: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Send + 'static,
    P: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Send + 'static,
{
    let Ends { outgoing, acked, incoming } = ends;
    let (d_sink, d_stream) = desktop.split();
    let (p_sink, p_stream) = phone.split();
    Tasks::new(vec![
        tokio::spawn(desktop_writer(d_sink, outgoing, sizes, Arc::clone(health))),
        tokio::spawn(desktop_reader(d_stream, acked, Arc::clone(health))),
        tokio::spawn(phone_end(p_sink, p_stream, incoming, sizes, Arc::clone(health))),
    ])
}

async fn desktop_writer<S>(
    mut sink: S,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    sizes: WireSizes,
    health: Arc<Health>,
) where
    S: Sink<Message, Error = WsError> + Unpin,
{
    while let Some(message) = outgoing.recv().await {
        if let Err(e) = sink.send(Message::Binary(data_frame(&message, sizes).into())).await {
            health.error(format!("baseline desktop write: {e}"));
            return;
        }
    }
}

async fn desktop_reader<S>(mut stream: S, acked: watch::Sender<u64>, health: Arc<Health>)
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    while let Some(message) = stream.next().await {
        match message {
            Ok(Message::Binary(b)) => match (b.first(), b.get(1..9)) {
                (Some(&ACK), Some(n)) => {
                    let up_to = u64::from_be_bytes(n.try_into().unwrap_or_default());
                    acked.send_replace(up_to);
                }
                _ => health.error("baseline desktop: not an ack"),
            },
            Ok(_) => {}
            Err(e) => {
                health.error(format!("baseline desktop read: {e}"));
                return;
            }
        }
    }
}

async fn phone_end<Si, St>(
    mut sink: Si,
    mut stream: St,
    incoming: mpsc::Sender<Received>,
    sizes: WireSizes,
    health: Arc<Health>,
) where
    Si: Sink<Message, Error = WsError> + Unpin,
    St: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut last = 0u64;
    while let Some(batch) = super::next_batch(&mut stream, ACK_BATCH).await {
        let mut got = false;
        for message in batch {
            match message {
                Ok(Message::Binary(b)) => {
                    let at = std::time::Instant::now();
                    let Some((&DATA, rest)) = b.split_first() else {
                        health.error("baseline phone: not data");
                        continue;
                    };
                    if let Some((seq, _)) = wire::parse(rest) {
                        last = last.max(seq);
                        got = true;
                    }
                    if incoming.send(Received { at, message: rest.to_vec() }).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    health.error(format!("baseline phone read: {e}"));
                    return;
                }
            }
        }
        if got && let Err(e) = sink.send(Message::Binary(ack_frame(last, sizes).into())).await {
            health.error(format!("baseline phone write: {e}"));
            return;
        }
    }
}

/// A random pair id.
///
/// # Errors
/// [`BenchError::Protocol`] when the OS has no randomness.
pub fn pair_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    tandem_proto::entropy::Entropy::os()
        .fill(&mut id)
        .map_err(|e| BenchError::Protocol(e.to_string()))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_padded_to_the_relay_sizes() {
        let sizes = WireSizes { data_overhead: 60, ack_frame: 90 };
        let m = wire::message(3, 4, 64);
        let f = data_frame(&m, sizes);
        assert_eq!(f.len(), 124);
        assert_eq!(wire::parse(&f[1..]), Some((3, 4)));
        assert_eq!(ack_frame(9, sizes).len(), 90);
        let id = [7; 16];
        assert_eq!(parse_hello(&hello(id, Side::Phone)), Some((id, Side::Phone)));
        assert_eq!(parse_hello(&[0; 16]), None);
    }
}
