//! What the agent sends again, and when (`docs/PROTOCOL.md` §13.6; issue
//! 14 items 4 and 5):
//!
//! * a record the relay refuses (here its store, failing once through the
//!   relay's `relay.enqueue.<device>` failpoint) is sent again on a timer
//!   until the relay stores it: the task's `Finished` reaches the phone
//!   within seconds, with no reconnect of either side;
//! * a phone that connects and disconnects 100 times while the agent has
//!   unacknowledged messages for it does not get a copy of them per
//!   connection: the agent sends again only what the relay has not stored.
//!
//! The agent is the real `tandem` (`tandem pair`, then `tandem run`), the
//! relay the real relay in a process of its own (`common/relay.rs`), the
//! phone a test phone speaking the end-to-end protocol (`common::Phone`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::relay::Relay;
use common::{Agent, Claimed, Phone};
use tandem_client::Event;
use tandem_proto::link::LinkEvent;
use tandem_proto::message::{Decoded, Message, TaskEvent};

relay_process_test!();

/// Only there so that a broken build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(30);

struct World {
    dir: tempfile::TempDir,
    relay: Relay,
    agent_dir: PathBuf,
    _agent: Agent,
    phone: Phone,
}

impl World {
    /// `tandem pair` with a test phone, then `tandem run`.
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let config = common::fixture_config(dir.path(), "");
        let relay = Relay::start(dir.path());
        let agent_dir = dir.path().join("desk");
        let (mut pairing, link) = tokio::task::block_in_place(|| {
            common::pair_process(&agent_dir, &config, &relay.url(), &relay.link_base())
        });
        let claimed =
            Claimed::claim(&pairing, &link, None, common::new_key(), common::info("Ana's phone"))
                .await;
        let phone = claimed.result().await.unwrap();
        tokio::task::block_in_place(|| {
            assert!(pairing.exit_within(WAIT).unwrap().success());
        });
        let agent = tokio::task::block_in_place(|| common::run_process(&agent_dir, &config, &[]));
        World { dir, relay, agent_dir, _agent: agent, phone }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_dir.join("agent.log")).unwrap_or_default()
    }

    /// The phone's relay device id.
    fn phone_id(&self) -> String {
        self.phone.key.public().device_id().to_string()
    }
}

/// The next task event of the phone (acknowledging everything).
async fn next_task_event(phone: &mut Phone) -> TaskEvent {
    loop {
        if let Message::TaskEvent { event, .. } =
            tokio::time::timeout(WAIT, phone.message()).await.expect("a task event in time")
        {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_the_relay_refused_is_sent_again_without_a_reconnect() {
    let mut w = World::start().await;
    // One line, a second and a half, the finish.
    w.phone.submit("t-1", "count 1 1500").await;
    assert!(matches!(next_task_event(&mut w.phone).await, TaskEvent::Accepted { .. }));
    assert!(matches!(next_task_event(&mut w.phone).await, TaskEvent::Progress { .. }));
    // The next frame for the phone is the finish: the relay's store fails it.
    let point = format!("relay.enqueue.{}", w.phone_id());
    tokio::task::block_in_place(|| w.relay.arm(&point, "1*return"));
    let finish = next_task_event(&mut w.phone).await;
    assert!(matches!(finish, TaskEvent::Finished { .. }), "{finish:?}");
    let relay_log = w.relay.log();
    assert!(
        relay_log.contains(&format!("FAILPOINTS: {point}: refusing a frame")),
        "the relay refused the finish once:\n{relay_log}"
    );
    let log = w.agent_log();
    assert!(log.contains("the relay refused a record; sent again shortly"), "{log}");
    // Neither side reconnected: the retry came from the timer.
    assert_eq!(log.matches("tandem_client::actor: connected").count(), 1, "{log}");
    drop(w.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_phone_gets_no_copies_of_what_the_relay_holds() {
    let mut w = World::start().await;
    // Five messages the phone takes from the relay but never acknowledges
    // (end to end or to the relay): they stay in the agent's outbox and in
    // the relay's queue.
    w.phone.submit("t-1", "count 3 1").await;
    let mut finished = false;
    while !finished {
        let Event::Deliver { payload, .. } =
            common::next(&mut w.phone.events, "a delivery", |e| matches!(e, Event::Deliver { .. }))
                .await
        else {
            unreachable!()
        };
        let events = w.phone.link.receive(&w.phone.key, &payload, &mut entropy()).unwrap();
        for e in events {
            if let LinkEvent::Message { message, .. } = e
                && let Ok(Decoded::Known(Message::TaskEvent { event, .. })) =
                    Message::decode(&message)
            {
                finished |= matches!(event, TaskEvent::Finished { .. });
            }
        }
    }
    for _ in 0..100 {
        w.phone.client.close().await;
        w.phone.reconnect().await;
    }
    // Asked last: the agent answers after it handled every reconnection,
    // and the relay delivers its queue in order, the answer last.
    w.phone.send(&Message::HistoryRequest { task_id: None, from_offset: 0 }).await;
    let mut frames = 0;
    loop {
        let Event::Deliver { payload, .. } =
            common::next(&mut w.phone.events, "a delivery", |e| matches!(e, Event::Deliver { .. }))
                .await
        else {
            unreachable!()
        };
        frames += 1;
        let Ok(events) = w.phone.link.receive(&w.phone.key, &payload, &mut entropy()) else {
            continue;
        };
        let list = events.iter().any(|e| {
            matches!(e, LinkEvent::Message { message, .. }
                if matches!(Message::decode(message), Ok(Decoded::Known(Message::TaskList { .. }))))
        });
        if list {
            break;
        }
    }
    // Accepted, three lines, the finish, and the task list: each once.
    assert_eq!(frames, 6, "the relay's queue for the phone held copies");
}

fn entropy() -> tandem_proto::entropy::Entropy {
    tandem_proto::entropy::Entropy::os()
}
