//! Paired links end to end at the protocol level: exactly-once in-order
//! delivery across loss, duplication, reconnects and restarts (state
//! serialised and restored); offline delivery; session renewal, collisions
//! and lost handshakes; replayed and tampered records change nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::VecDeque;

use tandem_proto::DeviceKey;
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::{Link, LinkError, LinkEvent};
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PhonePairing};
use tandem_proto::record::RecordError;
use tandem_proto::session::SessionError;

const NOW: u64 = 1_800_000_000;

struct Peer {
    key: DeviceKey,
    link: Link,
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

fn pair(limits: OutboxLimits, e: &mut Entropy) -> (Peer, Peer) {
    let dk = DeviceKey::generate(e).unwrap();
    let pk = DeviceKey::generate(e).unwrap();
    let offer = DesktopPairing::new(dk.clone(), NOW, 120, None, e).unwrap();
    let (phone, hello) = PhonePairing::start(&pk, offer.payload(), &info("phone"), e).unwrap();
    let (w, welcome) = offer.on_hello(&env(&hello), &info("desk"), NOW, e).unwrap();
    let (pw, confirm) = phone.on_welcome(&env(&welcome)).unwrap();
    let (dp, result) = w.on_confirm(&env(&confirm)).unwrap().accept(e).unwrap();
    let pp = pw.on_result(&env(&result)).unwrap();
    (
        Peer { key: dk, link: Link::from_paired(dp, limits) },
        Peer { key: pk, link: Link::from_paired(pp, limits) },
    )
}

/// Simulate a crash and restart: the link is rebuilt from its persisted form.
fn restart(p: &mut Peer) {
    let saved = serde_json::to_vec(&p.link).unwrap();
    p.link = serde_json::from_slice(&saved).unwrap();
}

fn snapshot(l: &Link) -> String {
    serde_json::to_string(l).unwrap()
}

/// What one delivery produced: application messages, envelopes to send back, resyncs.
type Delivered = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<(u64, u64)>);

/// Deliver one envelope; returns application messages and envelopes to send back.
fn deliver(to: &mut Peer, bytes: &[u8], e: &mut Entropy) -> Delivered {
    let mut msgs = Vec::new();
    let mut replies = Vec::new();
    let mut resyncs = Vec::new();
    if let Ok(events) = to.link.receive(&to.key, bytes, e) {
        for ev in events {
            match ev {
                LinkEvent::Message { message, .. } => msgs.push(message),
                LinkEvent::Send(v) => replies.extend(v),
                LinkEvent::ResyncNeeded { from, to } => resyncs.push((from, to)),
                LinkEvent::SessionRenewed | LinkEvent::AckDue => {}
            }
        }
    }
    (msgs, replies, resyncs)
}

#[test]
fn every_message_arrives_once_in_order_across_loss_duplicates_and_restarts() {
    let mut e = Entropy::deterministic([9; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let n = 200u32;
    let mut to_phone: VecDeque<Vec<u8>> = VecDeque::new();
    let mut to_desk: VecDeque<Vec<u8>> = VecDeque::new();
    for i in 0..n {
        let (_, rec) = desk.link.send(format!("event {i}").into_bytes()).unwrap();
        to_phone.push_back(rec);
    }
    let mut got = Vec::new();
    let mut step = 0u64;
    while got.len() < n as usize {
        step += 1;
        assert!(step < 20_000, "no progress");
        // A deterministic pseudo-random schedule of faults.
        let r = tandem_proto::kdf::hash("schedule", &[&step.to_be_bytes()]);
        match (r[0] % 10, to_phone.pop_front()) {
            (0, Some(_)) => {} // lost in the network
            (1, Some(rec)) => {
                // duplicated by a relay redelivery
                to_phone.push_back(rec.clone());
                to_phone.push_front(rec);
            }
            (2, _) => restart(&mut phone), // phone app killed and restarted
            (3, _) => restart(&mut desk),  // agent killed and restarted
            (_, Some(rec)) => {
                let (msgs, replies, resyncs) = deliver(&mut phone, &rec, &mut e);
                assert!(resyncs.is_empty());
                got.extend(msgs);
                to_desk.extend(replies);
                if r[1].is_multiple_of(4) {
                    to_desk.push_back(phone.link.ack().unwrap());
                }
            }
            (_, None) => {
                // Reconnect: the desktop resends everything unacknowledged.
                to_phone.extend(desk.link.resend(0).unwrap());
            }
        }
        while let Some(b) = to_desk.pop_front() {
            let (_, replies, _) = deliver(&mut desk, &b, &mut e);
            to_phone.extend(replies);
        }
    }
    let expect: Vec<Vec<u8>> = (0..n).map(|i| format!("event {i}").into_bytes()).collect();
    assert_eq!(got, expect);
    // Acks flow back: the outbox drains.
    to_desk.push_back(phone.link.ack().unwrap());
    while let Some(b) = to_desk.pop_front() {
        deliver(&mut desk, &b, &mut e);
    }
    assert!(desk.link.outbound().is_empty());
}

#[test]
fn messages_sent_while_the_peer_is_offline_arrive_when_it_returns() {
    let mut e = Entropy::deterministic([1; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    // The phone is offline: the relay queues; the desktop restarts meanwhile.
    let mut queue: Vec<Vec<u8>> = (0..5).map(|i| desk.link.send(vec![i]).unwrap().1).collect();
    restart(&mut desk);
    queue.push(desk.link.send(vec![5]).unwrap().1);
    desk.link.rekey_now(); // an hour passes: the sending key ratchets
    queue.push(desk.link.send(vec![6]).unwrap().1);
    restart(&mut phone);
    let got: Vec<Vec<u8>> = queue.iter().flat_map(|q| deliver(&mut phone, q, &mut e).0).collect();
    assert_eq!(got, (0..7).map(|i| vec![i]).collect::<Vec<_>>());
}

/// Every queued message in a serialised link's outbox, rewritten by `f`.
fn outbox_messages(
    link: &mut serde_json::Value,
    f: impl Fn(&serde_json::Value) -> serde_json::Value,
) {
    for p in link["outbound"]["unacked"].as_array_mut().unwrap() {
        p["message"] = f(&p["message"]);
    }
}

#[test]
fn a_stored_outbox_is_base64_and_the_old_number_arrays_still_load() {
    let mut e = Entropy::deterministic([3; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let message = b"{\"v\":1,\"kind\":\"cancel\",\"task_id\":\"t-1\"}".to_vec();
    desk.link.send(message.clone()).unwrap();
    let mut stored: serde_json::Value = serde_json::from_str(&snapshot(&desk.link)).unwrap();
    let encoded = data_encoding::BASE64.encode(&message);
    assert_eq!(stored["outbound"]["unacked"][0]["message"], encoded.as_str());
    // A link stored before: the message as an array of byte values.
    outbox_messages(&mut stored, |m| {
        data_encoding::BASE64
            .decode(m.as_str().unwrap().as_bytes())
            .unwrap()
            .into_iter()
            .map(serde_json::Value::from)
            .collect()
    });
    desk.link = serde_json::from_value(stored).unwrap();
    let resent = desk.link.resend(0).unwrap();
    let got: Vec<Vec<u8>> = resent.iter().flat_map(|r| deliver(&mut phone, r, &mut e).0).collect();
    assert_eq!(got, vec![message]);
    // Written back as base64.
    let again: serde_json::Value = serde_json::from_str(&snapshot(&desk.link)).unwrap();
    assert_eq!(again["outbound"]["unacked"][0]["message"], encoded.as_str());
}

#[test]
fn replayed_and_tampered_records_change_nothing() {
    let mut e = Entropy::deterministic([2; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let (_, rec) = desk.link.send(b"run the tests".to_vec()).unwrap();
    assert_eq!(deliver(&mut phone, &rec, &mut e).0, vec![b"run the tests".to_vec()]);
    let before = snapshot(&phone.link);
    // Replay.
    assert!(matches!(
        phone.link.receive(&phone.key, &rec, &mut e),
        Err(LinkError::Record(RecordError::Replay(_)))
    ));
    assert_eq!(snapshot(&phone.link), before);
    // Tamper with every byte of a fresh record.
    let (_, rec2) = desk.link.send(b"second".to_vec()).unwrap();
    for i in 0..rec2.len() {
        let mut t = rec2.clone();
        t[i] ^= 0x04;
        assert!(phone.link.receive(&phone.key, &t, &mut e).is_err(), "byte {i}");
        assert_eq!(snapshot(&phone.link), before, "byte {i} changed state");
    }
    // Truncation.
    assert!(phone.link.receive(&phone.key, &rec2[..rec2.len() - 1], &mut e).is_err());
    assert_eq!(snapshot(&phone.link), before);
    // The genuine record still goes through afterwards.
    assert_eq!(deliver(&mut phone, &rec2, &mut e).0, vec![b"second".to_vec()]);
}

#[test]
fn a_record_from_another_pairing_is_refused() {
    let mut e = Entropy::deterministic([3; 32]);
    let (mut desk, _) = pair(OutboxLimits::default(), &mut e);
    let (_, mut other_phone) = pair(OutboxLimits::default(), &mut e);
    let (_, rec) = desk.link.send(b"x".to_vec()).unwrap();
    assert!(matches!(
        other_phone.link.receive(&other_phone.key, &rec, &mut e),
        Err(LinkError::Record(RecordError::WrongSession))
    ));
}

#[test]
fn renewal_switches_both_sides_and_in_flight_records_still_open() {
    let mut e = Entropy::deterministic([4; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let old_id = desk.link.session_id();
    let (_, in_flight) = desk.link.send(b"sent under the old session".to_vec()).unwrap();
    let init = phone.link.start_renewal(&phone.key, 1_000, &mut e).unwrap();
    let (_, accept, _) = deliver(&mut desk, &init, &mut e);
    // The responder keeps its current session until the initiator confirms.
    assert_eq!(desk.link.session_id(), old_id);
    let (_, confirm, _) = deliver(&mut phone, &accept[0], &mut e);
    assert_ne!(phone.link.session_id(), old_id);
    deliver(&mut desk, &confirm[0], &mut e);
    assert_eq!(desk.link.session_id(), phone.link.session_id());
    // The old session's record, delivered late, still opens.
    assert_eq!(
        deliver(&mut phone, &in_flight, &mut e).0,
        vec![b"sent under the old session".to_vec()]
    );
    // New traffic flows under the new session both ways.
    let (_, r) = desk.link.send(b"new".to_vec()).unwrap();
    assert_eq!(env(&r).clone(), env(&r));
    assert_eq!(deliver(&mut phone, &r, &mut e).0, vec![b"new".to_vec()]);
    let (_, r) = phone.link.send(b"reply".to_vec()).unwrap();
    assert_eq!(deliver(&mut desk, &r, &mut e).0, vec![b"reply".to_vec()]);
    // A replayed init (the relay re-queues it) is stale.
    assert!(matches!(
        desk.link.receive(&desk.key, &init, &mut e),
        Err(LinkError::Session(SessionError::Stale { .. }))
    ));
}

#[test]
fn simultaneous_renewals_resolve_to_one_session() {
    let mut e = Entropy::deterministic([5; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let from_desk = desk.link.start_renewal(&desk.key, 10, &mut e).unwrap();
    let from_phone = phone.link.start_renewal(&phone.key, 10, &mut e).unwrap();
    let (_, a, _) = deliver(&mut desk, &from_phone, &mut e);
    let (_, b, _) = deliver(&mut phone, &from_desk, &mut e);
    // Exactly one side answered.
    assert_eq!(a.len() + b.len(), 1);
    let mut wire: Vec<(bool, Vec<u8>)> =
        a.into_iter().map(|x| (false, x)).chain(b.into_iter().map(|x| (true, x))).collect();
    while let Some((to_desk, bytes)) = wire.pop() {
        let target = if to_desk { &mut desk } else { &mut phone };
        let (_, replies, _) = deliver(target, &bytes, &mut e);
        wire.extend(replies.into_iter().map(|r| (!to_desk, r)));
    }
    assert_eq!(desk.link.session_id(), phone.link.session_id());
    let (_, r) = desk.link.send(b"ok".to_vec()).unwrap();
    assert_eq!(deliver(&mut phone, &r, &mut e).0, vec![b"ok".to_vec()]);
}

#[test]
fn a_renewal_lost_to_a_restart_strands_nothing() {
    let mut e = Entropy::deterministic([6; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let init = phone.link.start_renewal(&phone.key, 10, &mut e).unwrap();
    let (_, accept, _) = deliver(&mut desk, &init, &mut e);
    restart(&mut phone); // the in-progress handshake is not persisted
    assert!(matches!(
        phone.link.receive(&phone.key, &accept[0], &mut e),
        Err(LinkError::NoHandshakeInProgress)
    ));
    // Both still share the current session.
    let (_, r) = desk.link.send(b"still here".to_vec()).unwrap();
    assert_eq!(deliver(&mut phone, &r, &mut e).0, vec![b"still here".to_vec()]);
    let (_, r) = phone.link.send(b"me too".to_vec()).unwrap();
    assert_eq!(deliver(&mut desk, &r, &mut e).0, vec![b"me too".to_vec()]);
}

#[test]
fn an_overflowed_outbox_is_reported_as_resync_never_a_silent_gap() {
    let mut e = Entropy::deterministic([7; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits { max_messages: 3, max_bytes: 1 << 20 }, &mut e);
    for i in 0..10u8 {
        let _lost = desk.link.send(vec![i]).unwrap();
    }
    // The phone was away; only what the desktop still holds is resent.
    let resent = desk.link.resend(0).unwrap();
    assert_eq!(resent.len(), 3);
    let (msgs, _, resyncs) = deliver(&mut phone, &resent[0], &mut e);
    assert_eq!(resyncs, vec![(1, 7)]);
    assert_eq!(msgs, vec![vec![7]]);
    let rest: Vec<Vec<u8>> =
        resent[1..].iter().flat_map(|r| deliver(&mut phone, r, &mut e).0).collect();
    assert_eq!(rest, vec![vec![8], vec![9]]);
}

#[test]
fn a_gap_is_answered_with_a_nack_and_filled_by_a_resend() {
    let mut e = Entropy::deterministic([8; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let (_, r1) = desk.link.send(b"1".to_vec()).unwrap();
    let (_, r2) = desk.link.send(b"2".to_vec()).unwrap();
    drop(r1); // lost
    let (msgs, nack, _) = deliver(&mut phone, &r2, &mut e);
    assert!(msgs.is_empty());
    assert_eq!(nack.len(), 1);
    let (_, resend, _) = deliver(&mut desk, &nack[0], &mut e);
    assert_eq!(resend.len(), 2);
    let got: Vec<Vec<u8>> = resend.iter().flat_map(|r| deliver(&mut phone, r, &mut e).0).collect();
    assert_eq!(got, vec![b"1".to_vec(), b"2".to_vec()]);
}

#[test]
fn a_clock_that_goes_back_does_not_block_renewal() {
    let mut e = Entropy::deterministic([10; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    for now in [5_000, 1_000] {
        let init = phone.link.start_renewal(&phone.key, now, &mut e).unwrap();
        let (_, accept, _) = deliver(&mut desk, &init, &mut e);
        assert_eq!(accept.len(), 1, "renewal at clock {now} was refused");
        let (_, confirm, _) = deliver(&mut phone, &accept[0], &mut e);
        let events = desk.link.receive(&desk.key, &confirm[0], &mut e).unwrap();
        assert!(events.contains(&LinkEvent::SessionRenewed));
        assert_eq!(desk.link.session_id(), phone.link.session_id());
    }
}

#[test]
fn oversized_messages_are_refused_and_not_queued() {
    let mut e = Entropy::deterministic([11; 32]);
    let (mut desk, _) = pair(OutboxLimits::default(), &mut e);
    let too_big = vec![b'x'; tandem_proto::message::MAX_MESSAGE_LEN + 1];
    assert!(matches!(desk.link.send(too_big), Err(RecordError::PlaintextTooLarge(_))));
    assert!(desk.link.outbound().is_empty());
}

#[test]
fn delivered_and_duplicate_data_ask_for_an_ack() {
    let mut e = Entropy::deterministic([12; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let (_, r) = desk.link.send(b"m".to_vec()).unwrap();
    let events = phone.link.receive(&phone.key, &r, &mut e).unwrap();
    assert!(events.contains(&LinkEvent::AckDue));
    // The same message resent under a new counter is a duplicate: ack again.
    let again = desk.link.resend(0).unwrap();
    let events = phone.link.receive(&phone.key, &again[0], &mut e).unwrap();
    assert_eq!(events, vec![LinkEvent::AckDue]);
    let ack = phone.link.ack().unwrap();
    desk.link.receive(&desk.key, &ack, &mut e).unwrap();
    assert!(desk.link.outbound().is_empty());
}

#[test]
fn a_session_init_delivered_twice_gets_the_same_answer() {
    let mut e = Entropy::deterministic([13; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let init = phone.link.start_renewal(&phone.key, 1_000, &mut e).unwrap();
    let (_, accept, _) = deliver(&mut desk, &init, &mut e);
    // The relay redelivers the init before the initiator's confirm arrives
    // (or the responder restarted before its answer left): the same answer
    // goes out again, and the pending session is not replaced.
    restart(&mut desk);
    let (_, again, _) = deliver(&mut desk, &init, &mut e);
    assert_eq!(again, accept, "a redelivered init must get the same accept");
    // The first accept lost: the repeated one completes the renewal.
    let (_, confirm, _) = deliver(&mut phone, &again[0], &mut e);
    // The other copy then finds no handshake in progress: refused, harmless.
    assert!(matches!(
        phone.link.receive(&phone.key, &accept[0], &mut e),
        Err(LinkError::NoHandshakeInProgress)
    ));
    deliver(&mut desk, &confirm[0], &mut e);
    assert_eq!(desk.link.session_id(), phone.link.session_id());
    let (_, r) = phone.link.send(b"after".to_vec()).unwrap();
    assert_eq!(deliver(&mut desk, &r, &mut e).0, vec![b"after".to_vec()]);
}

#[test]
fn the_responder_erases_the_old_session_when_it_promotes_the_new_one() {
    let mut e = Entropy::deterministic([14; 32]);
    let (mut desk, mut phone) = pair(OutboxLimits::default(), &mut e);
    let old = desk.link.session_id();
    let (_, r) = phone.link.send(b"hello".to_vec()).unwrap();
    deliver(&mut desk, &r, &mut e);
    // The phone initiates, the desktop responds; the phone's confirming Ack
    // promotes the new session on the desktop.
    let init = phone.link.start_renewal(&phone.key, 1_000, &mut e).unwrap();
    let (_, accept, _) = deliver(&mut desk, &init, &mut e);
    let (_, confirm, _) = deliver(&mut phone, &accept[0], &mut e);
    deliver(&mut desk, &confirm[0], &mut e);
    assert_ne!(desk.link.session_id(), old);
    // From then on a copy of the desktop's link holds no key of the old
    // session, even if the phone says nothing more.
    let stored = serde_json::to_value(&desk.link).unwrap();
    assert!(stored["previous"].is_null(), "the old session is still kept: {}", stored["previous"]);
    let id: Vec<u8> = old.to_vec();
    assert!(!snapshot(&desk.link).contains(&serde_json::to_string(&id).unwrap()));
}
