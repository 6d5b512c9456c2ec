//! Every instruction from a phone is applied exactly once, whatever step
//! the agent is killed at (`docs/PROTOCOL.md` §13.5 rule 3, issue 14).
//!
//! For each instruction (`task_submit`, `follow_up`, `cancel`,
//! `approval_decision`) and each crash point on its path
//! (`desktop-agent/src/crashpoint.rs`: audited, applied, link saved,
//! replied, sent; and `agent.event_saved` for a submit), the real `tandem
//! run` is started with `FAILPOINTS=<point>=return`, the phone engine
//! (`tandem-phone`, in this process) sends the instruction, the agent
//! aborts there (`SIGABRT`, no clean-up, as `kill -9`), and is started
//! again without the failpoint. Then the desktop's history, read by the
//! phone, shows the effect once: one task accepted and finished once, one
//! follow-up (and one resumed run), the cancelled task finished once as
//! cancelled, the approval resolved once (or, when the agent died before
//! applying the decision and so interrupted its task, the phone told
//! `not_pending`); the audit log has the instruction's line once; and the
//! phone saw the result, and no refusal of the
//! redelivered instruction (the applied marker skipped it). A refused
//! instruction leaves no marker: its refusal reaches the phone once after a
//! crash at any step; a task applied before a crash is announced at the
//! restart even while it waits in the queue. The relay is the real
//! relay in a process of its own (`common/relay.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Agent;
use common::relay::Relay;
use tandem_agent::crashpoint;
use tandem_phone::{FinishStatus, Phone, PhoneConfig, PhoneEvent, TaskEvent};
use tokio::sync::broadcast;

relay_process_test!();

/// Only there so that a broken build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(45);

/// A relay, an agent data dir paired with a phone engine, and that phone.
struct World {
    _dir: tempfile::TempDir,
    config: PathBuf,
    _relay: Relay,
    agent_dir: PathBuf,
    desktop: String,
    phone: Phone,
    events: broadcast::Receiver<PhoneEvent>,
    /// Task events the phone saw, per task.
    seen: BTreeMap<String, Vec<TaskEvent>>,
    /// Refusals the phone saw: (task, code).
    refused: Vec<(String, String)>,
}

impl World {
    /// `tandem pair` with the phone engine; executors: the JSON-lines
    /// fixture (default) and the fake Claude Code (resumable).
    async fn pair() -> World {
        let dir = tempfile::tempdir().unwrap();
        let claude = format!(
            "[[executor]]\nname = \"claude\"\ntype = \"claude\"\nprogram = \"{}\"\n",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/fake-claude")
                .display()
        );
        let config = common::fixture_config(dir.path(), &claude);
        let relay = Relay::start(dir.path());
        let agent_dir = dir.path().join("desk");
        let (mut pairing, link) = tokio::task::block_in_place(|| {
            common::pair_process(&agent_dir, &config, &relay.url(), &relay.link_base())
        });
        let phone =
            Phone::open(PhoneConfig::new(dir.path().join("phone"), "Ana's phone")).await.unwrap();
        let p = phone.start_pairing(&link).await.unwrap();
        let desktop = p.wait().await.unwrap().desktop_id;
        tokio::task::block_in_place(|| {
            assert!(pairing.exit_within(Duration::from_secs(30)).unwrap().success());
        });
        let events = phone.subscribe();
        World {
            _dir: dir,
            config,
            _relay: relay,
            agent_dir,
            desktop,
            phone,
            events,
            seen: BTreeMap::new(),
            refused: Vec::new(),
        }
    }

    fn agent(&self, point: Option<&str>) -> Agent {
        match point {
            Some(p) => self.agent_with(&format!("{p}=return")),
            None => tokio::task::block_in_place(|| {
                common::run_process(&self.agent_dir, &self.config, &[])
            }),
        }
    }

    /// The agent with `FAILPOINTS` set to `failpoints`.
    fn agent_with(&self, failpoints: &str) -> Agent {
        let env = [("FAILPOINTS", failpoints.to_owned())];
        tokio::task::block_in_place(|| common::run_process(&self.agent_dir, &self.config, &env))
    }

    /// How many audit lines of `event` name `task`.
    fn audited(&self, event: &str, task: &str) -> usize {
        let log = std::fs::read_to_string(self.agent_dir.join("audit.log")).unwrap();
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == event && v["task_id"] == task)
            .count()
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.agent_dir.join("agent.log")).unwrap_or_default()
    }

    /// The agent dies at `point` by its own abort.
    fn crashes_at(&self, agent: &mut Agent, point: &str) {
        let status = tokio::task::block_in_place(|| agent.exit_within(WAIT)).unwrap_or_else(|| {
            panic!("the agent never reached {point}:\n{}", tail(&self.agent_log()))
        });
        assert_eq!(status.signal(), Some(6), "the agent died at {point} by SIGABRT: {status:?}");
        assert!(self.agent_log().contains(&format!("FAILPOINTS: {point}: aborting here")));
    }

    /// Take the phone's events until `done` holds.
    async fn until(&mut self, what: &str, done: impl Fn(&World) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the phone saw {:?} and refusals {:?}\nagent log:\n{}",
                self.seen,
                self.refused,
                tail(&self.agent_log())
            );
            match tokio::time::timeout(Duration::from_millis(200), self.events.recv()).await {
                Ok(Ok(PhoneEvent::Task(t))) => {
                    self.seen.entry(t.task_id).or_default().push(t.event)
                }
                Ok(Ok(PhoneEvent::Refused { task_id, code, .. })) => {
                    self.refused.push((task_id.unwrap_or_default(), code));
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => panic!("the phone's events: {e}"),
            }
        }
    }

    /// Take the events the phone has already emitted, without waiting.
    fn drain(&mut self) {
        use broadcast::error::TryRecvError;
        loop {
            match self.events.try_recv() {
                Ok(PhoneEvent::Task(t)) => self.seen.entry(t.task_id).or_default().push(t.event),
                Ok(PhoneEvent::Refused { task_id, code, .. }) => {
                    self.refused.push((task_id.unwrap_or_default(), code));
                }
                Ok(_) => {}
                Err(TryRecvError::Empty) => return,
                Err(e) => panic!("the phone's events: {e}"),
            }
        }
    }

    /// The refusals the phone saw for `task`, once every earlier reply is
    /// in: a history request goes after the redelivered instruction on the
    /// same link, so its answer comes after that instruction's reply.
    async fn refusals_of(&mut self, task: &str) -> Vec<String> {
        self.history(task).await;
        self.drain();
        self.refused.iter().filter(|(id, _)| id == task).map(|(_, c)| c.clone()).collect()
    }

    fn finishes(&self, task: &str) -> usize {
        self.seen.get(task).map_or(0, |e| count(e, is_finished))
    }

    /// Wait until the phone saw `n` finishes of `task`.
    async fn until_finished(&mut self, task: &str, n: usize) {
        let t = task.to_owned();
        self.until(&format!("{n} finish(es) of {task}"), move |w| w.finishes(&t) >= n).await;
    }

    /// The desktop's history of `task`, as the phone reads it.
    async fn history(&self, task: &str) -> Vec<TaskEvent> {
        let page = self.phone.history(&self.desktop, task, 0).await.unwrap();
        assert!(!page.more);
        page.events.into_iter().map(|e| e.event).collect()
    }

    async fn submit(&self, text: &str, executor: Option<&str>) -> String {
        self.phone.submit(&self.desktop, text, executor.map(str::to_owned)).await.unwrap()
    }
}

fn count(events: &[TaskEvent], f: impl Fn(&TaskEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

fn is_finished(e: &TaskEvent) -> bool {
    matches!(e, TaskEvent::Finished { .. })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Stop the agent cleanly (SIGTERM).
fn stop(mut agent: Agent) {
    let pid = agent.pid().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(
        tokio::task::block_in_place(|| agent.exit_within(WAIT)).is_some(),
        "the agent stops on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_is_applied_once_whatever_step_the_agent_dies_at() {
    let mut w = World::pair().await;
    let points = std::iter::once("agent.event_saved").chain(crashpoint::SUBMIT.all());
    for point in points {
        let mut agent = w.agent(Some(point));
        let task = w.submit("count 2 10", None).await;
        w.crashes_at(&mut agent, point);
        let agent = w.agent(None);
        w.until_finished(&task, 1).await;
        let history = w.history(&task).await;
        let accepted = count(&history, |e| matches!(e, TaskEvent::Accepted { .. }));
        assert_eq!(accepted, 1, "{point}: accepted once: {history:?}");
        assert_eq!(count(&history, is_finished), 1, "{point}: ran once: {history:?}");
        assert!(is_finished(history.last().unwrap()), "{point}: {history:?}");
        assert_eq!(w.audited("task_submitted", &task), 1, "{point}: audited once");
        stop(agent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_is_applied_once_whatever_step_the_agent_dies_at() {
    let mut w = World::pair().await;
    for point in crashpoint::FOLLOW_UP.all() {
        let mut agent = w.agent(Some(point));
        // A finished Claude Code task: a follow-up resumes it.
        let task = w.submit("echo first", Some("claude")).await;
        w.until_finished(&task, 1).await;
        w.phone.follow_up(&w.desktop, &task, "echo more").await.unwrap();
        w.crashes_at(&mut agent, point);
        let agent = w.agent(None);
        w.until_finished(&task, 2).await;
        let history = w.history(&task).await;
        let follow_ups = count(&history, |e| matches!(e, TaskEvent::FollowUp { .. }));
        assert_eq!(follow_ups, 1, "{point}: one follow-up: {history:?}");
        assert_eq!(count(&history, is_finished), 2, "{point}: resumed once: {history:?}");
        assert_eq!(w.audited("follow_up", &task), 1, "{point}: audited once");
        stop(agent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_is_applied_once_whatever_step_the_agent_dies_at() {
    let mut w = World::pair().await;
    for point in crashpoint::CANCEL.all() {
        let mut agent = w.agent(Some(point));
        // One task runs (ten seconds), the other waits behind it.
        let running = w.submit("count 100 100", None).await;
        let queued = w.submit("count 100 100", None).await;
        let q = queued.clone();
        w.until("the second task queued", move |w| w.seen.contains_key(&q)).await;
        w.phone.cancel(&w.desktop, &queued).await.unwrap();
        w.crashes_at(&mut agent, point);
        let agent = w.agent(None);
        w.until_finished(&queued, 1).await;
        w.until_finished(&running, 1).await;
        let history = w.history(&queued).await;
        assert_eq!(count(&history, is_finished), 1, "{point}: finished once: {history:?}");
        assert!(
            matches!(
                history.last().unwrap(),
                TaskEvent::Finished { status: FinishStatus::Cancelled, .. }
            ),
            "{point}: cancelled: {history:?}"
        );
        // Applied once: the redelivery was skipped, not refused `finished`.
        let refusals = w.refusals_of(&queued).await;
        assert!(refusals.is_empty(), "{point}: the redelivered cancel was refused: {refusals:?}");
        assert_eq!(w.audited("cancelled", &queued), 1, "{point}: audited once");
        stop(agent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_applied_once_whatever_step_the_agent_dies_at() {
    let mut w = World::pair().await;
    for point in crashpoint::DECIDE.all() {
        let mut agent = w.agent(Some(point));
        let task = w.submit("approve-twice", None).await;
        let t = task.clone();
        w.until("the first approval request", move |w| {
            w.seen
                .get(&t)
                .is_some_and(|e| e.iter().any(|e| matches!(e, TaskEvent::ApprovalRequest { .. })))
        })
        .await;
        w.phone.decide(&w.desktop, &task, "a1", true).await.unwrap();
        w.crashes_at(&mut agent, point);
        let agent = w.agent(None);
        // The crash interrupted the task (its executor died with the agent).
        w.until_finished(&task, 1).await;
        let history = w.history(&task).await;
        let resolved = count(
            &history,
            |e| matches!(e, TaskEvent::ApprovalResolved { approval_id, allow: true, .. } if approval_id == "a1"),
        );
        if point == crashpoint::DECIDE.audited {
            // Died before applying it: the approval died with the task, and
            // the phone is told so when the decision arrives again.
            let t = task.clone();
            w.until("the refusal", move |w| {
                w.refused.iter().any(|(id, code)| *id == t && code == "not_pending")
            })
            .await;
            assert_eq!(resolved, 0, "{point}: {history:?}");
        } else {
            assert_eq!(resolved, 1, "{point}: resolved once: {history:?}");
            // The redelivery was skipped, not refused `not_pending`.
            let refusals = w.refusals_of(&task).await;
            assert!(
                refusals.is_empty(),
                "{point}: the redelivered decision was refused: {refusals:?}"
            );
        }
        assert_eq!(count(&history, is_finished), 1, "{point}: {history:?}");
        stop(agent);
    }
}

/// An instruction that is refused records nothing, so it leaves no applied
/// marker: killed after deciding it and before its receipt was saved, the
/// agent decides it again when the relay delivers it again; killed after,
/// the refusal was saved in the outbox with the receipt (one write) and
/// goes out from there. Either way the phone is told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_sent_once_whatever_step_the_agent_dies_at() {
    let mut w = World::pair().await;
    for point in crashpoint::CANCEL.all() {
        let mut agent = w.agent(Some(point));
        let task = format!("no-such-task-{point}");
        w.phone.cancel(&w.desktop, &task).await.unwrap();
        w.crashes_at(&mut agent, point);
        let agent = w.agent(None);
        let t = task.clone();
        w.until("the refusal", move |w| {
            w.refused.iter().any(|(id, code)| *id == t && code == "unknown_task")
        })
        .await;
        let refusals = w.refusals_of(&task).await;
        assert_eq!(refusals, ["unknown_task"], "{point}: told once");
        assert_eq!(w.audited("cancelled", &task), 1, "{point}: audited once");
        stop(agent);
    }
}

/// Killed after a submit was applied (the task queued behind another) and
/// before its replies were sealed, the agent announces the task
/// (`accepted`, `queued`) when it starts again, not when the task starts:
/// the phone has no cursor for it, and catch-up sends an unfinished task
/// from its start to a phone without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_submit_is_announced_at_the_restart_after_a_crash_at_applied() {
    let mut w = World::pair().await;
    let point = crashpoint::SUBMIT.applied;
    // The third submit dies there; the first two pass.
    let mut agent = w.agent_with(&format!("{point}=2*off->return"));
    // One task runs, one waits; after the restart the first is interrupted
    // and the second runs for a minute, longer than any wait here.
    let first = w.submit("count 600 100", None).await;
    let f = first.clone();
    w.until("the first task", move |w| w.seen.contains_key(&f)).await;
    let second = w.submit("count 600 100", None).await;
    let s = second.clone();
    w.until("the second task queued", move |w| w.seen.contains_key(&s)).await;
    let third = w.submit("count 1 1", None).await;
    w.crashes_at(&mut agent, point);
    let agent = w.agent(None);
    let t = third.clone();
    w.until("the third task's acceptance", move |w| {
        w.seen.get(&t).is_some_and(|e| e.iter().any(|e| matches!(e, TaskEvent::Accepted { .. })))
    })
    .await;
    assert_eq!(w.finishes(&second), 0, "announced while the task ahead of it still runs");
    assert!(
        !w.seen[&third].iter().any(|e| matches!(e, TaskEvent::Progress { .. })),
        "announced before it started: {:?}",
        w.seen[&third]
    );
    stop(agent);
}
