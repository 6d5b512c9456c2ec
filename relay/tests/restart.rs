//! Graceful restart (PROTOCOL.md §6.4): SIGTERM sends `Restarting` with the
//! reconnect hint, closes with `shutting_down`, exits 0, and the queues are
//! still there when the relay comes back on the same data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{Device, End, Relay, close_code, paired};
use tandem_proto::frame::Frame;
use tandem_proto::{ErrorCode, Role};

/// Everything up to the close: the frames seen and how it ended.
async fn until_closed(d: &mut Device) -> (End, Vec<Frame>) {
    d.until_closed(Duration::from_secs(10)).await
}

fn restart_hint(frames: &[Frame]) -> Option<u32> {
    frames.iter().find_map(|f| match f {
        Frame::Restarting { reconnect_after_ms } => Some(*reconnect_after_ms),
        _ => None,
    })
}

#[tokio::test]
async fn sigterm_tells_every_device_to_come_back_later_and_keeps_the_queues() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &["--restart-hint-ms", "1500"]);
    let (mut desk, mut phone) = paired(&relay).await;
    let (desk_id, phone_id) = (desk.id(), phone.id());
    // A second phone, paired and offline, with frames waiting for it.
    let (mut away, _) = Device::connect(&relay, common::new_key(), Role::Phone).await;
    let (away_key, away_id) = (away.key.clone(), away.id());
    away.authorize(desk_id, 1).await.unwrap();
    desk.authorize(away_id, 2).await.unwrap();
    away.close().await;
    for i in 0..3u64 {
        desk.send_to(away_id, 10 + i, format!("kept {i}").as_bytes()).await.unwrap();
    }
    // And one delivered live but not acknowledged.
    desk.send_to(phone_id, 20, b"unacked").await.unwrap();
    assert_eq!(phone.delivery().await.2, b"unacked".to_vec());

    // SIGTERM (and wait for the exit) on a blocking thread while the devices read.
    let started = Instant::now();
    let mut relay = relay;
    let status = tokio::task::spawn_blocking(move || {
        let s = relay.sigterm();
        (relay, s)
    });
    let ((desk_end, desk_frames), (phone_end, phone_frames)) =
        tokio::join!(until_closed(&mut desk), until_closed(&mut phone));
    let (mut relay, status) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{}", relay.log());
    assert!(started.elapsed() < Duration::from_secs(5), "drained in {:?}", started.elapsed());
    for (who, end, frames) in
        [("desktop", desk_end, desk_frames), ("phone", phone_end, phone_frames)]
    {
        assert_eq!(restart_hint(&frames), Some(1500), "{who}: {frames:?}");
        assert_eq!(end, close_code(ErrorCode::ShuttingDown), "{who}: {frames:?}");
    }

    relay.restart();
    let (mut away, queued) = Device::connect(&relay, away_key, Role::Phone).await;
    assert_eq!(queued, 3, "the queue survived the restart");
    let got: Vec<Vec<u8>> = away.deliveries(3).await.into_iter().map(|(_, _, p)| p).collect();
    assert_eq!(got, vec![b"kept 0".to_vec(), b"kept 1".to_vec(), b"kept 2".to_vec()]);
    away.assert_quiet(Duration::from_millis(300)).await;
    // The unacknowledged live delivery is still owed too, and routes survived.
    let (mut phone, queued) = Device::connect(&relay, phone.key.clone(), Role::Phone).await;
    assert_eq!(queued, 1);
    assert_eq!(phone.delivery().await.2, b"unacked".to_vec());
    let (mut desk, _) = Device::connect(&relay, desk.key.clone(), Role::Desktop).await;
    phone.send_to(desk_id, 1, b"after restart").await.unwrap();
    assert_eq!(desk.delivery().await.2, b"after restart".to_vec());
}

#[tokio::test]
async fn the_default_restart_hint_is_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut d, _) = Device::connect(&relay, common::new_key(), Role::Desktop).await;
    let mut relay = relay;
    let term = tokio::task::spawn_blocking(move || relay.sigterm());
    let (end, frames) = until_closed(&mut d).await;
    assert!(term.await.unwrap().success());
    assert_eq!(restart_hint(&frames), Some(2000), "{frames:?}");
    assert_eq!(end, close_code(ErrorCode::ShuttingDown));
    // Restarting comes first; at most the matching Error follows it.
    let at = frames.iter().position(|f| matches!(f, Frame::Restarting { .. })).unwrap();
    assert!(
        frames[at + 1..]
            .iter()
            .all(|f| matches!(f, Frame::Error { code: ErrorCode::ShuttingDown, .. })),
        "{frames:?}"
    );
}
