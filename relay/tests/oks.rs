//! Cumulative answers (PROTOCOL.md §6.1 levels, §6.5 `Oks`) against a real
//! relay process: a device that says `Hello{1, 2}` has the answers to its
//! accepted `Send`s merged into `Oks` frames, each id covered exactly once,
//! never an id that was refused, never a request that is not a `Send`; a
//! device that says `Hello{1, 1}` keeps one `Ok` per `Send`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Device, Relay, new_key};
use tandem_proto::frame::{Frame, LEVEL};
use tandem_proto::relay_auth::prove;
use tandem_proto::{ErrorCode, Role};

/// Sends per burst: more than the connection's queue (64) and than its
/// store operations in flight (256).
const BURST: u64 = 400;

/// How the relay answered each request id.
#[derive(Debug, Default)]
struct Answers {
    /// Id → how many times an `Oks` covered it.
    by_oks: BTreeMap<u64, u32>,
    /// Id → how many `Ok{ref_id}` it had.
    by_ok: BTreeMap<u64, u32>,
    /// Id → the codes it was refused with.
    by_error: BTreeMap<u64, Vec<ErrorCode>>,
    /// The `Oks` frames, and the ids each covered.
    oks_frames: Vec<u64>,
    ok_frames: usize,
}

impl Answers {
    fn answered(&self) -> BTreeSet<u64> {
        self.by_oks.keys().chain(self.by_ok.keys()).chain(self.by_error.keys()).copied().collect()
    }
}

/// Read `d`'s frames until every id in `ids` has an answer (`Ok`, `Oks` or
/// `Error`), then a moment more, so that a duplicate would show.
async fn answers(d: &mut Device, ids: &BTreeSet<u64>) -> Answers {
    let mut a = Answers::default();
    let note = |a: &mut Answers, f: Frame| match f {
        Frame::Oks { runs } => {
            let mut n = 0;
            for id in runs.iter().flat_map(|r| r.ids()) {
                *a.by_oks.entry(id).or_default() += 1;
                n += 1;
            }
            a.oks_frames.push(n);
        }
        Frame::Ok { ref_id } => {
            *a.by_ok.entry(ref_id).or_default() += 1;
            a.ok_frames += 1;
        }
        Frame::Error { code, ref_id, .. } => a.by_error.entry(ref_id).or_default().push(code),
        _ => {}
    };
    while !ids.is_subset(&a.answered()) {
        match d.recv_within(Duration::from_secs(10)).await {
            Ok(f) => note(&mut a, f),
            Err(e) => panic!("connection ended {e:?}; answers so far {a:?}"),
        }
    }
    let (rest, end) = d.collect_for(Duration::from_millis(300)).await;
    assert_eq!(end, None);
    for f in rest {
        note(&mut a, f);
    }
    a
}

/// A desktop saying `Hello{1, desk_level}` and a level-1 phone, authorised
/// both ways (request ids 1).
async fn pair_at(relay: &Relay, desk_level: u8) -> (Device, Device) {
    let (mut desk, _) = Device::connect_at(relay, new_key(), Role::Desktop, desk_level).await;
    let (mut phone, _) = Device::connect(relay, new_key(), Role::Phone).await;
    // Requests that are not a `Send` keep their `Ok` at every level.
    desk.authorize(phone.id(), 1).await.expect("authorize phone");
    phone.authorize(desk.id(), 1).await.expect("authorize desktop");
    (desk, phone)
}

fn payload(i: u64) -> Vec<u8> {
    format!("burst #{i:05}").into_bytes()
}

#[tokio::test]
async fn a_level_2_burst_is_answered_by_oks_covering_every_id_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = pair_at(&relay, LEVEL).await;
    let ids: BTreeSet<u64> = (100..100 + BURST).collect();
    for &id in &ids {
        desk.send(&Frame::Send { send_id: id, to: phone.id(), payload: payload(id) }).await;
    }
    let a = answers(&mut desk, &ids).await;
    eprintln!("{BURST} sends answered by {} Oks frames: {:?}", a.oks_frames.len(), a.oks_frames);
    assert!(a.by_ok.is_empty() && a.ok_frames == 0, "no per-id Ok at level 2: {:?}", a.by_ok);
    assert!(a.by_error.is_empty(), "{:?}", a.by_error);
    assert_eq!(a.by_oks.keys().copied().collect::<BTreeSet<_>>(), ids, "every id, no other");
    assert!(a.by_oks.values().all(|n| *n == 1), "each id exactly once: {:?}", a.by_oks);
    assert!(
        a.oks_frames.len() < ids.len(),
        "answers waiting together are merged: {} frames for {} sends",
        a.oks_frames.len(),
        ids.len()
    );
    // And the frames themselves went through, in order.
    let got = phone.deliveries(ids.len()).await;
    let bodies: Vec<_> = got.into_iter().map(|(_, _, p)| p).collect();
    assert_eq!(bodies, ids.iter().map(|&i| payload(i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_level_1_burst_keeps_one_ok_per_send() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = pair_at(&relay, 1).await;
    let ids: BTreeSet<u64> = (100..100 + BURST).collect();
    for &id in &ids {
        desk.send(&Frame::Send { send_id: id, to: phone.id(), payload: payload(id) }).await;
    }
    let a = answers(&mut desk, &ids).await;
    assert!(a.oks_frames.is_empty(), "no Oks below level 2: {:?}", a.oks_frames);
    assert_eq!(a.ok_frames, ids.len());
    assert_eq!(a.by_ok.keys().copied().collect::<BTreeSet<_>>(), ids);
    assert!(a.by_ok.values().all(|n| *n == 1));
    assert_eq!(phone.deliveries(ids.len()).await.len(), ids.len());
}

#[tokio::test]
async fn runs_never_cover_a_refused_send() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, phone) = pair_at(&relay, LEVEL).await;
    let stranger = new_key().public().device_id();
    // Odd ids to the phone (accepted), even ids to a device with no route
    // (refused, `not_authorized`).
    let ids: BTreeSet<u64> = (2..2 + 200).collect();
    for &id in &ids {
        let to = if id % 2 == 1 { phone.id() } else { stranger };
        desk.send(&Frame::Send { send_id: id, to, payload: payload(id) }).await;
    }
    let a = answers(&mut desk, &ids).await;
    let odd: BTreeSet<u64> = ids.iter().copied().filter(|i| i % 2 == 1).collect();
    let even: BTreeSet<u64> = ids.iter().copied().filter(|i| i % 2 == 0).collect();
    assert_eq!(a.by_oks.keys().copied().collect::<BTreeSet<_>>(), odd);
    assert!(a.by_oks.values().all(|n| *n == 1));
    assert_eq!(a.by_error.keys().copied().collect::<BTreeSet<_>>(), even);
    assert!(a.by_error.values().all(|c| *c == [ErrorCode::NotAuthorized]), "{:?}", a.by_error);
    assert!(a.by_ok.is_empty());
}

#[tokio::test]
async fn hello_ranges_name_levels() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    // A device that speaks only levels 2 and 3 meets this relay at 3 (Oks from level 2 on).
    let mut desk = Device::raw(&relay, Role::Desktop).await;
    desk.send(&Frame::Hello { min_version: 2, max_version: 3, role: Role::Desktop }).await;
    let challenge = desk.recv().await;
    let auth = prove(&desk.key, Role::Desktop, &relay.addr, &challenge).unwrap();
    desk.send(&auth).await;
    assert!(matches!(desk.recv().await, Frame::AuthOk { .. }));
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    desk.authorize(phone.id(), 1).await.unwrap();
    phone.authorize(desk.id(), 1).await.unwrap();
    desk.send(&Frame::Send { send_id: 2, to: phone.id(), payload: payload(2) }).await;
    let a = answers(&mut desk, &BTreeSet::from([2])).await;
    assert_eq!(a.by_oks.get(&2), Some(&1), "{a:?}");
    // One that speaks only levels above the relay's is refused.
    let mut d = Device::raw(&relay, Role::Phone).await;
    d.send(&Frame::Hello { min_version: LEVEL + 1, max_version: LEVEL + 2, role: Role::Phone })
        .await;
    let (end, _) = d.until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, common::close_code(ErrorCode::UnsupportedVersion));
}
