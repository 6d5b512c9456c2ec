//! `tandem up` as a person uses it: the agent starts a relay, shows a QR
//! code (decoded with `zbarimg`, as a camera would), a phone pairs through
//! the relay with the real protocol and both show the same code. Without an
//! executor a task is refused; `tandem devices` lists the phone and
//! `tandem revoke` cuts it off at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{Agent, Phone, tandem};
use tandem_client::ClientError;
use tandem_proto::ErrorCode;
use tandem_proto::message::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_pairs_with_tandem_up_from_the_qr_code_and_is_answered_then_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::up(dir.path(), &dir.path().join("no-config.toml"));
    let mut phone = Phone::pair(&agent, dir.path()).await;

    // A task goes out; with no executor configured it is refused, clearly.
    phone
        .send(&Message::TaskSubmit {
            task_id: "t-1".into(),
            text: "fix the failing test".into(),
            workspace: None,
            executor: None,
        })
        .await;
    assert_eq!(
        phone.message().await,
        Message::Refused {
            task_id: Some("t-1".into()),
            code: "no_executor".into(),
            message: "no executor is configured on this computer".into(),
        }
    );
    assert!(phone.link.outbound().is_empty(), "the desktop acknowledged the task end to end");

    let devices = tandem(dir.path(), &["devices"]);
    assert!(devices.contains("Ana's phone"), "{devices}");
    let revoked = tandem(dir.path(), &["revoke", "ana's phone"]);
    assert!(revoked.contains("The relay refuses it from now on"), "{revoked}");
    let (_, record) = phone.link.send(b"{}".to_vec()).unwrap();
    match phone.client.send(phone.desktop, record).await {
        Err(ClientError::Refused(code, _)) => assert_eq!(code, ErrorCode::NotAuthorized),
        other => panic!("a revoked phone's frame was not refused: {other:?}"),
    }
    assert!(!tandem(dir.path(), &["devices"]).contains("Ana's phone"));
    phone.client.close().await;
}
