//! A frame for a connected recipient goes out as soon as it has its
//! delivery id; the sender's `Ok` waits for the store's durable answer
//! (docs/PROTOCOL.md §6.5). Against an in-process relay whose store holds
//! every enqueue's durable answer until the test lets it go.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Device, new_key};
use tandem_proto::frame::Frame;
use tandem_proto::{DeviceId, Role};
use tandem_relay::store::{
    AddrKey, Enqueued, Expired, NewFrame, QueueDepth, Queued, RedbStore, Store, StoreFuture, Totals,
};
use tokio::sync::watch;

/// The real store, with every enqueue's durable answer held until `open`.
struct HeldCommits {
    inner: RedbStore,
    open: watch::Receiver<bool>,
}

impl Store for HeldCommits {
    fn enqueue(&self, frame: NewFrame, now: u64, live: bool) -> Enqueued {
        let Enqueued { placed, durable } = self.inner.enqueue(frame, now, live);
        let mut open = self.open.clone();
        let durable = Box::pin(async move {
            let result = durable.await;
            let _ = open.wait_for(|o| *o).await;
            result
        });
        Enqueued { placed, durable }
    }
    fn fetch(&self, to: DeviceId, after: u64, limit: usize) -> StoreFuture<Vec<Queued>> {
        self.inner.fetch(to, after, limit)
    }
    fn ack(&self, to: DeviceId, up_to: u64) -> StoreFuture<u64> {
        self.inner.ack(to, up_to)
    }
    fn depth(&self, to: DeviceId) -> StoreFuture<QueueDepth> {
        self.inner.depth(to)
    }
    fn authorize(&self, by: DeviceId, peer: DeviceId, addr: AddrKey, now: u64) -> StoreFuture<()> {
        self.inner.authorize(by, peer, addr, now)
    }
    fn revoke(&self, by: DeviceId, peer: DeviceId, now: u64) -> StoreFuture<u64> {
        self.inner.revoke(by, peer, now)
    }
    fn is_route(&self, a: DeviceId, b: DeviceId) -> StoreFuture<bool> {
        self.inner.is_route(a, b)
    }
    fn peers(&self, a: DeviceId) -> StoreFuture<Vec<DeviceId>> {
        self.inner.peers(a)
    }
    fn expire(&self, now_unix: u64) -> StoreFuture<Expired> {
        self.inner.expire(now_unix)
    }
    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }
    fn totals(&self) -> StoreFuture<Totals> {
        self.inner.totals()
    }
}

#[tokio::test]
async fn a_connected_recipient_gets_the_frame_before_the_sender_gets_ok() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = tandem_relay::Config::new(dir.path().join("data"));
    let (open_tx, open) = watch::channel(false);
    let inner = RedbStore::open(&config.data_dir, config.queue, config.routes, 0).unwrap();
    let store: Arc<dyn Store> = Arc::new(HeldCommits { inner, open });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server =
        tokio::spawn(tandem_relay::run_with_store(listener, config, store, shutdown.clone()));
    let url = format!("ws://{addr}/v1/connect");

    let (mut desk, _) =
        Device::authenticate(common::ws_connect(&url).await, &addr, new_key(), Role::Desktop).await;
    let (mut phone, _) =
        Device::authenticate(common::ws_connect(&url).await, &addr, new_key(), Role::Phone).await;
    desk.authorize(phone.id(), 1).await.unwrap();
    phone.authorize(desk.id(), 1).await.unwrap();

    for i in 0..3u8 {
        desk.send(&Frame::Send {
            send_id: 10 + u64::from(i),
            to: phone.id(),
            payload: vec![i; 50],
        })
        .await;
    }
    // All three arrive, in order, while none of their commits is let go ...
    let got = phone.deliveries(3).await;
    let payloads: Vec<Vec<u8>> = got.iter().map(|(_, _, p)| p.clone()).collect();
    assert_eq!(payloads, [vec![0; 50], vec![1; 50], vec![2; 50]]);
    assert!(got.windows(2).all(|w| w[1].0 == w[0].0 + 1), "ids {got:?}");
    // ... and the sender has no `Ok` yet.
    let (early, _) = desk.collect_for(Duration::from_millis(300)).await;
    assert!(
        !early.iter().any(|f| matches!(f, Frame::Ok { .. })),
        "Ok before the commit: {early:?}"
    );

    open_tx.send_replace(true);
    for i in 0..3 {
        assert_eq!(desk.result_of(10 + i).await, Ok(()));
    }
    // The recipient's ack empties the queue: nothing is delivered twice on
    // a new connection.
    phone.send(&Frame::Ack { up_to: got[2].0 }).await;
    let key = phone.key.clone();
    phone.close().await;
    let (mut phone2, queued) =
        Device::authenticate(common::ws_connect(&url).await, &addr, key, Role::Phone).await;
    assert_eq!(queued, 0);
    phone2.assert_quiet(Duration::from_millis(300)).await;

    shutdown.cancel();
    server.await.unwrap().unwrap();
}
