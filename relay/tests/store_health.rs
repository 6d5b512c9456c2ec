//! The relay while its store cannot write: senders are refused with
//! `store_unavailable` on an open connection, `/readyz` says why, and the
//! relay recovers by itself (issue 14, item 1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use tandem_proto::ErrorCode;

/// `FAILPOINTS="relay.enqueue=1*return"` refuses the next enqueue exactly as
/// a failed store write: the sender hears `store_unavailable` for that
/// `Send`, the connection stays open, and its resend is accepted and
/// delivered.
#[tokio::test]
async fn the_enqueue_failpoint_refuses_one_send_with_store_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_env(dir.path(), &[], &[("FAILPOINTS", "relay.enqueue=1*return")]);
    let (mut desk, mut phone) = paired(&relay).await;
    let refused = desk.send_to(phone.id(), 10, b"first").await;
    assert_eq!(refused, Err(ErrorCode::StoreUnavailable), "the first enqueue is refused");
    desk.send_to(phone.id(), 11, b"first again").await.expect("the resend is accepted");
    let (_, from, payload) = phone.delivery().await;
    assert_eq!((from, payload.as_slice()), (desk.id(), &b"first again"[..]));
    // The refused frame was not stored: the next delivery is the next send.
    desk.send_to(phone.id(), 12, b"second").await.expect("accepted");
    let (_, _, payload) = phone.delivery().await;
    assert_eq!(payload, b"second");
}
