//! Review r3: how long the session before a renewal stays in a stored link.
//!
//! `docs/SECURITY.md` §4 says a snapshot can open records "under the session
//! kept as `previous` (until the peer's first record under the new one)", and
//! cannot open "sessions before the last renewal, once the peer's first
//! record under the new one arrived". On the responder, the peer's first
//! record under the new session is the initiator's confirming `Ack`: it
//! promotes `next` and *creates* `previous` = the old session, which then
//! stays until the initiator's second record. An idle initiator (a phone
//! that renewed and went quiet) leaves the old session's keys in the
//! responder's file for up to a whole renewal period.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use tandem_proto::DeviceKey;
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::{Link, LinkEvent};
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PhonePairing};

const NOW: u64 = 1_800_000_000;

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

fn sends(events: Vec<LinkEvent>) -> Vec<Vec<u8>> {
    events
        .into_iter()
        .filter_map(|e| match e {
            LinkEvent::Send(v) => Some(v),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The session id under `previous` in a stored link, if any.
fn stored_previous(link: &Link) -> Option<Vec<u8>> {
    let v = serde_json::to_value(link).unwrap();
    let p = v.get("previous")?;
    if p.is_null() {
        return None;
    }
    serde_json::from_value(p.get("id").unwrap().clone()).ok()
}

#[test]
fn the_responder_erases_the_old_session_when_the_initiators_first_new_record_arrives() {
    let e = &mut Entropy::os();
    let dk = DeviceKey::generate(e).unwrap();
    let pk = DeviceKey::generate(e).unwrap();
    let offer = DesktopPairing::new(dk.clone(), NOW, 120, None, e).unwrap();
    let (phone, hello) = PhonePairing::start(&pk, offer.payload(), &info("phone"), e).unwrap();
    let (w, welcome) = offer.on_hello(&env(&hello), &info("desk"), NOW, e).unwrap();
    let (pw, confirm) = phone.on_welcome(&env(&welcome)).unwrap();
    let (dp, result) = w.on_confirm(&env(&confirm)).unwrap().accept(e).unwrap();
    let pp = pw.on_result(&env(&result)).unwrap();
    // The phone initiates, the desktop responds.
    let mut desk = Link::from_paired(dp, OutboxLimits::default());
    let mut phone = Link::from_paired(pp, OutboxLimits::default());
    let s0 = desk.session_id();

    // Traffic under S0, then a renewal.
    let (_, r) = phone.send(b"hello".to_vec()).unwrap();
    desk.receive(&dk, &r, e).unwrap();
    let init = phone.start_renewal(&pk, NOW * 1000, e).unwrap();
    let accept = sends(desk.receive(&dk, &init, e).unwrap());
    let confirm = sends(phone.receive(&pk, &accept[0], e).unwrap());
    assert_eq!(confirm.len(), 1, "the initiator confirms at once");
    let events = desk.receive(&dk, &confirm[0], e).unwrap();
    assert!(events.iter().any(|e| matches!(e, LinkEvent::SessionRenewed)));
    assert_ne!(desk.session_id(), s0, "promoted");

    // The peer's first record under the new session has arrived: by the
    // docs, a snapshot of the desktop no longer holds S0.
    let held = stored_previous(&desk);
    // Show how long it lasts: only the initiator's next record erases it.
    let (_, r) = phone.send(b"later".to_vec()).unwrap();
    desk.receive(&dk, &r, e).unwrap();
    let after_second = stored_previous(&desk);
    assert_eq!(
        held, None,
        "after the confirming record the responder's stored link still holds the old session \
         {s0:?} as `previous` (erased only by the initiator's second record: {after_second:?})"
    );
}
