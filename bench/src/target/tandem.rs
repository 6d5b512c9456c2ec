//! The real thing: each pair is a desktop and a phone with their own keys
//! and `tandem-client` connections, paired through the relay's mailbox.
//! The desktop end seals each message with `Link::send` and sends the record
//! (up to [`MAX_IN_FLIGHT`] sends waiting for the relay's `Ok`, in order; the
//! agent sends one at a time); the phone
//! end opens records with `Link::receive`, hands the messages over in order,
//! acknowledges deliveries to the relay, and sends one end-to-end ack record
//! per burst. After a reconnect the desktop resends what is unacknowledged
//! (`Link::resend(0)`), as the agent does; the phone drops what it has seen.
//!
//! Nothing is persisted: the bench measures the relay, not the devices'
//! disks.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tandem_client::{Client, ClientError, Event};
use tandem_proto::entropy::Entropy;
use tandem_proto::link::{Link, LinkError, LinkEvent};
use tandem_proto::record::RecordError;
use tandem_proto::{DeviceId, DeviceKey, Role};
use tokio::sync::watch;

use super::steps::{Cause, End, PairSteps, Step as Noted};
use super::{Ends, Health, PairIo, Received, Target, Tasks, channels};
use crate::error::Result;
use crate::pairing::{Device, RelayAccess, pair};

/// Sends one desktop end keeps waiting for the relay's answer (the
/// client's outbox holds 256).
pub const MAX_IN_FLIGHT: usize = 256;
/// Pairs set up at once.
const SETUP_CONCURRENCY: usize = 16;
/// Events the phone end handles before it acknowledges.
const ACK_BATCH: usize = 256;

/// The tandem relay with the real protocol.
#[derive(Debug)]
pub struct TandemTarget {
    access: RelayAccess,
    pid: Option<u32>,
    health: Arc<Health>,
}

impl TandemTarget {
    /// A target at `access`; `pid` is the relay process when it runs on
    /// this machine.
    #[must_use]
    pub fn new(access: RelayAccess, pid: Option<u32>) -> Self {
        Self { access, pid, health: Arc::default() }
    }

    /// Connect two devices, pair them, and start the pair's ends.
    async fn open_one(&self) -> Result<PairIo> {
        let mut desktop = Device::connect(&self.access, Role::Desktop).await?;
        let mut phone = Device::connect(&self.access, Role::Phone).await?;
        let (desktop_link, phone_link) = pair(&mut desktop, &mut phone).await?;
        let (desktop_id, phone_id) = (desktop.id(), phone.id());
        let (mut io, ends) = channels();
        let Ends { outgoing, acked, incoming } = ends;
        let health = Arc::clone(&self.health);
        let steps = Arc::new(PairSteps::default());
        io.steps = Some(Arc::clone(&steps));
        let d = DesktopEnd {
            device: desktop,
            link: desktop_link,
            peer: phone_id,
            health,
            steps: Arc::clone(&steps),
        };
        let (ack_tx, ack_rx) = watch::channel(None);
        let (records_tx, records_rx) = tokio::sync::mpsc::unbounded_channel();
        let sender = tokio::spawn(phone_sender(
            phone.client.clone(),
            desktop_id,
            records_rx,
            ack_rx,
            Arc::clone(&self.health),
        ));
        let p = PhoneEnd {
            device: phone,
            link: phone_link,
            health: Arc::clone(&self.health),
            acks: ack_tx,
            records: records_tx,
            steps,
        };
        io.tasks = Tasks::new(vec![
            tokio::spawn(d.run(outgoing, acked)),
            tokio::spawn(p.run(incoming)),
            sender,
        ]);
        Ok(io)
    }
}

impl Target for TandemTarget {
    fn name(&self) -> &'static str {
        "tandem"
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn open(&self, pairs: usize) -> BoxFuture<'_, Result<Vec<PairIo>>> {
        super::open_pairs(pairs, SETUP_CONCURRENCY, || self.open_one()).boxed()
    }

    fn health(&self) -> &Health {
        &self.health
    }
}

type SendFuture = BoxFuture<'static, std::result::Result<(), ClientError>>;

/// What woke a desktop end.
enum Step {
    Answered(std::result::Result<(), ClientError>),
    Event(Event),
    Send(Vec<u8>),
}

struct DesktopEnd {
    device: Device,
    link: Link,
    peer: DeviceId,
    health: Arc<Health>,
    steps: Arc<PairSteps>,
}

impl DesktopEnd {
    fn push(&self, in_flight: &mut FuturesOrdered<SendFuture>, record: Vec<u8>) {
        // The record takes its place in the client's queue here, in call order.
        in_flight.push_back(self.device.client.send(self.peer, record).boxed());
    }

    /// Seal and send until the driver goes away. Up to [`MAX_IN_FLIGHT`]
    /// `Client::send` calls wait for the relay at once, from this one task;
    /// the client writes them in the order they were called.
    async fn run(
        mut self,
        mut outgoing: tokio::sync::mpsc::Receiver<Vec<u8>>,
        acked: watch::Sender<u64>,
    ) {
        let mut entropy = Entropy::os();
        let mut in_flight: FuturesOrdered<SendFuture> = FuturesOrdered::new();
        loop {
            let step = tokio::select! {
                biased;
                Some(result) = in_flight.next(), if !in_flight.is_empty() => Step::Answered(result),
                event = self.device.events.recv() => match event {
                    Some(event) => Step::Event(event),
                    None => return,
                },
                message = outgoing.recv(), if in_flight.len() < MAX_IN_FLIGHT => match message {
                    Some(message) => Step::Send(message),
                    None => return,
                },
            };
            match step {
                Step::Answered(Err(e)) => self.health.error(format!("desktop send: {e}")),
                Step::Answered(Ok(())) => {}
                Step::Event(event) => {
                    self.on_event(event, &mut in_flight, &mut entropy);
                    acked.send_replace(self.link.outbound().acked());
                }
                Step::Send(message) => match self.link.send(message) {
                    Ok((_, record)) => self.push(&mut in_flight, record),
                    Err(e) => self.health.error(format!("desktop seal: {e}")),
                },
            }
        }
    }

    fn on_event(
        &mut self,
        event: Event,
        in_flight: &mut FuturesOrdered<SendFuture>,
        entropy: &mut Entropy,
    ) {
        match event {
            Event::Deliver { delivery_id, payload, .. } => {
                match self.link.receive(&self.device.key, &payload, entropy) {
                    Ok(events) => {
                        for e in events {
                            match e {
                                LinkEvent::Send(records) => {
                                    for r in records {
                                        self.push(in_flight, r);
                                    }
                                }
                                LinkEvent::Message { .. } | LinkEvent::ResyncNeeded { .. } => {
                                    self.health
                                        .error("the desktop end got data it never asked for");
                                }
                                LinkEvent::AckDue | LinkEvent::SessionRenewed => {}
                            }
                        }
                    }
                    Err(LinkError::Record(RecordError::Replay(_))) => self.health.redelivered(),
                    Err(e) => self.health.error(format!("desktop open: {e}")),
                }
                self.device.client.ack(delivery_id);
            }
            Event::Connected { queued, .. } => {
                self.steps.note(End::Desktop, Noted::Connected { queued });
                self.health.reconnected();
                match self.link.resend(0) {
                    Ok(records) => {
                        for r in records {
                            self.push(in_flight, r);
                        }
                    }
                    Err(e) => self.health.error(format!("desktop resend: {e}")),
                }
            }
            event => note(&self.health, &self.steps, End::Desktop, &event),
        }
    }
}

/// Note a lost connection or failed attempt in `steps`; count what a
/// device should never see in a benchmark.
fn note(health: &Health, steps: &PairSteps, end: End, event: &Event) {
    if let Event::Disconnected { retry_in, reason, .. } = event {
        steps.note(end, Noted::Disconnected { retry_in: *retry_in, cause: Cause::of(reason) });
    }
    match event {
        Event::Disconnected { retry_in, reason, .. } if *retry_in == Duration::MAX => {
            health.error(format!("the relay stopped a device: {reason}"));
        }
        Event::Refused { code, message, .. } => {
            health.error(format!("the relay refused: {code}: {message}"));
        }
        _ => {}
    }
}

struct PhoneEnd {
    device: Device,
    link: Link,
    health: Arc<Health>,
    /// The newest sealed ack, for [`phone_sender`].
    acks: watch::Sender<Option<Vec<u8>>>,
    /// Other records (nacks), in order, for [`phone_sender`]: the event loop
    /// never waits on the network (a loop that waits for the relay's `Ok`
    /// while the relay waits for it to read deadlocks).
    records: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    steps: Arc<PairSteps>,
}

impl PhoneEnd {
    async fn run(mut self, incoming: tokio::sync::mpsc::Sender<Received>) {
        let mut entropy = Entropy::os();
        let key = self.device.key.clone();
        loop {
            let Some(first) = self.device.events.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < ACK_BATCH {
                match self.device.events.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let mut ack_due = false;
            let mut last_delivery = None;
            for event in batch {
                match event {
                    Event::Deliver { delivery_id, payload, .. } => {
                        last_delivery = Some(delivery_id);
                        match self.open(&key, &payload, &mut entropy, &incoming).await {
                            Ok(due) => ack_due |= due,
                            Err(()) => return,
                        }
                    }
                    Event::Connected { queued, .. } => {
                        self.steps.note(End::Phone, Noted::Connected { queued });
                        self.health.reconnected();
                    }
                    event => note(&self.health, &self.steps, End::Phone, &event),
                }
            }
            // Nothing is persisted here, so acknowledging at once is allowed.
            if let Some(id) = last_delivery {
                self.device.client.ack(id);
            }
            if ack_due {
                match self.link.ack() {
                    Ok(record) => {
                        self.acks.send_replace(Some(record));
                    }
                    Err(e) => self.health.error(format!("phone ack: {e}")),
                }
            }
        }
    }

    /// Open one record; `Ok(true)` when an ack is due, `Err` when the driver
    /// has gone.
    async fn open(
        &mut self,
        key: &DeviceKey,
        payload: &[u8],
        entropy: &mut Entropy,
        incoming: &tokio::sync::mpsc::Sender<Received>,
    ) -> std::result::Result<bool, ()> {
        let events = match self.link.receive(key, payload, entropy) {
            Ok(events) => events,
            Err(LinkError::Record(RecordError::Replay(_))) => {
                // Seen before: the desktop did not see our ack.
                self.health.redelivered();
                return Ok(true);
            }
            Err(e) => {
                self.health.error(format!("phone open: {e}"));
                return Ok(false);
            }
        };
        let mut ack_due = false;
        let mut delivered = false;
        for e in events {
            match e {
                LinkEvent::Message { message, .. } => {
                    delivered = true;
                    let received = Received { at: std::time::Instant::now(), message };
                    incoming.send(received).await.map_err(|_| ())?;
                }
                LinkEvent::AckDue => ack_due = true,
                LinkEvent::Send(records) => {
                    self.health.nacked();
                    for r in records {
                        let _ = self.records.send(r);
                    }
                }
                LinkEvent::ResyncNeeded { from, to } => {
                    self.health.error(format!("messages {from}..={to} lost for good"));
                }
                LinkEvent::SessionRenewed => {}
            }
        }
        if ack_due && !delivered {
            // A message delivered before, resent after a reconnect.
            self.health.redelivered();
        }
        Ok(ack_due)
    }
}

/// The phone end's sender: records (nacks) in order as they come, and the
/// newest ack record whenever there is one (older acks are superseded: one
/// covers everything delivered before it).
async fn phone_sender(
    client: Client,
    peer: DeviceId,
    mut records: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    mut acks: watch::Receiver<Option<Vec<u8>>>,
    health: Arc<Health>,
) {
    loop {
        let record = tokio::select! {
            record = records.recv() => match record {
                Some(record) => record,
                None => return,
            },
            changed = acks.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(record) = acks.borrow_and_update().clone() else { continue };
                record
            }
        };
        if let Err(e) = client.send(peer, record).await {
            health.error(format!("phone send: {e}"));
        }
    }
}
