//! Reconnects while a task streams: a relay process of its own (`kill -9`
//! and restarted on the same port and data), a TCP proxy between the agent
//! and the relay (cut, or blackholed: connections open, no bytes), and the
//! agent itself stopped with `SIGSTOP` (a laptop asleep). In every case the
//! phone sees each of the task's events exactly once, in order, with
//! contiguous offsets and one `Finished`.
//!
//! The agent is the real `tandem` binary, paired with `tandem pair --relay`
//! and then serving with `tandem run`. The relay is the real relay
//! (`tandem_relay::run`) in a process of its own (`common/relay.rs`: this
//! test binary, run again as `relay_process`), so that it can be killed and
//! stopped like the `tandem-relay` binary. Its pings are fast (every second,
//! two seconds for the pong), so that it drops a silent agent within seconds.
//!
//! The executor is a `jsonl` script that prints `n=0`, `n=1`, … a few
//! milliseconds apart, and halfway waits for a gate file, which each test
//! creates once the failure is in place: half of the stream is produced
//! while the agent cannot reach the relay.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::relay::Relay;
use common::{Agent, Phone, Seen};
use tandem_client::Event;
use tandem_proto::entropy::Entropy;
use tandem_proto::link::{LinkError, LinkEvent};
use tandem_proto::message::{Decoded, FinishStatus, Message, TaskEvent};
use tandem_proto::record::RecordError;
use tokio::time::Instant;

/// Progress lines the executor prints.
const COUNT: usize = 300;
/// Where it waits for the gate file.
const GATE_AT: usize = 150;
/// Milliseconds between its lines.
const PACE_MS: u32 = 10;
/// The test cuts the connection once the phone has seen this many lines.
const CUT_AFTER: usize = 10;
/// Generous: only there so that a broken agent fails the test instead of
/// hanging it.
const DEADLINE: Duration = Duration::from_secs(120);
const TASK: &str = "t-stream";

// ---- the relay process ----

relay_process_test!();

// ---- the agent, the executor, the phone ----

/// A `jsonl` executor: `n=0` … `n=COUNT-1`, [`PACE_MS`] apart, waiting for
/// `gate` to exist before `n=GATE_AT`; then `Finished`.
fn write_executor(dir: &Path, gate: &Path) -> PathBuf {
    let script = dir.join("count.sh");
    let pace = f64::from(PACE_MS) / 1000.0;
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
read task
i=0
while [ $i -lt {COUNT} ]; do
  if [ $i -eq {GATE_AT} ]; then
    while [ ! -e '{gate}' ]; do sleep 0.05; done
  fi
  echo "{{\"type\":\"progress\",\"text\":\"n=$i\"}}"
  i=$((i+1))
  sleep {pace}
done
echo '{{"type":"finished","status":"succeeded","summary":"counted {COUNT}"}}'
"#,
            gate = gate.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[executor]]\nname = \"count\"\ntype = \"jsonl\"\nprogram = \"{}\"\n",
            script.display()
        ),
    )
    .unwrap();
    config
}

/// One test's world: a relay, the agent (dialing `agent_url`), a paired phone.
struct World {
    dir: tempfile::TempDir,
    relay: Relay,
    agent: Agent,
    phone: Phone,
    gate: PathBuf,
    watch: Watch,
}

impl World {
    /// `tandem pair --relay URL` (the phone goes to the relay itself, never
    /// through the agent's proxy), then `tandem run` in the same process
    /// (`exec`), as a user would.
    async fn start(dir: tempfile::TempDir, relay: Relay, agent_url: &str) -> World {
        let gate = dir.path().join("gate");
        let config = write_executor(dir.path(), &gate);
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(
                r#""$TANDEM" pair --relay "$RELAY" --link-base "$LINK" --yes --print-url \
                     --no-terminal-qr --qr-png "$QR" && exec "$TANDEM" run"#,
            )
            .env("TANDEM", env!("CARGO_BIN_EXE_tandem"))
            .env("TANDEM_DATA_DIR", dir.path())
            .env("TANDEM_CONFIG", &config)
            .env("TANDEM_NAME", "build-box")
            .env("TANDEM_LOG", "warn,tandem_client=info")
            .env("NO_COLOR", "1")
            .env("RELAY", agent_url)
            .env("LINK", relay.link_base())
            .env("QR", dir.path().join("qr.png"))
            .stderr(log);
        let agent = Agent::spawn(cmd);
        let phone = Phone::pair_via(&agent, dir.path(), Some(relay.url())).await;
        World { dir, relay, agent, phone, gate, watch: Watch::default() }
    }

    /// Submit the task and wait until the phone has seen the first lines.
    async fn stream_until_cut_point(&mut self) {
        self.phone.submit(TASK, "count").await;
        self.until("the first lines", |w| w.seen.progress(TASK).len() >= CUT_AFTER).await;
        assert!(self.watch.seen.finished(TASK).is_none());
    }

    /// Let the executor go on past its halfway gate.
    fn open_gate(&self) {
        std::fs::write(&self.gate, b"").unwrap();
    }

    async fn until(&mut self, what: &str, done: impl Fn(&Watch) -> bool) {
        self.until_or(what, || false, done).await;
    }

    /// Take the phone's events until `done` (or `other`) holds, checking at
    /// least every 100 ms.
    async fn until_or(
        &mut self,
        what: &str,
        other: impl Fn() -> bool,
        done: impl Fn(&Watch) -> bool,
    ) {
        let deadline = Instant::now() + DEADLINE;
        while !done(&self.watch) && !other() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the phone saw {}\n{}\nagent log:\n{}\nrelay log (tail):\n{}",
                self.watch.summary(),
                self.watch.timeline.join("\n"),
                self.agent_log(),
                tail(&self.relay.log(), 40),
            );
            if let Ok(ev) =
                tokio::time::timeout(Duration::from_millis(100), self.phone.events.recv()).await
            {
                self.watch.on_event(&mut self.phone, ev.expect("the phone's client stopped"));
            }
        }
    }

    /// Stream to the end, take events a little longer (a duplicate would
    /// show up), and check what the phone saw.
    async fn finish(&mut self) {
        self.until("the finish", |w| w.seen.finished(TASK).is_some()).await;
        let settle = Instant::now() + Duration::from_secs(2);
        self.until_or("nothing", || Instant::now() >= settle, |_| false).await;
        eprintln!(
            "the phone saw {}\n{}\nagent log:\n{}",
            self.watch.summary(),
            self.watch.timeline.join("\n"),
            self.agent_log()
        );
        self.watch.assert_complete();
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let pid = self.agent.pid().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the phone saw.
struct Watch {
    seen: Seen,
    entropy: Entropy,
    connects: usize,
    disconnects: usize,
    /// Presence of the desktop: how often it went offline and online.
    desktop_offline: usize,
    desktop_online: usize,
    /// When things happened, for the failure message.
    started: Instant,
    timeline: Vec<String>,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            seen: Seen::default(),
            entropy: Entropy::os(),
            connects: 0,
            disconnects: 0,
            desktop_offline: 0,
            desktop_online: 0,
            started: Instant::now(),
            timeline: Vec::new(),
        }
    }
}

impl Watch {
    fn note(&mut self, what: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.timeline.push(format!("{at:7.3}s {what}"));
    }

    fn on_event(&mut self, phone: &mut Phone, ev: Event) {
        match &ev {
            Event::Deliver { .. } => {}
            other => self.note(format!("{other:?}")),
        }
        match ev {
            Event::Deliver { delivery_id, payload, .. } => {
                let mut ack_due = false;
                let events = match phone.link.receive(&phone.key, &payload, &mut self.entropy) {
                    Ok(events) => events,
                    // A record taken before (the relay delivered it again
                    // after a reconnect): dropped; say again what we have.
                    Err(LinkError::Record(RecordError::Replay(_))) => {
                        ack_due = true;
                        Vec::new()
                    }
                    Err(e) => panic!("a record from the desktop did not open: {e}"),
                };
                for event in events {
                    match event {
                        LinkEvent::Message { message, .. } => match Message::decode(&message) {
                            Ok(Decoded::Known(m)) => {
                                if let Message::TaskEvent { offset, .. } = &m
                                    && offset % 50 == 0
                                {
                                    self.note(format!("task event {offset}"));
                                }
                                if self.seen.add(m) {
                                    self.note("finished".into());
                                }
                            }
                            other => panic!("undecodable message: {other:?}"),
                        },
                        LinkEvent::ResyncNeeded { from, to } => {
                            panic!("messages {from}..={to} were lost")
                        }
                        LinkEvent::Send(envelopes) => {
                            for e in envelopes {
                                post(phone, e);
                            }
                        }
                        LinkEvent::AckDue => ack_due = true,
                        LinkEvent::SessionRenewed => {}
                    }
                }
                if ack_due {
                    // End to end, so that the agent's outbox drains.
                    let ack = phone.link.ack().unwrap();
                    post(phone, ack);
                }
                phone.client.ack(delivery_id);
            }
            Event::Connected { .. } => self.connects += 1,
            Event::Disconnected { .. } => self.disconnects += 1,
            Event::Presence { peer, online } if peer == phone.desktop => {
                if online {
                    self.desktop_online += 1;
                } else {
                    self.desktop_offline += 1;
                }
            }
            _ => {}
        }
    }

    fn summary(&self) -> String {
        let progress = self.seen.progress(TASK);
        format!(
            "{} progress lines (last {:?}), finished: {:?}, phone connects {} / disconnects {}, \
             desktop offline {} / online {}",
            progress.len(),
            progress.last(),
            self.seen.finished(TASK),
            self.connects,
            self.disconnects,
            self.desktop_offline,
            self.desktop_online
        )
    }

    /// Every line exactly once, in order; offsets 0, 1, 2, …; one finish.
    fn assert_complete(&self) {
        self.seen.assert_contiguous();
        let want: Vec<String> = (0..COUNT).map(|i| format!("n={i}")).collect();
        assert_eq!(self.seen.progress(TASK), want, "every line exactly once, in order");
        let events = &self.seen.tasks[TASK];
        assert!(matches!(events[0].1, TaskEvent::Accepted { .. }), "{:?}", events[0]);
        let finishes = events.iter().filter(|(_, e)| matches!(e, TaskEvent::Finished { .. }));
        assert_eq!(finishes.count(), 1, "exactly one Finished");
        assert!(matches!(events.last().unwrap().1, TaskEvent::Finished { .. }), "Finished is last");
        assert_eq!(self.seen.finished(TASK).unwrap().0, FinishStatus::Succeeded);
        assert_eq!(self.seen.tasks.len(), 1, "no other task: {:?}", self.seen.tasks.keys());
    }
}

/// Send a record to the desktop without waiting for the relay's answer (the
/// client retries until the relay takes it), so that the phone keeps taking
/// events while the relay is away.
fn post(phone: &Phone, record: Vec<u8>) {
    let (client, to) = (phone.client.clone(), phone.desktop);
    tokio::spawn(async move {
        let _ = client.send(to, record).await;
    });
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_killed_and_restarted_mid_stream_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let url = relay.url();
    let mut w = World::start(dir, relay, &url).await;
    w.stream_until_cut_point().await;

    // kill -9: no goodbye, no restart hint.
    let (connects, disconnects) = (w.watch.connects, w.watch.disconnects);
    w.relay.kill9();
    w.watch.note("relay killed".into());
    // Half the stream is made while the relay is gone.
    w.open_gate();
    w.until("the phone to notice", |s| s.disconnects > disconnects).await;
    // Down for a moment (the phone keeps taking events meanwhile).
    let back = Instant::now() + Duration::from_secs(1);
    w.until_or("nothing", || Instant::now() >= back, |_| false).await;
    tokio::task::block_in_place(|| w.relay.restart());
    w.watch.note("relay restarted".into());

    w.finish().await;
    assert!(w.watch.connects > connects, "the phone reconnected: {}", w.watch.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_between_agent_and_relay_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let proxy = Proxy::start(relay.addr).await;
    let mut w = World::start(dir, relay, &proxy.url()).await;
    w.stream_until_cut_point().await;

    // Every connection through the proxy is closed, new ones are refused.
    let accepted = proxy.accepted();
    proxy.set(Mode::Cut);
    w.watch.note("proxy cut".into());
    w.open_gate();
    // The relay sees the agent go (the phone hears it), and the agent keeps
    // trying, refused, for a few seconds.
    w.until("the desktop to go offline", |s| s.desktop_offline > 0).await;
    let refused = proxy.refused();
    let back = Instant::now() + Duration::from_secs(3);
    w.until_or("the agent to retry", || proxy.refused() >= refused + 2, |_| false).await;
    w.until_or("nothing", || Instant::now() >= back, |_| false).await;
    assert_eq!(proxy.accepted(), accepted);
    proxy.set(Mode::Open);
    w.watch.note("proxy open".into());

    w.finish().await;
    assert!(proxy.accepted() > accepted, "the agent reconnected through the proxy");
    let log = w.agent_log();
    assert!(!log.contains("did not answer a ping"), "the cut closed the connection:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_network_is_noticed_by_pings_and_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let proxy = Proxy::start(relay.addr).await;
    let mut w = World::start(dir, relay, &proxy.url()).await;
    w.stream_until_cut_point().await;

    // The connection stays open, but nothing gets through either way: not
    // even the relay closing it. Only the agent's own pings can tell.
    let accepted = proxy.accepted();
    proxy.set(Mode::Blackhole);
    w.watch.note("proxy blackholed".into());
    w.open_gate();
    // The relay's pings go unanswered: it drops the agent.
    w.until("the desktop to go offline", |s| s.desktop_offline > 0).await;
    // The agent's ping goes unanswered: it gives up the connection and dials
    // again (held by the proxy for now).
    w.until_or("the agent to dial again", || proxy.accepted() > accepted, |_| false).await;
    proxy.set(Mode::Open);
    w.watch.note("proxy open".into());

    w.finish().await;
    // Its regular ping, or the probe ping of the client's stall check
    // (PROTOCOL §6.4), whichever went unanswered first.
    let log = w.agent_log();
    assert!(
        log.contains("did not answer a ping") || log.contains("did not answer a probe"),
        "the agent's ping found the dead connection:\n{}",
        w.agent_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_stopped_like_a_sleeping_laptop_reconnects_and_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    // Through a proxy that stays open, to count the agent's connections.
    let proxy = Proxy::start(relay.addr).await;
    let mut w = World::start(dir, relay, &proxy.url()).await;
    w.stream_until_cut_point().await;

    let accepted = proxy.accepted();
    let stopped = Instant::now();
    w.signal("-STOP");
    w.watch.note("agent stopped".into());
    // The executor goes on meanwhile: its lines wait in the pipe.
    w.open_gate();
    // Longer than the relay's ping deadline: it drops the silent agent.
    w.until("the desktop to go offline", |s| s.desktop_offline > 0).await;
    // And longer than the agent's wake threshold (10 s).
    let asleep_until = stopped + Duration::from_secs(13);
    w.until_or("nothing", || Instant::now() >= asleep_until, |_| false).await;
    assert_eq!(proxy.accepted(), accepted, "a stopped agent cannot dial");
    w.signal("-CONT");
    w.watch.note("agent continued".into());

    w.finish().await;
    assert!(proxy.accepted() > accepted, "the agent reconnected");
    assert!(w.watch.desktop_online > 0, "the phone heard the desktop come back");
    let log = w.agent_log();
    assert!(log.contains("woke up"), "the agent noticed the stall:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_while_the_relay_is_unreachable_reaches_it_on_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let proxy = Proxy::start(relay.addr).await;
    let mut w = World::start(dir, relay, &proxy.url()).await;

    // The agent cannot reach the relay; the phone still can.
    proxy.set(Mode::Cut);
    w.watch.note("proxy cut".into());
    w.until("the desktop to go offline", |s| s.desktop_offline > 0).await;
    let id = w.phone.key.public().device_id().to_string();
    let dir = w.dir.path().to_owned();
    let out = tokio::task::block_in_place(|| common::tandem(&dir, &["revoke", &id]));
    assert!(out.contains("could not be told now"), "{out}");
    // The relay has not heard: it still routes the phone's frames.
    let (_, record) = w.phone.link.send(b"{}".to_vec()).unwrap();
    w.phone.client.send(w.phone.desktop, record).await.unwrap();

    // The network comes back; the same agent process reconnects and tells
    // the relay, which refuses the phone from then on.
    proxy.set(Mode::Open);
    w.watch.note("proxy open".into());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, record) = w.phone.link.send(b"{}".to_vec()).unwrap();
        match w.phone.client.send(w.phone.desktop, record).await {
            Err(tandem_client::ClientError::Refused(code, _)) => {
                assert_eq!(code, tandem_proto::ErrorCode::NotAuthorized);
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "the relay still routes the revoked phone ({other:?}); agent log:\n{}",
                w.agent_log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The relay confirmed it to the agent: no longer pending.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("agent.json")).unwrap()).unwrap();
        if config["pending_revokes"] == serde_json::json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "still pending: {config}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The relay closes a pairing mailbox with the connection that opened it: a
/// code on screen while the agent's connection drops and comes back must
/// still pair (its mailbox is opened again on the new connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_on_screen_across_a_reconnection_still_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path());
    let proxy = Proxy::start(relay.addr).await;
    let config = common::fixture_config(dir.path(), "");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.args(["pair", "--relay", &proxy.url(), "--link-base", &relay.link_base()])
        .args(["--yes", "--print-url", "--no-terminal-qr", "--qr-png"])
        .arg(dir.path().join("qr.png"))
        .env("TANDEM_DATA_DIR", dir.path())
        .env("TANDEM_CONFIG", &config)
        .env("TANDEM_NAME", "build-box")
        .env("TANDEM_LOG", "warn,tandem_client=info,tandem_agent::pair=info")
        .env("NO_COLOR", "1")
        .stderr(log);
    let agent = Agent::spawn(cmd);
    let link = common::scan(&agent, dir.path());
    assert_eq!(proxy.accepted(), 1);

    // The agent's connection drops and comes back while the code shows.
    proxy.set(Mode::Cut);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.refused() == 0 {
        assert!(Instant::now() < deadline, "the agent did not try again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.set(Mode::Open);
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.accepted() < 2 {
        assert!(Instant::now() < deadline, "the agent did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(dir.path().join("agent.log"))
        .unwrap_or_default()
        .contains("mailbox reopened")
    {
        assert!(Instant::now() < deadline, "the mailbox was not reopened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same code: the phone's claim reaches the desktop and pairs.
    let claimed = tokio::time::timeout(
        Duration::from_secs(30),
        common::Claimed::claim(
            &agent,
            &link,
            Some(relay.url()),
            common::new_key(),
            common::info("Ana's phone"),
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the code shown before the reconnection no longer pairs; agent log:\n{}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        )
    });
    claimed.result().await.unwrap();
    agent.line_starting("Paired with Ana's phone");
}
