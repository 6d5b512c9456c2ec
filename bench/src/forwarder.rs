//! The bare forwarder (`tandem-bench forwarder`): the relay's WebSocket
//! stack with nothing else. Each connection's first binary message names a
//! pair and a side ([`crate::target::plain::hello`]); once both sides are
//! there, every binary message from one goes to the other. No
//! authentication, no store, no encryption; the same limits as the relay (a
//! 4 KiB read buffer, no write buffering, 64 KiB frames) and a bounded queue
//! of 64 frames per connection, like the relay's send queue (here a full
//! queue makes the sender wait: there is no store to fall back to).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::target::plain::{self, Side};

/// Frames waiting for one connection's writer (the relay's `send_queue`).
const QUEUE: usize = 64;

type Outbox = mpsc::Sender<Message>;
/// A connection waiting: its outbox, and where to put the other side's.
type Waiter = (Outbox, oneshot::Sender<Outbox>);

/// Connections waiting for their other side, by pair id and side.
#[derive(Default)]
struct Waiting(Mutex<HashMap<([u8; 16], Side), Waiter>>);

impl Waiting {
    /// Register `me`; returns the other side's outbox, now or once it arrives.
    fn meet(&self, id: [u8; 16], side: Side, me: Outbox) -> oneshot::Receiver<Outbox> {
        let other = if side == Side::Desktop { Side::Phone } else { Side::Desktop };
        let (tx, rx) = oneshot::channel();
        let Ok(mut map) = self.0.lock() else { return rx };
        match map.remove(&(id, other)) {
            Some((their_outbox, their_slot)) => {
                let _ = their_slot.send(me);
                let _ = tx.send(their_outbox);
            }
            None => {
                map.insert((id, side), (me, tx));
            }
        }
        rx
    }
}

/// Accept and forward until the process ends. Prints
/// `tandem-bench forwarder listening on ws://ADDR/` once ready.
///
/// # Errors
/// When the listener fails.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("tandem-bench forwarder listening on ws://{}/", listener.local_addr()?);
    let waiting = Arc::new(Waiting::default());
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(connection(tcp, Arc::clone(&waiting)));
    }
}

async fn connection(tcp: TcpStream, waiting: Arc<Waiting>) {
    let _ = tcp.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(plain::ws_config())).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (id, side) = loop {
        match stream.next().await {
            Some(Ok(Message::Binary(b))) => match plain::parse_hello(&b) {
                Some(hello) => break hello,
                None => return,
            },
            Some(Ok(_)) => {}
            _ => return,
        }
    };
    let (outbox, mut rx) = mpsc::channel::<Message>(QUEUE);
    let peer = waiting.meet(id, side, outbox);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    // Read nothing more until the other side is there.
    let Ok(peer) = peer.await else {
        writer.abort();
        return;
    };
    while let Some(Ok(message)) = stream.next().await {
        let forward = match message {
            Message::Binary(_) => message,
            Message::Close(_) => break,
            _ => continue,
        };
        if peer.send(forward).await.is_err() {
            break;
        }
    }
    writer.abort();
}
