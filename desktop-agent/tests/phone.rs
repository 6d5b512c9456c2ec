//! The shared phone engine (`tandem-phone`, what the mobile SDK wraps)
//! against the real agent and relay: pairing from the printed link (the
//! code matches the desktop's), a task with progress, a tool result and an
//! approval, history and the task list, a `kill -9` of the agent and its
//! relay mid-task with every event once and in order, and the errors for an
//! expired code, a code for another relay and a revoked phone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Agent, tandem};
use tandem_phone::{Phone, PhoneConfig, PhoneError, PhoneEvent, TaskEvent};
use tandem_proto::qr::PairingLink;
use tokio::sync::broadcast;

/// Every task event the phone reported, per task.
async fn until(
    events: &mut broadcast::Receiver<PhoneEvent>,
    seen: &mut BTreeMap<String, Vec<(u64, TaskEvent)>>,
    done: impl Fn(&BTreeMap<String, Vec<(u64, TaskEvent)>>) -> bool,
) {
    until_any(events, seen, &mut Vec::new(), |s, _| done(s)).await;
}

fn finished(seen: &BTreeMap<String, Vec<(u64, TaskEvent)>>, task: &str) -> bool {
    seen.get(task)
        .is_some_and(|evs| evs.iter().any(|(_, e)| matches!(e, TaskEvent::Finished { .. })))
}

async fn pair(agent: &Agent, dir: &std::path::Path, name: &str) -> (Phone, String) {
    let link = agent
        .line_starting("pairing link: ")
        .trim()
        .trim_start_matches("pairing link: ")
        .to_owned();
    let phone = Phone::open(PhoneConfig::new(dir.join(name), name)).await.unwrap();
    let pairing = phone.start_pairing(&link).await.unwrap();
    assert_eq!(pairing.desktop_name(), "build-box");
    let code = agent.line_starting("Code: ");
    assert_eq!(code.trim(), format!("Code: {}", pairing.sas()), "both screens show the same code");
    let desktop = pairing.wait().await.unwrap();
    agent.line_starting("Connected.");
    (phone, desktop.desktop_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_engine_pairs_runs_tasks_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let printed = agent
        .line_starting("pairing link: ")
        .trim()
        .trim_start_matches("pairing link: ")
        .to_owned();

    // An expired code and a code for another relay fail clearly.
    let mut link = PairingLink::parse(&printed, common::now_unix()).unwrap();
    let phone =
        Phone::open(PhoneConfig::new(dir.path().join("phone"), "Ana's phone")).await.unwrap();
    let mut expired = link.payload.clone();
    expired.expires_at = 1_000;
    let err = phone
        .start_pairing(&expired.to_link(&format!("{}{}", link.origin, link.path)))
        .await
        .unwrap_err();
    assert_eq!(err, PhoneError::Expired);
    let other = Agent::up(&dir.path().join("other"), &config);
    let other_link = other.line_starting("pairing link: ");
    let other_origin = PairingLink::parse(
        other_link.trim().trim_start_matches("pairing link: "),
        common::now_unix(),
    )
    .unwrap()
    .origin;
    link.origin = other_origin;
    let err = phone
        .start_pairing(&link.payload.to_link(&format!("{}{}", link.origin, link.path)))
        .await
        .unwrap_err();
    assert!(matches!(err, PhoneError::WrongRelay(_)), "{err:?}");
    drop(other);

    // Pair from the real link.
    let pairing = phone.start_pairing(&printed).await.unwrap();
    let code = agent.line_starting("Code: ");
    assert_eq!(code.trim(), format!("Code: {}", pairing.sas()));
    let desktop = pairing.wait().await.unwrap().desktop_id;
    agent.line_starting("Connected.");
    assert_eq!(phone.desktops().len(), 1);
    let mut events = phone.subscribe();
    let mut seen = BTreeMap::new();

    // A task with an approval.
    let t1 = phone.submit(&desktop, "approve-twice", None).await.unwrap();
    for approval in ["a1", "a2"] {
        until(&mut events, &mut seen, |s| {
            s.get(&t1).is_some_and(|evs| evs.iter().any(|(_, e)| matches!(e, TaskEvent::ApprovalRequest { approval_id, .. } if approval_id == approval)))
        })
        .await;
        phone.decide(&desktop, &t1, approval, approval == "a1").await.unwrap();
    }
    until(&mut events, &mut seen, |s| finished(s, &t1)).await;
    let progress: Vec<String> = seen[&t1]
        .iter()
        .filter_map(|(_, e)| match e {
            TaskEvent::Progress { text } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(progress, ["a1:allowed", "a2:denied"]);

    // History and the task list.
    let page = phone.history(&desktop, &t1, 2).await.unwrap();
    assert_eq!(page.events.first().unwrap().offset, 2);
    assert_eq!(page.next_offset, seen[&t1].len() as u64);
    assert!(!page.more);
    let tasks = phone.tasks(&desktop).await.unwrap();
    assert_eq!(tasks[0].task_id, t1);

    // A crash of the agent and its relay mid-task: the phone reconnects and
    // sees every event once, in order.
    let t2 = phone.submit(&desktop, "count 300 10", None).await.unwrap();
    until(&mut events, &mut seen, |s| s.get(&t2).is_some_and(|e| e.len() > 20)).await;
    let relay_addr = PairingLink::parse(&printed, common::now_unix())
        .unwrap()
        .origin
        .trim_start_matches("http://")
        .to_owned();
    agent.kill9();
    let agent = Agent::up_at(dir.path(), &config, &relay_addr);
    agent.line_starting("Connected.");
    until(&mut events, &mut seen, |s| finished(s, &t2)).await;
    let offsets: Vec<u64> = seen[&t2].iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "each event once, in order");
    for (task, evs) in &seen {
        let offs: Vec<u64> = evs.iter().map(|(o, _)| *o).collect();
        assert_eq!(offs, (0..offs.len() as u64).collect::<Vec<_>>(), "task {task}");
    }

    // Revoked: the relay refuses the phone's messages. The task stays in
    // the outbox, and the call says so (with its id, for a retry).
    let revoked = tandem(dir.path(), &["revoke", "Ana's phone"]);
    assert!(revoked.contains("refuses it"), "{revoked}");
    let err = phone.submit(&desktop, "count 1 1", None).await.unwrap_err();
    assert!(
        matches!(&err, PhoneError::Queued { task_id: Some(_), cause } if **cause == PhoneError::Revoked),
        "{err:?}"
    );
    phone.close().await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_phone_keeps_its_desktops_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let (phone, desktop) = pair(&agent, dir.path(), "phone").await;
    let mut events = phone.subscribe();
    let mut seen = BTreeMap::new();
    let t = phone.submit(&desktop, "count 3 1", None).await.unwrap();
    until(&mut events, &mut seen, |s| finished(s, &t)).await;
    phone.close().await;
    drop(phone);
    let phone = Phone::open(PhoneConfig::new(dir.path().join("phone"), "phone")).await.unwrap();
    assert_eq!(phone.desktops()[0].desktop_id, desktop);
    let mut events = phone.subscribe();
    let mut seen2 = BTreeMap::new();
    let t2 = phone.submit(&desktop, "count 2 1", None).await.unwrap();
    until(&mut events, &mut seen2, |s| finished(s, &t2)).await;
    assert!(!seen2.contains_key(&t), "no event of the first task again");
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_phone_fills_the_gap_from_history() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\nidle_detach_secs = 2\n");
    let agent = Agent::up(dir.path(), &config);
    let (phone, desktop) = pair(&agent, dir.path(), "phone").await;
    let mut events = phone.subscribe();
    let t = phone.submit(&desktop, "count 120 40", None).await.unwrap();
    let mut seen = BTreeMap::new();
    let mut detached = false;
    while !finished(&seen, &t) {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await.unwrap().unwrap() {
            PhoneEvent::Task(e) => seen.entry(e.task_id).or_default().push((e.offset, e.event)),
            PhoneEvent::Detached { idle_secs, .. } => {
                assert_eq!(idle_secs, 2);
                detached = true;
            }
            _ => {}
        }
    }
    assert!(detached, "the idle phone was detached");
    // The engine saw the gap at the finish and filled it from the history:
    // the app still got every event once, in order.
    let offsets: Vec<u64> = seen[&t].iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    assert_eq!(offsets.len(), 1 + 120 + 1, "accepted, 120 lines, finished");
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_phone_and_agent_stop_exchanging_records() {
    // Regression: each side acked the other's acks, forever.
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let (phone, desktop) = pair(&agent, dir.path(), "phone").await;
    let mut events = phone.subscribe();
    let mut seen = BTreeMap::new();
    let t = phone.submit(&desktop, "count 2 1", None).await.unwrap();
    until(&mut events, &mut seen, |s| finished(s, &t)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let file = dir.path().join("phone/desktops").join(format!("{desktop}.json"));
    let before = std::fs::read(&file).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(before, std::fs::read(&file).unwrap(), "records keep flowing while idle");
    phone.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_of_a_running_task_are_contiguous() {
    // Regression: live events racing the replay were mixed into the page.
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let (phone, desktop) = pair(&agent, dir.path(), "phone").await;
    let mut events = phone.subscribe();
    let mut seen = BTreeMap::new();
    let t = phone.submit(&desktop, "count 300 5", None).await.unwrap();
    until(&mut events, &mut seen, |s| s.get(&t).is_some_and(|e| e.len() > 20)).await;
    for _ in 0..5 {
        let page = phone.history(&desktop, &t, 0).await.unwrap();
        let offs: Vec<u64> = page.events.iter().map(|e| e.offset).collect();
        assert_eq!(offs, (0..offs.len() as u64).collect::<Vec<_>>());
        assert_eq!(page.next_offset, offs.len() as u64);
    }
    phone.close().await;
}

/// Every event the phone reports until `done` holds: task events by task,
/// and the refusals' codes.
async fn until_any(
    events: &mut broadcast::Receiver<PhoneEvent>,
    seen: &mut BTreeMap<String, Vec<(u64, TaskEvent)>>,
    refusals: &mut Vec<String>,
    done: impl Fn(&BTreeMap<String, Vec<(u64, TaskEvent)>>, &[String]) -> bool,
) {
    while !done(seen, refusals) {
        let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("an event in time")
            .unwrap();
        match e {
            PhoneEvent::Task(t) => seen.entry(t.task_id).or_default().push((t.offset, t.event)),
            PhoneEvent::Refused { code, .. } => refusals.push(code),
            _ => {}
        }
    }
}

fn requested(seen: &BTreeMap<String, Vec<(u64, TaskEvent)>>, task: &str) -> bool {
    seen.get(task)
        .is_some_and(|evs| evs.iter().any(|(_, e)| matches!(e, TaskEvent::ApprovalRequest { .. })))
}

fn resolved(
    seen: &BTreeMap<String, Vec<(u64, TaskEvent)>>,
    task: &str,
) -> (bool, String, Option<String>) {
    seen.get(task)
        .and_then(|evs| {
            evs.iter().find_map(|(_, e)| match e {
                TaskEvent::ApprovalResolved { allow, by, rule, .. } => {
                    Some((*allow, by.clone(), rule.clone()))
                }
                _ => None,
            })
        })
        .expect("the approval was resolved")
}

/// "Always allow" from the phone engine (`Phone::allow_always`): a device
/// without the `rules` scope has its step allowed once and is told no rule
/// was added; with it (granted by `tandem scope … rules`) the allow adds a
/// rule every phone sees, the next identical step is allowed by the rule
/// without asking, `tandem rules` lists it with who added it, the audit log
/// has it, and once `tandem rules remove 1` takes it away (through the
/// running agent) the phone is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_allow_adds_a_rule_only_for_a_device_with_the_rules_scope() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let (phone, desktop) = pair(&agent, dir.path(), "phone").await;
    let mut events = phone.subscribe();
    let (mut seen, mut refusals) = (BTreeMap::new(), Vec::new());
    let command = "approve-tool cargo test --lib [a]*";

    // Without the scope: allowed once, and told why no rule was added.
    let t1 = phone.submit(&desktop, command, None).await.unwrap();
    until_any(&mut events, &mut seen, &mut refusals, |s, _| requested(s, &t1)).await;
    phone.allow_always(&desktop, &t1, "t1").await.unwrap();
    until_any(&mut events, &mut seen, &mut refusals, |s, r| {
        finished(s, &t1) && r.iter().any(|c| c == "scope")
    })
    .await;
    let (allow, by, rule) = resolved(&seen, &t1);
    assert!(allow && by.starts_with("phone:") && rule.is_none(), "{by} {rule:?}");
    assert!(
        tandem(dir.path(), &["--config", config.to_str().unwrap(), "rules"])
            .contains("Added from phones (\"always allow\"; `tandem rules remove N`):\n  none\n")
    );

    // With it: the allow adds the rule, shown with the resolution.
    let out = tandem(dir.path(), &["scope", "phone", "rules"]);
    assert!(out.contains("scope is now rules"), "{out}");
    let t2 = phone.submit(&desktop, command, None).await.unwrap();
    until_any(&mut events, &mut seen, &mut refusals, |s, _| requested(s, &t2)).await;
    phone.allow_always(&desktop, &t2, "t1").await.unwrap();
    until_any(&mut events, &mut seen, &mut refusals, |s, _| finished(s, &t2)).await;
    let pattern = r"Bash(cargo test --lib \[a\]\*)";
    assert_eq!(resolved(&seen, &t2).2.as_deref(), Some(format!("allow {pattern}").as_str()));

    // The same step again: the rule answers, the phone is not asked (it
    // still sees the request and how it was decided).
    let t3 = phone.submit(&desktop, command, None).await.unwrap();
    until_any(&mut events, &mut seen, &mut refusals, |s, _| finished(s, &t3)).await;
    let (allow, by, _) = resolved(&seen, &t3);
    assert!(allow && by == format!("rule:allow {pattern}"), "{by}");
    let progress: Vec<String> = seen[&t3]
        .iter()
        .filter_map(|(_, e)| match e {
            TaskEvent::Progress { text } => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert!(progress.contains(&"allowed".to_owned()), "{progress:?}");
    // A different command is not covered by it.
    let t4 = phone.submit(&desktop, "approve-tool cargo test --lib x", None).await.unwrap();
    until_any(&mut events, &mut seen, &mut refusals, |s, _| requested(s, &t4)).await;
    phone.decide(&desktop, &t4, "t1", false).await.unwrap();
    until_any(&mut events, &mut seen, &mut refusals, |s, _| finished(s, &t4)).await;
    assert!(resolved(&seen, &t4).1.starts_with("phone:"));

    // The desktop user sees it, and takes it away.
    let listed = tandem(dir.path(), &["--config", config.to_str().unwrap(), "rules"]);
    assert!(
        listed.contains(&format!("  1. allow {pattern}  executor=fixture  added by ")),
        "{listed}"
    );
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("\"rule_added\"") && audit.contains("cargo test --lib"), "{audit}");
    let out = tandem(dir.path(), &["--config", config.to_str().unwrap(), "rules", "remove", "1"]);
    assert!(out.contains(&format!("Removed rule 1: allow {pattern}")), "{out}");
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("\"rule_removed\""), "the removal is audited: {audit}");
    // A number that names no rule now is refused, nothing removed.
    let (code, _) = common::tandem_status(
        dir.path(),
        &["--config", config.to_str().unwrap(), "rules", "remove", "1"],
    );
    assert_ne!(code, Some(0));
    let t5 = phone.submit(&desktop, command, None).await.unwrap();
    until_any(&mut events, &mut seen, &mut refusals, |s, _| requested(s, &t5)).await;
    phone.decide(&desktop, &t5, "t1", true).await.unwrap();
    until_any(&mut events, &mut seen, &mut refusals, |s, _| finished(s, &t5)).await;
    assert!(resolved(&seen, &t5).1.starts_with("phone:"), "asked again once the rule is gone");
}

/// Concurrent `Phone::sessions` calls never get each other's answers (an
/// attack review found them swapped): the desktop answers a bad request at
/// once and a good one later, and neither answer says which request it
/// answers, so the engine keeps one waiting per desktop and refuses a
/// second at once (`busy`); each call gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_calls_never_get_each_others_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up(dir.path(), &config);
    let (phone, desktop) = pair(&agent, dir.path(), "phone").await;
    let code = |r: &Result<_, PhoneError>| match r {
        Err(PhoneError::Refused { code, .. }) => code.clone(),
        other => format!("{other:?}"),
    };
    for _ in 0..10 {
        let (good, bad) = tokio::join!(
            phone.sessions(&desktop, None, None),
            phone.sessions(&desktop, Some("no-such-executor".into()), None),
        );
        let (good, bad) = (code(&good), code(&bad));
        assert!(
            matches!((good.as_str(), bad.as_str()), ("not_supported", "busy" | "unknown_executor")),
            "{good} {bad}"
        );
        assert_eq!(
            code(&phone.sessions(&desktop, Some("no-such-executor".into()), None).await),
            "unknown_executor"
        );
    }
}

/// The hand-off from the terminal through the phone engine
/// (`Phone::sessions`, `Phone::submit_resume`): a Claude Code session in
/// the store the `claude` executor reads is listed by its first prompt and
/// continued with `--resume ID` (the stand-in Claude Code logs its command
/// line); the thread says which session the task continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_engine_lists_and_continues_a_terminal_session() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let (work, store, argv) = (root.join("work"), root.join("claude"), root.join("argv.jsonl"));
    std::fs::create_dir_all(&work).unwrap();
    let fake = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-claude");
    let config = common::fixture_config(
        &root,
        &format!(
            "[[executor]]\nname = \"claude\"\ntype = \"claude\"\nprogram = \"{}\"\nworkdir = \"{}\"\n\
             env = [[\"CLAUDE_CONFIG_DIR\", \"{}\"], [\"FAKE_CLAUDE_ARGV_LOG\", \"{}\"]]\n",
            fake.display(),
            work.display(),
            store.display(),
            argv.display()
        ),
    );
    let sessions_dir = store.join("projects").join(
        work.to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>(),
    );
    std::fs::create_dir_all(&sessions_dir).unwrap();
    let id = "5e1f2a3b-0000-4000-8000-000000000042";
    let line = serde_json::json!({"type": "user", "message": {"role": "user", "content": "why is the build slow?"}});
    std::fs::write(sessions_dir.join(format!("{id}.jsonl")), format!("{line}\n")).unwrap();

    let agent = Agent::up(&root, &config);
    let (phone, desktop) = pair(&agent, &root, "phone").await;
    let listed = phone.sessions(&desktop, Some("claude".into()), None).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].id.as_str(), listed[0].title.as_str()), (id, "why is the build slow?"));
    let mut events = phone.subscribe();
    let mut seen = BTreeMap::new();
    let task =
        phone.submit_resume(&desktop, "and now?", Some("claude".into()), None, id).await.unwrap();
    until(&mut events, &mut seen, |s| finished(s, &task)).await;
    let resumed = seen[&task].iter().find_map(|(_, e)| match e {
        TaskEvent::Accepted { resumed, .. } => resumed.clone(),
        _ => None,
    });
    assert_eq!(resumed.as_deref(), Some(id));
    let log = std::fs::read_to_string(&argv).unwrap();
    assert!(
        log.contains(&format!("\"--resume\", \"{id}\""))
            || log.contains(&format!("\"--resume\",\"{id}\"")),
        "{log}"
    );
    // An id it does not list: refused, never run.
    let bad = phone
        .submit_resume(&desktop, "x", Some("claude".into()), None, "../../etc/passwd")
        .await
        .unwrap();
    let mut refusals = Vec::new();
    until_any(&mut events, &mut seen, &mut refusals, |_, r| {
        r.iter().any(|c| c == "unknown_session")
    })
    .await;
    assert!(!seen.contains_key(&bad), "a refused resume never runs");
}
