//! The renewal and rekey schedule (`Link::upkeep`, PROTOCOL §10.6) over
//! simulated hours: two paired links, a relay that keeps each sender's
//! order, traffic both ways, the phone dropping off and coming back, both
//! sides restarting from their persisted state. Sessions renew on schedule,
//! the sending epoch advances, nothing is lost or repeated, and a copy of a
//! link taken on one side of a renewal cannot open the other side's records.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeSet, VecDeque};

use tandem_proto::DeviceKey;
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::{Link, LinkError, LinkEvent};
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PhonePairing};
use tandem_proto::record::RecordError;
use tandem_proto::upkeep::Schedule;

const NOW: u64 = 1_800_000_000;
const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
/// Seconds simulated.
const STEPS: u64 = 2 * 3_600 + 300;

struct Side {
    key: DeviceKey,
    link: Link,
    /// This side's clock runs `skew` ahead of the simulation's.
    skew: u64,
    got: Vec<Vec<u8>>,
    sent: u64,
    renewals_started: u64,
    renewed: u64,
    epochs: BTreeSet<u64>,
}

fn info(n: &str) -> DeviceInfo {
    DeviceInfo {
        name: n.into(),
        platform: "linux".into(),
        app_version: "0".into(),
        ephemeral: false,
    }
}

fn env(b: &[u8]) -> Envelope {
    Envelope::decode(b).unwrap()
}

fn pair(e: &mut Entropy) -> (Side, Side) {
    let dk = DeviceKey::generate(e).unwrap();
    let pk = DeviceKey::generate(e).unwrap();
    let offer = DesktopPairing::new(dk.clone(), NOW, 120, None, e).unwrap();
    let (phone, hello) = PhonePairing::start(&pk, offer.payload(), &info("phone"), e).unwrap();
    let (w, welcome) = offer.on_hello(&env(&hello), &info("desk"), NOW, e).unwrap();
    let (pw, confirm) = phone.on_welcome(&env(&welcome)).unwrap();
    let (dp, result) = w.on_confirm(&env(&confirm)).unwrap().accept(e).unwrap();
    let pp = pw.on_result(&env(&result)).unwrap();
    let side = |key, link, skew| Side {
        key,
        link,
        skew,
        got: Vec::new(),
        sent: 0,
        renewals_started: 0,
        renewed: 0,
        epochs: BTreeSet::new(),
    };
    (
        side(dk, Link::from_paired(dp, OutboxLimits::default()), 0),
        side(pk, Link::from_paired(pp, OutboxLimits::default()), 5 * MINUTE),
    )
}

/// A kill -9 and restart: the link comes back from its persisted form (the
/// caller persisted after every operation, before sending anything).
fn restart(s: &mut Side) {
    let saved = serde_json::to_vec(&s.link).unwrap();
    s.link = serde_json::from_slice(&saved).unwrap();
}

/// Deliver one envelope; replies go to `back`.
fn deliver(to: &mut Side, bytes: &[u8], back: &mut VecDeque<Vec<u8>>, e: &mut Entropy) {
    let Ok(events) = to.link.receive(&to.key, bytes, e) else { return };
    let mut ack_due = false;
    for ev in events {
        match ev {
            LinkEvent::Message { message, .. } => to.got.push(message),
            LinkEvent::Send(v) => back.extend(v),
            LinkEvent::ResyncNeeded { from, to } => panic!("lost {from}..={to}"),
            LinkEvent::AckDue => ack_due = true,
            LinkEvent::SessionRenewed => to.renewed += 1,
        }
    }
    if ack_due {
        back.push_back(to.link.ack().unwrap());
    }
}

fn send(from: &mut Side, text: String, wire: &mut VecDeque<Vec<u8>>, log: &mut Vec<Captured>) {
    let (_, record) = from.link.send(text.into_bytes()).unwrap();
    from.sent += 1;
    log.push(Captured { session: from.link.session_id(), record: record.clone() });
    wire.push_back(record);
}

/// A record as a recording of the relay's traffic holds it.
struct Captured {
    session: [u8; 8],
    record: Vec<u8>,
}

fn tick(
    side: &mut Side,
    now: u64,
    online: bool,
    schedule: &Schedule,
    e: &mut Entropy,
) -> Option<Vec<u8>> {
    let done = side.link.upkeep(&side.key, now + side.skew, online, schedule, e).unwrap();
    side.epochs.insert(side.link.send_epoch());
    if done.renewal.is_some() {
        assert!(online, "a renewal started while the peer was offline");
        side.renewals_started += 1;
    }
    done.renewal
}

struct Run {
    desk: Side,
    phone: Side,
    /// Records the desktop sealed, as the relay saw them.
    desk_records: Vec<Captured>,
    /// The phone's link at 10 minutes (before any renewal), and the desktop
    /// sessions it knew.
    early_phone: String,
    /// Session ids the desktop used, in order.
    desk_sessions: Vec<[u8; 8]>,
}

/// Two simulated hours and five minutes, one step per second.
fn run(schedule: &Schedule, seed: u8) -> Run {
    let mut e = Entropy::deterministic([seed; 32]);
    let (mut desk, mut phone) = pair(&mut e);
    let mut to_phone: VecDeque<Vec<u8>> = VecDeque::new();
    let mut to_desk: VecDeque<Vec<u8>> = VecDeque::new();
    let mut desk_records = Vec::new();
    let mut phone_records = Vec::new();
    let mut early_phone = String::new();
    let mut desk_sessions = vec![desk.link.session_id()];
    let start = NOW * 1_000;
    for s in 0..STEPS {
        let now = start + s * SECOND;
        // The phone is away for 3 minutes every 25 (sleep, a tunnel).
        let phone_online = !(s % 1_500 >= 1_200 && s % 1_500 < 1_380);
        let came_back = s % 1_500 == 1_380;
        // A task streams an event every 10 s; the phone asks every 90 s.
        if s % 10 == 0 {
            send(&mut desk, format!("event {s}"), &mut to_phone, &mut desk_records);
        }
        if s % 90 == 0 && phone_online {
            send(&mut phone, format!("request {s}"), &mut to_desk, &mut phone_records);
        }
        // Each side restarts now and then (kill -9, update, crash).
        if s % 1_777 == 1_000 {
            restart(&mut desk);
        }
        if s % 2_333 == 2_000 {
            restart(&mut phone);
        }
        if came_back {
            to_desk.extend(phone.link.resend(0).unwrap());
            to_phone.extend(desk.link.resend(0).unwrap());
        }
        if let Some(init) = tick(&mut desk, now, phone_online, schedule, &mut e) {
            to_phone.push_back(init);
        }
        if let Some(init) = tick(&mut phone, now, phone_online, schedule, &mut e) {
            to_desk.push_back(init);
        }
        if s == 600 {
            early_phone = serde_json::to_string(&phone.link).unwrap();
        }
        // The relay: the desktop is always reachable, the phone when online.
        while let Some(b) = to_desk.pop_front() {
            deliver(&mut desk, &b, &mut to_phone, &mut e);
        }
        while phone_online && let Some(b) = to_phone.pop_front() {
            deliver(&mut phone, &b, &mut to_desk, &mut e);
            while let Some(b) = to_desk.pop_front() {
                deliver(&mut desk, &b, &mut to_phone, &mut e);
            }
        }
        if desk_sessions.last() != Some(&desk.link.session_id()) {
            desk_sessions.push(desk.link.session_id());
        }
    }
    // Everything left is delivered once the phone is back.
    for _ in 0..4 {
        to_phone.extend(desk.link.resend(0).unwrap());
        while let Some(b) = to_phone.pop_front() {
            deliver(&mut phone, &b, &mut to_desk, &mut e);
            while let Some(b) = to_desk.pop_front() {
                deliver(&mut desk, &b, &mut to_phone, &mut e);
            }
        }
    }
    let expect: Vec<Vec<u8>> =
        (0..STEPS).step_by(10).map(|s| format!("event {s}").into_bytes()).collect();
    assert_eq!(phone.got, expect, "every event once, in order");
    assert_eq!(desk.got.len() as u64, phone.sent, "every request once");
    Run { desk, phone, desk_records, early_phone, desk_sessions }
}

#[test]
fn two_hours_with_the_default_schedule_renew_twice_and_rekey() {
    let r = run(&Schedule::default(), 21);
    // Renewed at about one hour and about two hours (the desktop's clock is
    // behind, so the phone starts; a restart can lose one, the next tick
    // starts another).
    assert!(r.desk_sessions.len() >= 3, "sessions: {}", r.desk_sessions.len());
    assert!(r.phone.renewals_started + r.desk.renewals_started >= 1);
    assert!(r.phone.renewed >= 1 && r.desk.renewed >= 1);
    // Hourly rekeying moved the pairing session's sending key before the
    // renewal.
    assert!(r.desk.epochs.len() > 1, "epochs seen: {:?}", r.desk.epochs);
}

#[test]
fn sessions_renew_and_epochs_advance_on_a_short_schedule() {
    let schedule = Schedule {
        renew_after_ms: 20 * MINUTE,
        renew_after_records: 1_000_000,
        rekey_after_ms: 5 * MINUTE,
        renewal_timeout_ms: 30 * SECOND,
    };
    let r = run(&schedule, 22);
    // Two hours of 20-minute sessions: about six, whatever the absences.
    assert!(r.desk_sessions.len() >= 5, "sessions: {}", r.desk_sessions.len());
    // Four rekeys in each session: epochs 0..=3 at least.
    assert!(r.desk.epochs.iter().any(|&e| e >= 3), "epochs seen: {:?}", r.desk.epochs);
    assert!(r.phone.epochs.iter().any(|&e| e >= 3), "epochs seen: {:?}", r.phone.epochs);
}

#[test]
fn a_snapshot_on_one_side_of_a_renewal_cannot_open_the_other_sides_records() {
    let schedule = Schedule { renew_after_ms: 20 * MINUTE, ..Schedule::default() };
    let r = run(&schedule, 23);
    let first = r.desk_sessions[0];
    assert!(r.desk_sessions.len() >= 3);
    // Before: the phone's link at 10 minutes opens nothing the desktop
    // sealed under a later session.
    let mut later = 0;
    for c in r.desk_records.iter().filter(|c| c.session != first) {
        let mut early: Link = serde_json::from_str(&r.early_phone).unwrap();
        let got = early.receive(&r.phone.key, &c.record, &mut Entropy::deterministic([1; 32]));
        assert!(
            matches!(got, Err(LinkError::Record(RecordError::WrongSession))),
            "an early snapshot opened a later record: {got:?}"
        );
        later += 1;
    }
    assert!(later > 100);
    // After: the phone's link at the end holds none of the desktop's earlier
    // sessions, so no record sealed under them opens, whatever its replay
    // window says.
    let now: String = serde_json::to_string(&r.phone.link).unwrap();
    let last = *r.desk_sessions.last().unwrap();
    let mut earlier = 0;
    for c in r.desk_records.iter().filter(|c| c.session != last) {
        let mut late: Link = serde_json::from_str(&now).unwrap();
        let got = late.receive(&r.phone.key, &c.record, &mut Entropy::deterministic([1; 32]));
        assert!(
            matches!(got, Err(LinkError::Record(RecordError::WrongSession))),
            "a late snapshot opened an earlier record: {got:?}"
        );
        earlier += 1;
    }
    assert!(earlier > 100);
    for old in &r.desk_sessions[..r.desk_sessions.len() - 1] {
        let hex: String = old.iter().map(|b| format!("{b}")).collect::<Vec<_>>().join(",");
        assert!(!now.contains(&hex), "an old session is still in the phone's state");
    }
}

#[test]
fn no_renewal_while_the_peer_is_offline_and_a_silent_peer_is_given_up_on() {
    let mut e = Entropy::deterministic([24; 32]);
    let (mut desk, phone) = pair(&mut e);
    let schedule = Schedule::default();
    let t0 = NOW * 1_000;
    assert!(desk.link.upkeep(&desk.key, t0, false, &schedule, &mut e).unwrap().changed);
    // An hour later, the peer offline: no renewal.
    let later = t0 + HOUR;
    assert!(
        desk.link.upkeep(&desk.key, later, false, &schedule, &mut e).unwrap().renewal.is_none()
    );
    // Online: one renewal, then nothing while it is pending.
    let first = desk.link.upkeep(&desk.key, later + 1, true, &schedule, &mut e).unwrap();
    assert!(first.renewal.is_some() && first.must_persist());
    assert!(desk.link.renewal_pending());
    let again = desk.link.upkeep(&desk.key, later + 10 * SECOND, true, &schedule, &mut e).unwrap();
    assert!(again.renewal.is_none());
    // No answer within the timeout: abandoned, and another starts.
    let t = later + 1 + schedule.renewal_timeout_ms;
    let retry = desk.link.upkeep(&desk.key, t, true, &schedule, &mut e).unwrap();
    assert!(retry.abandoned);
    assert!(retry.renewal.is_some(), "a new renewal after the abandoned one");
    drop(phone);
}

#[test]
fn many_records_renew_a_young_session() {
    let mut e = Entropy::deterministic([25; 32]);
    let (mut desk, mut phone) = pair(&mut e);
    let schedule = Schedule { renew_after_records: 100, ..Schedule::default() };
    let t0 = NOW * 1_000;
    desk.link.upkeep(&desk.key, t0, true, &schedule, &mut e).unwrap();
    let mut wire = VecDeque::new();
    for i in 0..60 {
        let (_, r) = desk.link.send(format!("m{i}").into_bytes()).unwrap();
        deliver(&mut phone, &r, &mut wire, &mut e);
    }
    assert!(
        desk.link.upkeep(&desk.key, t0 + 1, true, &schedule, &mut e).unwrap().renewal.is_none()
    );
    // The phone's acks count too.
    while let Some(b) = wire.pop_front() {
        deliver(&mut desk, &b, &mut VecDeque::new(), &mut e);
    }
    assert_eq!(desk.link.session_age(t0 + 1).1, 120);
    assert!(
        desk.link.upkeep(&desk.key, t0 + 2, true, &schedule, &mut e).unwrap().renewal.is_some()
    );
}

#[test]
fn the_schedule_survives_a_restart_and_a_clock_that_goes_back() {
    let mut e = Entropy::deterministic([26; 32]);
    let (mut desk, _phone) = pair(&mut e);
    let schedule = Schedule::default();
    let t0 = NOW * 1_000;
    desk.link.upkeep(&desk.key, t0, true, &schedule, &mut e).unwrap();
    restart(&mut desk);
    assert_eq!(desk.link.session_age(t0 + 40 * MINUTE).0, 40 * MINUTE);
    // Restarted 59 minutes in: not yet due; due at the hour.
    assert!(
        desk.link
            .upkeep(&desk.key, t0 + 59 * MINUTE, true, &schedule, &mut e)
            .unwrap()
            .renewal
            .is_none()
    );
    restart(&mut desk);
    assert!(
        desk.link.upkeep(&desk.key, t0 + HOUR, true, &schedule, &mut e).unwrap().renewal.is_some()
    );
    // A clock set back a day restarts the clock instead of waiting a day.
    let (mut desk, _phone) = pair(&mut e);
    desk.link.upkeep(&desk.key, t0, true, &schedule, &mut e).unwrap();
    let back = t0 - 24 * HOUR;
    assert!(desk.link.upkeep(&desk.key, back, true, &schedule, &mut e).unwrap().changed);
    assert!(
        desk.link
            .upkeep(&desk.key, back + HOUR, true, &schedule, &mut e)
            .unwrap()
            .renewal
            .is_some()
    );
}
