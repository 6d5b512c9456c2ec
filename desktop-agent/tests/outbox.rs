//! What the agent sends again, and when (`docs/PROTOCOL.md` §13.4; issue
//! 14 items 4 and 5):
//!
//! * a record the relay refuses (here its store, failing once through the
//!   relay's `relay.enqueue.<device>` failpoint) is sent again on a timer
//!   until the relay stores it: the task's `Finished` reaches the phone
//!   within seconds, with no reconnect of either side;
//! * a phone that connects and disconnects 100 times while the agent has
//!   unacknowledged messages for it does not get a copy of them per
//!   connection: the agent sends again only what the relay has not stored;
//! * while the relay keeps refusing, each retry sends one record (a
//!   probe), and the rest once the relay stores it;
//! * an agent whose relay connection drops three times (a proxy between
//!   them cut; the relay runs on, the same store epoch) while the relay
//!   holds unacknowledged messages for the phone sends no copies of them:
//!   on a reconnection to the same store it sends only what the relay has
//!   not stored;
//! * a record the relay holds, stored more than `resend_stale_secs` ago,
//!   goes again when the phone comes online (here the window is one
//!   second, `TANDEM_RESEND_STALE_SECS`);
//! * a relay restart while records are on their way (handed to the client,
//!   or waiting in the send queue) sends each of them once: the client
//!   writes them after the reconnect, the agent does not add copies.
//!
//! The agent is the real `tandem` (`tandem pair`, then `tandem run`), the
//! relay the real relay in a process of its own (`common/relay.rs`), the
//! phone a test phone speaking the end-to-end protocol (`common::Phone`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
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
    /// Between the agent and the relay, if asked for.
    proxy: Option<Proxy>,
    agent_dir: PathBuf,
    config: PathBuf,
    agent: Agent,
    phone: Phone,
}

impl World {
    /// `tandem pair` with a test phone, then `tandem run`.
    async fn start() -> World {
        World::start_with(&[]).await
    }

    /// As [`World::start`], `tandem run` with `env` set.
    async fn start_with(env: &[(&str, String)]) -> World {
        World::start_via(env, false).await
    }

    /// As [`World::start_with`], the agent reaching the relay through a
    /// proxy if `via_proxy` (the phone dials the relay itself).
    async fn start_via(env: &[(&str, String)], via_proxy: bool) -> World {
        World::start_full(env, via_proxy, None).await
    }

    /// As [`World::start_via`], the relay holding frames for a connected
    /// recipient `hold_ms` before it writes them (`hold_window`).
    async fn start_full(env: &[(&str, String)], via_proxy: bool, hold_ms: Option<u64>) -> World {
        let dir = tempfile::tempdir().unwrap();
        if let Some(ms) = hold_ms {
            std::fs::write(dir.path().join(common::relay::HOLD_WINDOW_FILE), ms.to_string())
                .unwrap();
        }
        let config = common::fixture_config(dir.path(), "");
        let relay = Relay::start(dir.path());
        let proxy = if via_proxy { Some(Proxy::start(relay.addr).await) } else { None };
        let agent_dir = dir.path().join("desk");
        let agent_url = proxy.as_ref().map_or_else(|| relay.url(), Proxy::url);
        let (mut pairing, link) = tokio::task::block_in_place(|| {
            common::pair_process(&agent_dir, &config, &agent_url, &relay.link_base())
        });
        let phone_url = proxy.as_ref().map(|_| relay.url());
        let claimed = Claimed::claim(
            &pairing,
            &link,
            phone_url,
            common::new_key(),
            common::info("Ana's phone"),
        )
        .await;
        let phone = claimed.result().await.unwrap();
        tokio::task::block_in_place(|| {
            assert!(pairing.exit_within(WAIT).unwrap().success());
        });
        let agent = tokio::task::block_in_place(|| common::run_process(&agent_dir, &config, env));
        World { dir, relay, proxy, agent_dir, config, agent, phone }
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
    // Accepted, three lines, the finish, the choices and the task list:
    // each once.
    assert_eq!(frames, 7, "the relay's queue for the phone held copies");
}

/// Take the deliveries of a `count` task (never acknowledged) until its
/// finish; returns how many deliveries that took.
async fn until_finished(phone: &mut Phone) -> usize {
    let finish =
        |m: &Message| matches!(m, Message::TaskEvent { event: TaskEvent::Finished { .. }, .. });
    deliveries_until(phone, finish).await
}

/// Ask for the task list, then count the deliveries until its answer (the
/// relay delivers its queue for the phone in order: the answer last).
async fn frames_until_the_list(phone: &mut Phone) -> usize {
    phone.send(&Message::HistoryRequest { task_id: None, from_offset: 0 }).await;
    deliveries_until(phone, |m| matches!(m, Message::TaskList { .. })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_back_on_the_same_relay_store_sends_no_copies_of_what_it_holds() {
    // The agent dials the relay through a proxy that can drop its
    // connection: the relay keeps running, on the same store epoch.
    // The relay writes every frame before its `Ok` (hold window 0): this
    // is about what the agent sends again for what the relay stored. (With
    // a hold, a cut inside the window loses the answers to frames the
    // phone has not acknowledged, and the client writes those again: the
    // documented cost of the hold, PROTOCOL §6.5.)
    let mut w = World::start_full(&[], true, Some(0)).await;
    // Five messages the relay stores and the phone never acknowledges (it
    // sends nothing: its acknowledgements would ride on what it sends).
    // The relay answers each after its commit and before it delivers the
    // next one the agent sent: when the finish arrives, the agent knows the
    // four before it stored, unless their answers were still on the way.
    // The finish's answer may be lost with a cut: then the client writes it
    // again after the reconnection (and again if that answer is lost with
    // the next cut).
    w.phone.submit("t-1", "count 3 1").await;
    assert_eq!(until_finished(&mut w.phone).await, 5);
    let proxy = w.proxy.take().unwrap();
    let connected = |w: &World| w.agent_log().matches("tandem_client::actor: connected").count();
    for round in 2..5 {
        // Dropped, and refused until the agent has tried again once.
        let refused = proxy.refused();
        proxy.set(Mode::Cut);
        let deadline = std::time::Instant::now() + WAIT;
        while proxy.refused() == refused {
            assert!(std::time::Instant::now() < deadline, "the agent never dialled again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.set(Mode::Open);
        while connected(&w) < round {
            assert!(std::time::Instant::now() < deadline, "the agent never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // No copy of the first four (before: all five again per reconnection,
    // 12 to 16 frames); at most one of the finish per cut; the choices and
    // the list.
    let frames = frames_until_the_list(&mut w.phone).await;
    assert!(frames <= 3 + 2, "the relay's queue held {frames} records: copies");
}

/// Records the relay refused for good (`not_authorized`: relay failpoint
/// `relay.no_route.<phone>`, the route itself untouched) are kept for the
/// next connection; a reconnection to the same store epoch sends them
/// again (before: only a new epoch did, so they waited for a relay restart).
/// The records after the refused one reached the relay first, and the
/// phone drops records ahead of a gap: everything from the refused one on
/// goes again, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_relay_refused_for_good_goes_again_on_a_reconnection_to_the_same_store() {
    let mut w = World::start_via(&[], true).await;
    let point = format!("relay.no_route.{}", w.phone_id());
    tokio::task::block_in_place(|| w.relay.arm(&point, "return"));
    w.phone.submit("t-1", "count 1 1").await;
    let for_good = |w: &World| w.agent_log().matches("refused a record for good").count();
    let deadline = std::time::Instant::now() + WAIT;
    while for_good(&w) == 0 {
        assert!(std::time::Instant::now() < deadline, "no refusal:\n{}", w.agent_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| w.relay.arm(&point, "off"));
    // The agent's connection drops and comes back; the relay and its store
    // run on.
    let proxy = w.proxy.take().unwrap();
    let refused = proxy.refused();
    proxy.set(Mode::Cut);
    while proxy.refused() == refused {
        assert!(std::time::Instant::now() < deadline, "the agent never dialled again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set(Mode::Open);
    // Every event of the task, in order, none missing.
    let mut events = Vec::new();
    while !matches!(events.last(), Some(TaskEvent::Finished { .. })) {
        match tokio::time::timeout(Duration::from_secs(15), next_task_event(&mut w.phone)).await {
            Ok(e) => events.push(e),
            Err(_) => panic!("the refused records never came ({events:?}):\n{}", w.agent_log()),
        }
    }
    assert!(matches!(events.first(), Some(TaskEvent::Accepted { .. })), "{events:?}");
    assert_eq!(events.len(), 3, "accepted, one line, the finish: {events:?}");
}

/// As above, the agent killed (-9) after the refusal and started again:
/// the refused record and those after it are in its saved outbox and reach
/// the phone on its first connection, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_relay_refused_for_good_goes_again_after_the_agent_is_killed() {
    let mut w = World::start().await;
    let point = format!("relay.no_route.{}", w.phone_id());
    tokio::task::block_in_place(|| w.relay.arm(&point, "return"));
    // Still running when the agent dies (its one line comes after a minute).
    w.phone.submit("t-1", "count 1 60000").await;
    let for_good = |w: &World| w.agent_log().matches("refused a record for good").count();
    let deadline = std::time::Instant::now() + WAIT;
    while for_good(&w) == 0 {
        assert!(std::time::Instant::now() < deadline, "no refusal:\n{}", w.agent_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| w.relay.arm(&point, "off"));
    // SIGKILL, then a new `tandem run` on the same data dir (a dead
    // process holds no lock; the old handle is reaped when replaced).
    let killed = std::process::Command::new("kill")
        .args(["-9", &w.agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Dead, and its data dir's lock free (a task process it was forking
    // shares the lock until it runs its program).
    let lock = std::fs::File::open(w.agent_dir.join("agent.lock")).unwrap();
    while lock.try_lock().is_err() {
        assert!(std::time::Instant::now() < deadline, "the agent's lock was never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lock.unlock().unwrap();
    let (agent_dir, config) = (w.agent_dir.clone(), w.config.clone());
    let started = tokio::task::block_in_place(|| {
        std::panic::catch_unwind(|| common::run_process(&agent_dir, &config, &[]))
    });
    w.agent = started.unwrap_or_else(|_| panic!("the agent did not start:\n{}", w.agent_log()));
    let mut events = Vec::new();
    while !matches!(events.last(), Some(TaskEvent::Finished { .. })) {
        match tokio::time::timeout(Duration::from_secs(15), next_task_event(&mut w.phone)).await {
            Ok(e) => events.push(e),
            Err(_) => panic!("the refused records never came ({events:?}):\n{}", w.agent_log()),
        }
    }
    // The refused `Accepted`, then the finish the new process gives the
    // task it found interrupted: in order, once each.
    assert!(matches!(events.first(), Some(TaskEvent::Accepted { .. })), "{events:?}");
    assert!(
        matches!(events.last(), Some(TaskEvent::Finished { summary, .. }) if summary.starts_with("interrupted")),
        "{events:?}"
    );
    assert_eq!(events.len(), 2, "accepted, the finish: {events:?}");
}

/// The relay answers a record for a connected phone when the phone
/// acknowledges it (or after its hold window): the agent keeps sending
/// while earlier records wait for their answer, so a phone that is slow to
/// acknowledge (or does not, here, with a minute's window) still gets a
/// task's events as they come, not one per answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_flow_to_a_phone_that_has_not_acknowledged_the_earlier_ones() {
    let mut w = World::start_full(&[], false, Some(60_000)).await;
    w.phone.submit("t-1", "count 3 1").await;
    // Accepted, three lines, the finish; none acknowledged to the relay.
    assert_eq!(until_finished(&mut w.phone).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_relay_held_too_long_goes_again_when_the_phone_comes_online() {
    let mut w = World::start_with(&[
        ("TANDEM_RESEND_STALE_SECS", "1".to_owned()),
        ("TANDEM_LOG", "info,tandem_agent=debug,tandem_client::actor=debug".to_owned()),
    ])
    .await;
    w.phone.submit("t-1", "count 3 1").await;
    assert_eq!(until_finished(&mut w.phone).await, 5);
    w.phone.client.close().await;
    // Not a correctness wait: the records must be older than the window
    // when the phone comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w.phone.reconnect().await;
    // The five held by the relay, the five sent again on the phone's
    // presence (stored over a second ago, unacknowledged), the choices and
    // the list.
    let n = frames_until_the_list(&mut w.phone).await;
    assert_eq!(n, 12, "{}", w.agent_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_relay_gets_one_probe_per_retry_then_the_rest() {
    let mut w = World::start().await;
    let point = format!("relay.enqueue.{}", w.phone_id());
    let refusals = |w: &World| w.relay.log().matches("refusing a frame").count();
    // Every record for the phone is refused (its store fails) until disarmed.
    tokio::task::block_in_place(|| w.relay.arm(&point, "return"));
    // Accepted, three lines, the finish: five records, all refused.
    w.phone.submit("t-1", "count 3 1").await;
    // Then a retry one second later and one two seconds after that: one
    // record each (a probe), not the five again.
    let deadline = std::time::Instant::now() + WAIT;
    while refusals(&w) < 7 {
        assert!(std::time::Instant::now() < deadline, "no retries:\n{}", w.relay.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| w.relay.arm(&point, "off"));
    // The next probe is stored, and the rest follows at once.
    let mut events = Vec::new();
    while !matches!(events.last(), Some(TaskEvent::Finished { .. })) {
        events.push(next_task_event(&mut w.phone).await);
    }
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(refusals(&w), 7, "each retry sent one record:\n{}", w.relay.log());
}

/// Take deliveries (never acknowledged) until one carries a message that
/// `last` accepts; returns how many deliveries that took.
async fn deliveries_until(phone: &mut Phone, last: impl Fn(&Message) -> bool) -> usize {
    let mut frames = 0;
    loop {
        let Event::Deliver { payload, .. } =
            common::next(&mut phone.events, "a delivery", |e| matches!(e, Event::Deliver { .. }))
                .await
        else {
            unreachable!()
        };
        frames += 1;
        let Ok(events) = phone.link.receive(&phone.key, &payload, &mut entropy()) else {
            continue;
        };
        let done = events.iter().any(|e| {
            matches!(e, LinkEvent::Message { message, .. }
                if matches!(Message::decode(message), Ok(Decoded::Known(m)) if last(&m)))
        });
        if done {
            return frames;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restart_leaves_one_copy_of_what_was_in_flight() {
    let mut w = World::start().await;
    // Accepted and the first line at once, then a line every 1.5 s and the
    // finish.
    w.phone.submit("t-1", "count 3 1500").await;
    let progress =
        |m: &Message| matches!(m, Message::TaskEvent { event: TaskEvent::Progress { .. }, .. });
    // Taken, never acknowledged: both stay in the relay's queue.
    assert_eq!(deliveries_until(&mut w.phone, progress).await, 2);
    // The relay dies before the rest is produced: the agent's next records
    // wait in its client (handed over, unanswered) and its send queue.
    tokio::task::block_in_place(|| w.relay.kill9());
    w.phone.client.close().await;
    let audit = w.agent_dir.join("audit.log");
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&audit).unwrap_or_default().contains("task_finished") {
        assert!(std::time::Instant::now() < deadline, "the task never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(|| w.relay.restart());
    w.phone.reconnect().await;
    // Asked last: answered after everything the agent sent before.
    w.phone.send(&Message::HistoryRequest { task_id: None, from_offset: 0 }).await;
    let list = |m: &Message| matches!(m, Message::TaskList { .. });
    let frames = deliveries_until(&mut w.phone, list).await;
    // What the relay had stored goes again once (a new connection sends
    // every unacknowledged record: the relay may have lost it): accepted
    // and the first line at most twice (once if the relay's answer to one
    // was lost with it: then it was in flight). What was in flight goes
    // once: two lines and the finish. Then the choices and the list.
    // (Before: 13.)
    assert!(frames <= 2 * 2 + 3 + 2, "the relay's queue for the phone held {frames} records");
}

fn entropy() -> tandem_proto::entropy::Entropy {
    tandem_proto::entropy::Entropy::os()
}
