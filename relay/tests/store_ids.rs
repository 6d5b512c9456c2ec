//! Delivery ids against a real relay process (issue 14, item 10): they come
//! from one store-wide counter, so the store keeps no row per device that
//! ever received a frame and rewrites none when it opens; ids still only
//! grow per device across restarts; a store from before the counter
//! migrates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::{Device, Relay, new_key};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tandem_proto::frame::Frame;
use tandem_proto::{DeviceId, DeviceKey, Role};

const META: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("queue_meta");
const QUEUE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("queue.v2");
const ROUTES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("routes.v2");
const PENDING: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("routes.pending");
const SETTINGS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("settings");

fn store_path(dir: &Path) -> std::path::PathBuf {
    dir.join("data").join("relay.redb")
}

/// (queue metadata rows, settings rows) of the stopped relay's store.
fn rows(dir: &Path) -> (u64, Vec<String>) {
    let db = Database::create(store_path(dir)).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap().len().unwrap();
    let settings = txn
        .open_table(SETTINGS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|r| String::from_utf8_lossy(r.unwrap().0.value()).into_owned())
        .collect();
    (meta, settings)
}

/// `desk` sends one frame to each phone, each phone takes it and
/// acknowledges it; then each phone's `Authorize` round trip (a durable
/// commit applied after its ack) makes the acks durable too. Returns each
/// phone's delivery id.
async fn one_frame_each(desk: &mut Device, phones: &mut [Device], round: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    for (i, p) in phones.iter_mut().enumerate() {
        let send_id = round * 1000 + i as u64 + 1;
        desk.send_to(p.id(), send_id, format!("round {round}").as_bytes()).await.unwrap();
        let (id, _, _) = p.delivery().await;
        p.send(&Frame::Ack { up_to: id }).await;
        p.authorize(desk.id(), send_id).await.unwrap();
        ids.push(id);
    }
    ids
}

async fn connect_all(relay: &Relay, keys: &[DeviceKey]) -> Vec<Device> {
    let mut out = Vec::new();
    for k in keys {
        out.push(Device::connect(relay, k.clone(), Role::Phone).await.0);
    }
    out
}

/// Twenty devices received (and acknowledged) frames: the stopped store has
/// no queue row for any of them, one counter row, and after a restart each
/// device's next id is above its last.
#[tokio::test]
async fn ids_come_from_one_counter_and_no_row_is_kept_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let desk_key = new_key();
    let (mut desk, _) = Device::connect(&relay, desk_key.clone(), Role::Desktop).await;
    let keys: Vec<DeviceKey> = (0..20).map(|_| new_key()).collect();
    let mut phones = connect_all(&relay, &keys).await;
    for (i, p) in phones.iter_mut().enumerate() {
        desk.authorize(p.id(), 100 + i as u64).await.unwrap();
        p.authorize(desk.id(), 1).await.unwrap();
    }
    let before = one_frame_each(&mut desk, &mut phones, 1).await;
    relay.kill9();
    let (meta, settings) = rows(dir.path());
    assert_eq!(meta, 0, "no queue row for devices whose queues are empty");
    assert_eq!(settings, ["next_id"], "one counter row");

    relay.restart();
    let (mut desk, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    let mut phones = connect_all(&relay, &keys).await;
    let after = one_frame_each(&mut desk, &mut phones, 2).await;
    for (b, a) in before.iter().zip(&after) {
        assert!(a > b, "ids go on growing per device: {a} after {b}");
    }
    relay.kill9();
    assert_eq!(rows(dir.path()).0, 0);
}

/// A store written before the counter (each queue's next id in its
/// `queue_meta` row, a row for every device that ever received a frame,
/// and `fresh_id`) opens with its frames under their ids; new ids are
/// above every id the old rows knew, for every device; the rows of empty
/// queues and `fresh_id` are gone, and the counter is one row.
#[tokio::test]
async fn a_store_from_before_the_counter_migrates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let (desk_key, full_key, idle_key) = (new_key(), new_key(), new_key());
    let desk = desk_key.public().device_id();
    let full = full_key.public().device_id();
    let idle = idle_key.public().device_id();
    write_old_store(&store_path(dir.path()), desk, full, idle);

    let mut relay = Relay::start(dir.path(), &[]);
    let (mut d, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    let (mut f, queued) = Device::connect(&relay, full_key, Role::Phone).await;
    assert_eq!(queued, 2);
    let old: Vec<(u64, Vec<u8>)> =
        f.deliveries(2).await.into_iter().map(|(id, _, p)| (id, p)).collect();
    assert_eq!(old, [(41, b"one".to_vec()), (42, b"two".to_vec())]);
    let (mut i, _) = Device::connect(&relay, idle_key, Role::Phone).await;
    d.send_to(idle, 1, b"to the idle one").await.unwrap();
    let (idle_next, _, _) = i.delivery().await;
    assert!(idle_next > 900, "above the idle queue's old next id: {idle_next}");
    d.send_to(full, 2, b"three").await.unwrap();
    let (full_next, _, _) = f.delivery().await;
    assert!(full_next > idle_next, "one counter: {full_next} after {idle_next}");
    f.send(&Frame::Ack { up_to: full_next }).await;
    i.send(&Frame::Ack { up_to: idle_next }).await;
    f.authorize(desk, 3).await.unwrap();
    i.authorize(desk, 3).await.unwrap();
    relay.kill9();
    let (meta, settings) = rows(dir.path());
    assert_eq!(meta, 0, "the old rows of empty queues are gone");
    assert_eq!(settings, ["next_id"], "fresh_id is gone, one counter row");
}

/// Write a store as the relay before the counter did: routes `desk` ↔
/// `full` and `desk` ↔ `idle`, frames 41 and 42 for `full` (next id 43), an
/// empty queue row for `idle` with next id 900, and `fresh_id` 7.
fn write_old_store(path: &Path, desk: DeviceId, full: DeviceId, idle: DeviceId) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut routes = txn.open_table(ROUTES).unwrap();
        let since_addr = [0u8; 25];
        for (a, b) in [(desk, full), (full, desk), (desk, idle), (idle, desk)] {
            let key: Vec<u8> = a.0.iter().chain(&b.0).copied().collect();
            routes.insert(&key[..], &since_addr[..]).unwrap();
        }
        txn.open_table(PENDING).unwrap();
        let mut queue = txn.open_table(QUEUE).unwrap();
        let far = u64::MAX / 2;
        for (id, body) in [(41u64, &b"one"[..]), (42, b"two")] {
            let key: Vec<u8> = full.0.iter().copied().chain(id.to_be_bytes()).collect();
            let mut v: Vec<u8> = desk.0.to_vec();
            v.extend_from_slice(&far.to_be_bytes());
            v.extend_from_slice(&[0u8; 17]);
            v.extend_from_slice(body);
            queue.insert(&key[..], &v[..]).unwrap();
        }
        let mut meta = txn.open_table(META).unwrap();
        let row = |next: u64, frames: u64, bytes: u64| {
            let mut v = [0u8; 32];
            v[..8].copy_from_slice(&next.to_be_bytes());
            v[8..16].copy_from_slice(&frames.to_be_bytes());
            v[16..24].copy_from_slice(&bytes.to_be_bytes());
            v
        };
        meta.insert(&full.0[..], &row(43, 2, 6)[..]).unwrap();
        meta.insert(&idle.0[..], &row(900, 0, 0)[..]).unwrap();
        let mut settings = txn.open_table(SETTINGS).unwrap();
        settings.insert(&b"fresh_id"[..], &7u64.to_be_bytes()[..]).unwrap();
    }
    txn.commit().unwrap();
}
