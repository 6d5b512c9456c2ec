//! The pairing rendezvous (PROTOCOL.md §6.9) against a real relay process:
//! a real `IKpsk2` pairing through the mailbox, expiry, first claim wins,
//! who may open, claim and close, and the brute-force brake on claims.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Device, Relay, metric, new_key, pair_for_real, pair_for_real_from};
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::Frame;
use tandem_proto::{ErrorCode, Role};

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    Entropy::os().fill(&mut id).unwrap();
    id
}

async fn open(desk: &mut Device, rid: u64, pid: [u8; 16], ttl: u16) -> Result<(), ErrorCode> {
    desk.send(&Frame::PairOpen { request_id: rid, pairing_id: pid, ttl_secs: ttl }).await;
    desk.result_of(rid).await
}

async fn claim(
    phone: &mut Device,
    rid: u64,
    pid: [u8; 16],
    payload: &[u8],
) -> Result<(), ErrorCode> {
    phone
        .send(&Frame::PairClaim { request_id: rid, pairing_id: pid, payload: payload.to_vec() })
        .await;
    phone.result_of(rid).await
}

async fn close(desk: &mut Device, rid: u64, pid: [u8; 16]) -> Result<(), ErrorCode> {
    desk.send(&Frame::PairClose { request_id: rid, pairing_id: pid }).await;
    desk.result_of(rid).await
}

#[tokio::test]
async fn a_real_pairing_through_the_mailbox_ends_with_the_same_code_and_a_route() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    // Every hop (claim → PairMessage to the desktop with peer = phone,
    // answers with peer rewritten to the sender, Ok for open/claim/close)
    // and the equal SAS are checked inside.
    let mut p = pair_for_real(&relay).await;
    assert_eq!(p.desk_view.sas, p.phone_view.sas);
    assert_eq!(p.desk_view.public_key, p.phone.key.public());
    assert_eq!(p.phone_view.public_key, p.desk.key.public());

    // Both authorised each other: the route exists and presence flows.
    let (desk_id, phone_id) = (p.desk.id(), p.phone.id());
    p.desk.presence(phone_id, true).await;
    p.phone.presence(desk_id, true).await;
    p.phone.send_to(desk_id, 1, b"first frame after pairing").await.unwrap();
    let (_, from, payload) = p.desk.delivery().await;
    assert_eq!((from, payload.as_slice()), (phone_id, &b"first frame after pairing"[..]));

    // The mailbox is gone once closed.
    let mut late = Device::connect(&relay, new_key(), Role::Phone).await.0;
    let r = claim(&mut late, 2, p.pairing_id, b"x").await;
    assert_eq!(r, Err(ErrorCode::PairingNotFound));
    let m = relay.metrics().await;
    for outcome in ["opened", "claimed", "closed"] {
        let series = format!("tandem_relay_pairings_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&m, &series), Some(1.0), "{series} in\n{m}");
    }
    relay.assert_healthy().await;
}

#[tokio::test]
async fn a_closed_mailbox_refuses_the_claim_and_carries_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let pid = random_id();
    open(&mut desk, 1, pid, 120).await.unwrap();
    claim(&mut phone, 2, pid, b"hello").await.unwrap();
    desk.expect("the claim", |f| matches!(f, Frame::PairMessage { .. })).await;
    close(&mut desk, 3, pid).await.unwrap();
    // Neither side can use the mailbox any more.
    phone
        .send(&Frame::PairMessage { pairing_id: pid, peer: desk.id(), payload: b"late".to_vec() })
        .await;
    let err = phone.expect("a refusal", |f| matches!(f, Frame::Error { .. })).await;
    assert!(
        matches!(err, Frame::Error { code: ErrorCode::PairingNotFound, ref_id: 0, .. }),
        "{err:?}"
    );
    desk.assert_quiet(Duration::from_millis(300)).await;
    assert_eq!(close(&mut desk, 4, pid).await, Err(ErrorCode::PairingNotFound));
}

#[tokio::test]
async fn a_claim_after_the_mailbox_expired_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The desktop asks for 10 minutes; the relay caps it at 1 s.
    let relay = Relay::start(dir.path(), &["--pairing-ttl-max-secs", "1"]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let (fresh, stale) = (random_id(), random_id());
    open(&mut desk, 1, stale, 600).await.unwrap();
    open(&mut desk, 2, fresh, 600).await.unwrap();
    // Control: claimed at once, a mailbox works.
    claim(&mut phone, 3, fresh, b"in time").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = claim(&mut phone, 4, stale, b"too late").await;
    assert!(
        matches!(r, Err(ErrorCode::PairingExpired | ErrorCode::PairingNotFound)),
        "a claim after the TTL: {r:?}"
    );
    // The expired claim never reached the desktop (only the fresh one did).
    let (frames, end) = desk.collect_for(Duration::from_millis(300)).await;
    assert_eq!(end, None);
    let claims: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::PairMessage { pairing_id, payload, .. } => Some((*pairing_id, payload.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(claims, vec![(fresh, b"in time".to_vec())]);
    // Messages in the expired fresh mailbox are refused too.
    desk.send(&Frame::PairMessage { pairing_id: fresh, peer: phone.id(), payload: b"x".to_vec() })
        .await;
    let err = desk.expect("a refusal", |f| matches!(f, Frame::Error { .. })).await;
    assert!(
        matches!(
            err,
            Frame::Error { code: ErrorCode::PairingExpired | ErrorCode::PairingNotFound, .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_first_claim_wins() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut first, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let (mut second, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let pid = random_id();
    // Nothing to talk about before a claim.
    desk.send(&Frame::PairMessage { pairing_id: pid, peer: first.id(), payload: b"?".to_vec() })
        .await;
    let err = desk.expect("a refusal", |f| matches!(f, Frame::Error { .. })).await;
    assert!(matches!(err, Frame::Error { code: ErrorCode::PairingNotFound, .. }), "{err:?}");

    open(&mut desk, 1, pid, 120).await.unwrap();
    claim(&mut first, 1, pid, b"first").await.unwrap();
    assert_eq!(claim(&mut second, 1, pid, b"second").await, Err(ErrorCode::PairingClaimed));
    // Even the winner cannot claim again (§6.9).
    assert_eq!(claim(&mut first, 2, pid, b"again").await, Err(ErrorCode::PairingClaimed));

    // The loser can neither write to the desktop nor be written to.
    second
        .send(&Frame::PairMessage { pairing_id: pid, peer: desk.id(), payload: b"psst".to_vec() })
        .await;
    let err = second.expect("a refusal", |f| matches!(f, Frame::Error { .. })).await;
    assert!(matches!(err, Frame::Error { code: ErrorCode::UnexpectedFrame, .. }), "{err:?}");
    desk.send(&Frame::PairMessage { pairing_id: pid, peer: second.id(), payload: b"no".to_vec() })
        .await;
    let err = desk.expect("a refusal", |f| matches!(f, Frame::Error { .. })).await;
    assert!(matches!(err, Frame::Error { code: ErrorCode::UnexpectedFrame, .. }), "{err:?}");
    second.assert_quiet(Duration::from_millis(200)).await;

    // The desktop heard exactly one claim: the winner's.
    let (frames, _) = desk.collect_for(Duration::from_millis(300)).await;
    let heard: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::PairMessage { peer, payload, .. } => Some((*peer, payload.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(heard, vec![(first.id(), b"first".to_vec())]);
    // And the winner's channel works both ways.
    desk.send(&Frame::PairMessage { pairing_id: pid, peer: first.id(), payload: b"hi".to_vec() })
        .await;
    let got = first.expect("the answer", |f| matches!(f, Frame::PairMessage { .. })).await;
    assert_eq!(
        got,
        Frame::PairMessage { pairing_id: pid, peer: desk.id(), payload: b"hi".to_vec() }
    );
}

#[tokio::test]
async fn only_desktops_open_and_only_phones_claim() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &[]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut other_desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let pid = random_id();
    assert_eq!(open(&mut phone, 1, pid, 120).await, Err(ErrorCode::UnexpectedFrame));
    // The phone's refused open created nothing a desktop could not take.
    open(&mut desk, 1, pid, 120).await.unwrap();
    // An open id is refused to anyone, even its owner (codes rotate).
    assert_eq!(open(&mut other_desk, 1, pid, 120).await, Err(ErrorCode::PairingClaimed));
    assert_eq!(open(&mut desk, 2, pid, 120).await, Err(ErrorCode::PairingClaimed));
    // A desktop cannot claim, not even its own mailbox.
    assert_eq!(claim(&mut other_desk, 2, pid, b"x").await, Err(ErrorCode::UnexpectedFrame));
    assert_eq!(claim(&mut desk, 3, pid, b"x").await, Err(ErrorCode::UnexpectedFrame));
    // The mailbox is still unclaimed: the phone gets it.
    claim(&mut phone, 2, pid, b"mine").await.unwrap();
    let got = desk.expect("the claim", |f| matches!(f, Frame::PairMessage { .. })).await;
    assert_eq!(
        got,
        Frame::PairMessage { pairing_id: pid, peer: phone.id(), payload: b"mine".to_vec() }
    );
    relay.assert_healthy().await;
}

#[tokio::test]
async fn only_the_owner_closes_a_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut owner, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut intruder, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let pid = random_id();
    open(&mut owner, 1, pid, 120).await.unwrap();
    assert_eq!(close(&mut intruder, 1, pid).await, Err(ErrorCode::UnexpectedFrame));
    // Still open: the phone can claim it.
    claim(&mut phone, 1, pid, b"hello").await.unwrap();
    owner.expect("the claim", |f| matches!(f, Frame::PairMessage { .. })).await;
    close(&mut owner, 2, pid).await.unwrap();
    // Closed for good.
    assert_eq!(close(&mut owner, 3, pid).await, Err(ErrorCode::PairingNotFound));
}

#[tokio::test]
async fn a_phone_may_not_close_a_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let pid = random_id();
    open(&mut desk, 1, pid, 120).await.unwrap();
    claim(&mut phone, 1, pid, b"hello").await.unwrap();
    // §6.9: PairClose comes from a desktop connection, else unexpected_frame
    // (§4.4: a frame not allowed for the sender's role is unexpected_frame).
    assert_eq!(close(&mut phone, 2, pid).await, Err(ErrorCode::UnexpectedFrame));
    // The mailbox still works.
    desk.send(&Frame::PairMessage { pairing_id: pid, peer: phone.id(), payload: b"ok".to_vec() })
        .await;
    phone.expect("the answer", |f| matches!(f, Frame::PairMessage { .. })).await;
}

#[tokio::test]
async fn guessing_pairing_ids_is_rate_limited_per_ip() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), &["--pair-claims-per-ip-per-minute", "5"]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let real = random_id();
    open(&mut desk, 1, real, 120).await.unwrap();
    // Two phones on the same address share the budget.
    let (mut a, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let (mut b, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let mut results = Vec::new();
    for i in 0..8u64 {
        let phone = if i < 3 { &mut a } else { &mut b };
        results.push(claim(phone, 100 + i, random_id(), b"guess").await);
    }
    assert!(
        results[..5].iter().all(|r| *r == Err(ErrorCode::PairingNotFound)),
        "the first five guesses are judged: {results:?}"
    );
    assert!(
        results[5..].iter().all(|r| *r == Err(ErrorCode::RateLimited)),
        "then the brake: {results:?}"
    );
    // Even the right id is refused now: no sixth try this minute.
    assert_eq!(claim(&mut b, 200, real, b"right").await, Err(ErrorCode::RateLimited));
    desk.assert_quiet(Duration::from_millis(200)).await;
    let m = relay.metrics().await;
    assert!(metric(&m, "tandem_relay_refusals_total{reason=\"rate_limited\"}") >= Some(4.0), "{m}");
    relay.assert_healthy().await;
}

#[tokio::test]
async fn a_claim_for_a_desktop_that_went_away_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let pid = random_id();
    open(&mut desk, 1, pid, 120).await.unwrap();
    desk.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let r = claim(&mut phone, 1, pid, b"anyone?").await;
    assert_eq!(r, Err(ErrorCode::PairingNotFound), "pairing frames are never queued");
}

#[tokio::test]
async fn a_mailbox_closes_when_the_connection_that_opened_it_goes_away() {
    // The desktop's connection drops: its mailbox goes with it (it is not
    // kept for a desktop that may never come back), also after the same
    // desktop reconnects; the desktop opens it again and pairing goes on.
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let desk_key = new_key();
    let (mut desk, _) = Device::connect(&relay, desk_key.clone(), Role::Desktop).await;
    let pid = random_id();
    open(&mut desk, 1, pid, 120).await.unwrap();
    desk.close().await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let (mut desk, _) = Device::connect(&relay, desk_key, Role::Desktop).await;
    assert_eq!(claim(&mut phone, 1, pid, b"hello").await, Err(ErrorCode::PairingNotFound));
    open(&mut desk, 2, pid, 120).await.unwrap();
    claim(&mut phone, 2, pid, b"hello").await.unwrap();
    let got = desk.expect("the claim", |f| matches!(f, Frame::PairMessage { .. })).await;
    assert_eq!(
        got,
        Frame::PairMessage { pairing_id: pid, peer: phone.id(), payload: b"hello".to_vec() }
    );
    // A connection replaced by a newer one of the same desktop takes its
    // mailboxes along too.
    let pid2 = random_id();
    open(&mut desk, 3, pid2, 120).await.unwrap();
    let (mut newer, _) = Device::connect(&relay, desk.key.clone(), Role::Desktop).await;
    let (end, _) = desk.until_closed(Duration::from_secs(5)).await;
    assert_eq!(end, common::close_code(ErrorCode::Replaced));
    let m = relay.wait_metric("tandem_relay_pairings_total{outcome=\"closed\"}", 3.0).await;
    assert_eq!(metric(&m, "tandem_relay_pairings_total{outcome=\"opened\"}"), Some(3.0));
    assert_eq!(claim(&mut phone, 3, pid2, b"hi").await, Err(ErrorCode::PairingNotFound));
    open(&mut newer, 4, pid2, 120).await.unwrap();
}

#[tokio::test]
async fn a_claim_of_the_largest_payload_reaches_the_desktop_whole() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, _) = Device::connect(&relay, new_key(), Role::Desktop).await;
    let (mut phone, _) = Device::connect(&relay, new_key(), Role::Phone).await;
    let pid = random_id();
    open(&mut desk, 1, pid, 120).await.unwrap();
    // The claim's header is shorter than PairMessage's: the relay must still
    // be able to re-frame the largest payload (§4.4).
    let payload = vec![0x5a; tandem_proto::frame::MAX_PAYLOAD_LEN];
    claim(&mut phone, 1, pid, &payload).await.unwrap();
    let got = desk.expect("the claim", |f| matches!(f, Frame::PairMessage { .. })).await;
    assert_eq!(
        got,
        Frame::PairMessage { pairing_id: pid, peer: phone.id(), payload: payload.clone() }
    );
    desk.send(&Frame::PairMessage { pairing_id: pid, peer: phone.id(), payload: payload.clone() })
        .await;
    let got = phone.expect("the answer", |f| matches!(f, Frame::PairMessage { .. })).await;
    assert_eq!(got, Frame::PairMessage { pairing_id: pid, peer: desk.id(), payload });
}

#[tokio::test]
async fn one_address_cycling_keys_cannot_stop_another_from_pairing() {
    let dir = tempfile::tempdir().unwrap();
    // The defaults: 32 mailboxes per address.
    let relay = Relay::start(dir.path(), &[]);
    let attacker = std::net::IpAddr::from([127, 0, 0, 2]);
    let (honest_desk, honest_phone) =
        (std::net::IpAddr::from([127, 0, 0, 3]), std::net::IpAddr::from([127, 0, 0, 4]));
    // 127.0.0.2 opens mailboxes with one fresh desktop key after another,
    // keeping every connection open, until the relay refuses it.
    let mut held = Vec::new();
    let mut opened = 0;
    let refused = 'keys: loop {
        let (mut d, _) = Device::connect_from(&relay, new_key(), Role::Desktop, attacker).await;
        for rid in 1..=3 {
            match open(&mut d, rid, random_id(), 600).await {
                Ok(()) => opened += 1,
                Err(code) => break 'keys code,
            }
        }
        held.push(d);
        assert!(held.len() < 20, "never refused after {opened} mailboxes");
    };
    assert_eq!((refused, opened), (ErrorCode::RateLimited, 32), "its share, and no more");
    // Another address pairs for real, several times.
    for _ in 0..3 {
        let p = pair_for_real_from(&relay, honest_desk, honest_phone).await;
        assert_eq!(p.desk_view.sas, p.phone_view.sas);
    }
    let m = relay.metrics().await;
    let series = "tandem_relay_limit_refusals_total{limit=\"mailboxes_per_ip\"}";
    assert_eq!(metric(&m, series), Some(1.0), "{m}");
    // When the attacker's connections go, so do its mailboxes.
    for d in held {
        d.close().await;
    }
    relay.wait_metric("tandem_relay_pairings_total{outcome=\"closed\"}", 35.0).await;
    let (mut d, _) = Device::connect_from(&relay, new_key(), Role::Desktop, attacker).await;
    open(&mut d, 1, random_id(), 600).await.unwrap();
}
