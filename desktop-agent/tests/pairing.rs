//! Pairing on the desktop, through the real `tandem` and `tandem-relay`:
//! the scope chosen at pairing (and its default: the least that lets the
//! user work), pairing a device again (its scope is kept, never raised or
//! lowered silently), a second device paired while `tandem up` runs a task,
//! a phone name that tries to make the terminal lie, and ephemeral devices
//! forgotten once they are gone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Agent, Claimed, Phone, Seen, info, new_key, scan, tandem};
use tandem_client::ClientError;
use tandem_proto::ErrorCode;
use tandem_proto::message::{DeviceInfo, FinishStatus, Message, TaskEvent};

/// A config with `/bin/echo` as the only executor (a `command` executor
/// cannot ask for approvals).
fn command_only(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[[executor]]\nname = \"echo\"\ntype = \"command\"\nprogram = \"/bin/echo\"\n",
    )
    .unwrap();
    config
}

/// The line of `tandem devices` about `name`.
fn device_line(dir: &Path, name: &str) -> String {
    let out = tandem(dir, &["devices"]);
    out.lines()
        .find(|l| l.contains(name))
        .unwrap_or_else(|| panic!("{name} not in {out}"))
        .to_owned()
}

async fn submit_refused(phone: &mut Phone, task: &str) -> String {
    phone.submit(task, "count 1 0").await;
    loop {
        if let Message::Refused { task_id, code, .. } = phone.message().await
            && task_id.as_deref() == Some(task)
        {
            return code;
        }
    }
}

/// Messages until task `task` finished; what the phone saw.
async fn until_finished(phone: &mut Phone, task: &str) -> Seen {
    let mut seen = Seen::default();
    while seen.finished(task).is_none() {
        seen.add(phone.message().await);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_answered_at_pairing_is_stored_and_the_default_is_the_least_that_works() {
    let dir = tempfile::tempdir().unwrap();
    // Interactive: no --yes. Only a command executor: `submit` is proposed.
    let mut agent = Agent::up_with(dir.path(), &command_only(dir.path()), "127.0.0.1:0", &[], &[]);
    let link = scan(&agent, dir.path());
    let claimed = Claimed::claim(&agent, &link, None, new_key(), info("Ana's phone")).await;
    assert!(claimed.dialog.iter().any(|l| l.starts_with("Scope: submit")), "{:#?}", claimed.dialog);
    agent.line_starting("Does the phone show the same code?");
    // The user answers with a scope of their own.
    agent.type_line("view");
    let mut ana = claimed.result().await.unwrap();
    assert!(agent.line_starting("Paired with Ana's phone").contains("scope view"));
    assert!(device_line(dir.path(), "Ana's phone").contains(" view "));
    assert_eq!(submit_refused(&mut ana, "t-view").await, "scope");

    // Enter shows another code; "y" takes the proposed scope: submit.
    agent.type_line("");
    let link = scan(&agent, dir.path());
    let claimed = Claimed::claim(&agent, &link, None, new_key(), info("Bo's phone")).await;
    assert!(claimed.dialog.iter().any(|l| l.starts_with("Scope: submit")), "{:#?}", claimed.dialog);
    agent.line_starting("Does the phone show the same code?");
    agent.type_line("y");
    let mut bo = claimed.result().await.unwrap();
    assert!(agent.line_starting("Paired with Bo's phone").contains("scope submit"));
    assert!(device_line(dir.path(), "Bo's phone").contains(" submit "));
    bo.submit("t-echo", "hello").await;
    let seen = until_finished(&mut bo, "t-echo").await;
    assert_eq!(seen.finished("t-echo").unwrap().0, FinishStatus::Succeeded);

    // Anything else refuses, and nothing is stored.
    agent.type_line("");
    let link = scan(&agent, dir.path());
    let claimed = Claimed::claim(&agent, &link, None, new_key(), info("Mallory")).await;
    agent.line_starting("Does the phone show the same code?");
    agent.type_line("no");
    assert!(claimed.result().await.is_err(), "refused");
    assert!(!tandem(dir.path(), &["devices"]).contains("Mallory"));

    // `--scope` on the command line, with --yes.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let agent2 = Agent::up_with(
        &other,
        &common::fixture_config(&other, ""),
        "127.0.0.1:0",
        &["--yes", "--scope", "view"],
        &[],
    );
    let mut cy = Phone::pair(&agent2, &other).await;
    assert!(device_line(&other, "Ana's phone").contains(" view "));
    assert_eq!(submit_refused(&mut cy, "t-flag").await, "scope");
    for p in [ana, bo, cy] {
        p.client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_a_device_again_keeps_its_scope_and_never_raises_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let mut agent = Agent::up_with(dir.path(), &config, "127.0.0.1:0", &["--yes"], &[]);
    let key = new_key();
    let link = scan(&agent, dir.path());
    let first = Claimed::claim(&agent, &link, None, key.clone(), info("Ana's phone")).await;
    let first = first.result().await.unwrap();
    assert!(agent.line_starting("Paired with Ana's phone").contains("scope approve"));
    first.client.close().await;

    // The same device pairs again (it lost its state): approve is proposed,
    // and the desktop says why.
    agent.type_line("");
    let link = scan(&agent, dir.path());
    let again = Claimed::claim(&agent, &link, None, key.clone(), info("Ana's phone")).await;
    assert!(
        again.dialog.iter().any(|l| l.contains("paired already, with scope approve")),
        "{:#?}",
        again.dialog
    );
    let mut ana = again.result().await.unwrap();
    let line = agent.line_starting("Paired with Ana's phone");
    assert!(line.contains("scope approve") && line.contains("its scope is kept"), "{line}");
    let devices = tandem(dir.path(), &["devices"]);
    assert_eq!(devices.lines().count(), 1, "one device, not two: {devices}");
    // The new link works, approvals included.
    ana.submit("t-1", "approve-twice").await;
    let mut seen = Seen::default();
    for a in ["a1", "a2"] {
        loop {
            let m = ana.message().await;
            let wanted = matches!(&m, Message::TaskEvent { event: TaskEvent::ApprovalRequest { approval_id, .. }, .. } if approval_id == a);
            seen.add(m);
            if wanted {
                break;
            }
        }
        ana.send(&Message::ApprovalDecision {
            task_id: "t-1".into(),
            approval_id: a.into(),
            allow: true,
            remember: false,
        })
        .await;
    }
    while seen.finished("t-1").is_none() {
        seen.add(ana.message().await);
    }
    assert_eq!(seen.progress("t-1"), ["a1:allowed", "a2:allowed"]);
    ana.client.close().await;

    // Lowered to view by the desktop user: pairing again with --yes keeps
    // view, although approve is the default for new devices.
    let scoped = tandem(dir.path(), &["scope", "Ana's phone", "view"]);
    assert!(scoped.contains("scope is now view"), "{scoped}");
    agent.type_line("");
    let link = scan(&agent, dir.path());
    let again = Claimed::claim(&agent, &link, None, key, info("Ana's phone")).await;
    assert!(again.dialog.iter().any(|l| l.starts_with("Scope: view")), "{:#?}", again.dialog);
    let mut ana = again.result().await.unwrap();
    assert!(agent.line_starting("Paired with Ana's phone").contains("scope view"));
    assert!(device_line(dir.path(), "Ana's phone").contains(" view "));
    assert_eq!(submit_refused(&mut ana, "t-2").await, "scope");
    ana.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_name_with_bidi_overrides_and_zero_width_characters_cannot_fake_the_screen() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up_with(dir.path(), &config, "127.0.0.1:0", &["--yes"], &[]);
    // On a terminal that obeys U+202E this reads "Ana's phone"; U+2028 (a
    // line separator, allowed in names) would start a line of its own with
    // a fake code.
    let hostile = "\u{202e}enohp s'an\u{200b}A\u{2066}\u{2028}Code: 000 000";
    let hidden = ['\u{202e}', '\u{200b}', '\u{2066}', '\u{2028}'];
    let link = scan(&agent, dir.path());
    let claimed = Claimed::claim(&agent, &link, None, new_key(), info(hostile)).await;
    let asked = claimed.dialog.iter().find(|l| l.contains("wants to pair")).unwrap().clone();
    assert!(asked.contains("enohp s'an") && asked.contains("Code: 000 000"), "{asked}");
    assert!(asked.ends_with("(test, 0) wants to pair."), "one line: {asked}");
    let phone = claimed.result().await.unwrap();
    let paired = agent.line_starting("Paired with");
    agent.line_starting("Connected.");
    let devices = tandem(dir.path(), &["devices"]);
    let status = tandem(dir.path(), &["status"]);
    for (what, text) in
        [("dialog", format!("{asked}\n{paired}\n")), ("devices", devices), ("status", status)]
    {
        assert!(text.contains("enohp s'an"), "{what}: {text}");
        for c in hidden {
            assert!(!text.contains(c), "{what} printed {c:?}: {text}");
        }
        assert!(!text.lines().any(|l| l.trim_start().starts_with("Code: 000")), "{what}: {text}");
    }
    phone.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_pairs_while_up_runs_a_task_and_both_work() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "[agent]\nmax_concurrent_tasks = 2\n");
    let mut agent = Agent::up_with(dir.path(), &config, "127.0.0.1:0", &[], &[]);
    let link = scan(&agent, dir.path());
    let claimed = Claimed::claim(&agent, &link, None, new_key(), info("Ana's phone")).await;
    agent.line_starting("Does the phone show the same code?");
    agent.type_line("y");
    let mut ana = claimed.result().await.unwrap();
    agent.line_starting("Connected. 1 paired device(s).");

    // A task that runs until it gets a follow-up.
    ana.submit("t-a", "follow").await;
    let mut seen_a = Seen::default();
    while !seen_a.progress("t-a").contains(&"waiting for a follow-up".to_owned()) {
        seen_a.add(ana.message().await);
    }
    let pid = tandem(dir.path(), &["status", "--json"]);

    // Meanwhile a second device pairs, through the terminal.
    agent.type_line("");
    let link = scan(&agent, dir.path());
    let claimed = Claimed::claim(&agent, &link, None, new_key(), info("Bo's phone")).await;
    agent.line_starting("Does the phone show the same code?");
    agent.type_line("y");
    let mut bo = claimed.result().await.unwrap();
    assert!(agent.line_starting("Paired with Bo's phone").contains("scope approve"));
    bo.submit("t-b", "count 3 10").await;
    let seen_b = until_finished(&mut bo, "t-b").await;
    assert_eq!(seen_b.progress("t-b"), ["n=0", "n=1", "n=2"]);

    // The first task is still running and finishes for the first phone.
    ana.send(&Message::FollowUp { task_id: "t-a".into(), text: "hi".into() }).await;
    while seen_a.finished("t-a").is_none() {
        seen_a.add(ana.message().await);
    }
    assert!(seen_a.progress("t-a").contains(&"got: hi".to_owned()));
    seen_a.assert_contiguous();

    // Same agent process throughout, two devices.
    let after = tandem(dir.path(), &["status", "--json"]);
    let pid_of = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["pid"].clone();
    assert_eq!(pid_of(&pid), pid_of(&after));
    let status = tandem(dir.path(), &["status"]);
    assert!(status.contains("Ana's phone") && status.contains("Bo's phone"), "{status}");
    ana.client.close().await;
    bo.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_device_gone_for_its_ttl_is_revoked_and_a_lasting_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let mut agent = Agent::up_with(
        dir.path(),
        &config,
        "127.0.0.1:0",
        &["--yes"],
        &[("TANDEM_EPHEMERAL_DEVICE_TTL_SECS", "3")],
    );
    let mut ana = Phone::pair(&agent, dir.path()).await;
    agent.type_line("");
    let link = scan(&agent, dir.path());
    let page = DeviceInfo {
        name: "web page".into(),
        platform: "web".into(),
        app_version: "0.1.0".into(),
        ephemeral: true,
    };
    let claimed = Claimed::claim(&agent, &link, None, new_key(), page).await;
    assert!(
        claimed.dialog.iter().any(|l| l.contains("only while the page is open")),
        "{:#?}",
        claimed.dialog
    );
    let mut web = claimed.result().await.unwrap();
    assert!(agent.line_starting("Paired with web page").contains("This page only"));
    assert!(device_line(dir.path(), "web page").contains("this page only"));
    assert!(!device_line(dir.path(), "Ana's phone").contains("this page only"));

    // While its page is open (connected), it is kept, however long.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(tandem(dir.path(), &["devices"]).contains("web page"));

    // Both go away; the page's keys are gone with it.
    web.client.close().await;
    ana.client.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tandem(dir.path(), &["devices"]).contains("web page") {
        assert!(std::time::Instant::now() < deadline, "the ephemeral device was never forgotten");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(tandem(dir.path(), &["devices"]).contains("Ana's phone"), "the lasting one is kept");
    // The revocation's entry comes first, then why (`forgotten`): the device
    // leaves the list between the two, so wait for the second.
    loop {
        let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        if audit.contains("\"event\":\"forgotten\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no `forgotten` entry: {audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tandem(dir.path(), &["audit", "verify"]).contains("chain intact"));

    // The relay refuses the page's key now; the lasting phone still works.
    web.reconnect().await;
    let (_, record) = web.link.send(b"{}".to_vec()).unwrap();
    match web.client.send(web.desktop, record).await {
        Err(ClientError::Refused(code, _)) => assert_eq!(code, ErrorCode::NotAuthorized),
        other => panic!("a forgotten device's frame was not refused: {other:?}"),
    }
    ana.reconnect().await;
    ana.submit("t-1", "count 1 0").await;
    let seen = until_finished(&mut ana, "t-1").await;
    assert_eq!(seen.finished("t-1").unwrap().0, FinishStatus::Succeeded);
    web.client.close().await;
    ana.client.close().await;
}

/// `tandem up --yes` that crashes (`FAILPOINTS=pair.saved=return`) once it
/// saved the first phone that claims its code, before answering it: the
/// phone gets no answer. Returns the relay's `host:port` and the phone's key.
async fn crash_after_saving(dir: &Path, config: &Path) -> (String, tandem_proto::DeviceKey) {
    let agent = Agent::up_with(
        dir,
        config,
        "127.0.0.1:0",
        &["--yes"],
        &[("FAILPOINTS", "pair.saved=return")],
    );
    let key = new_key();
    let link = scan(&agent, dir);
    let origin = tandem_proto::qr::PairingLink::parse(&link, common::now_unix()).unwrap().origin;
    let mut claimed = Claimed::claim(&agent, &link, None, key.clone(), info("Ana's phone")).await;
    assert!(!agent.wait_exit().success(), "the agent crashed at pair.saved");
    assert!(!claimed.answered_within(Duration::from_secs(1)).await, "no answer reached the phone");
    claimed.close().await;
    // Saved, with its scope, and shown as what it is.
    let line = device_line(dir, "Ana's phone");
    assert!(line.contains("pairing not finished") && line.contains(" approve "), "{line}");
    (origin.trim_start_matches("http://").to_owned(), key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_saving_and_answering_leaves_a_pending_device_that_pairs_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let (addr, key) = crash_after_saving(dir.path(), &config).await;

    // Restarted: the unfinished pairing is reported, and since no device
    // finished pairing a code is shown; the phone scans it and pairs.
    let agent = Agent::up_at(dir.path(), &config, &addr);
    agent.line_starting("The pairing of Ana's phone");
    let link = scan(&agent, dir.path());
    let again = Claimed::claim(&agent, &link, None, key, info("Ana's phone")).await;
    assert!(
        again.dialog.iter().any(|l| l.contains("paired already, with scope approve")),
        "{:#?}",
        again.dialog
    );
    let mut ana = again.result().await.unwrap();
    agent.line_starting("Paired with Ana's phone");
    agent.line_starting("Connected. 1 paired device(s).");
    assert!(!device_line(dir.path(), "Ana's phone").contains("pairing not finished"));
    ana.submit("t-1", "count 2 0").await;
    let seen = until_finished(&mut ana, "t-1").await;
    assert_eq!(seen.progress("t-1"), ["n=0", "n=1"]);
    ana.client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_device_that_never_comes_back_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let (addr, _) = crash_after_saving(dir.path(), &config).await;
    let _agent = Agent::up_with(
        dir.path(),
        &config,
        &addr,
        &["--yes"],
        &[("TANDEM_UNFINISHED_PAIRING_SECS", "2")],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tandem(dir.path(), &["devices"]).contains("Ana's phone") {
        assert!(
            std::time::Instant::now() < deadline,
            "the unfinished pairing was never cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The audit line may follow the removal by a moment.
    let audit = loop {
        let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        if audit.contains("pairing never finished") || std::time::Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(audit.contains("pairing never finished"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_answer_left_the_desktop_still_completes_the_pairing() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    // A relay of its own, which outlives the agent's crash.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(tandem_relay::run(
        listener,
        tandem_relay::Config::new(dir.path().join("relay")),
        shutdown.clone(),
    ));
    let tandem_cmd = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.arg("--data-dir")
            .arg(dir.path())
            .arg("--config")
            .arg(&config)
            .args(["--name", "build-box"])
            .args(args)
            .stderr(std::process::Stdio::null());
        cmd
    };
    let url = format!("ws://127.0.0.1:{port}/v1/connect");
    let mut pair =
        tandem_cmd(&["pair", "--relay", &url, "--yes", "--print-url", "--no-terminal-qr"]);
    pair.arg("--qr-png").arg(dir.path().join("qr.png")).env("FAILPOINTS", "pair.sent=return");
    let agent = Agent::spawn(pair);
    let link = scan(&agent, dir.path());
    let claimed = Claimed::claim(&agent, &link, None, new_key(), info("Ana's phone")).await;
    // The relay took the answer, then the agent crashed: the phone is paired.
    let mut ana = claimed.result().await.unwrap();
    assert!(!agent.wait_exit().success(), "the agent crashed at pair.sent");
    assert!(device_line(dir.path(), "Ana's phone").contains("pairing not finished"));

    // The agent back: the phone's half of the route shows it got its answer.
    let runner = Agent::spawn(tandem_cmd(&["run"]));
    runner.line_starting("Connected.");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while device_line(dir.path(), "Ana's phone").contains("pairing not finished") {
        assert!(std::time::Instant::now() < deadline, "the finished pairing was never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ana.submit("t-1", "count 1 0").await;
    let seen = until_finished(&mut ana, "t-1").await;
    assert_eq!(seen.finished("t-1").unwrap().0, FinishStatus::Succeeded);
    ana.client.close().await;
    drop(runner);
    shutdown.cancel();
    let _ = relay.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_the_desktop_asks_stops_tandem_up_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up_with(dir.path(), &config, "127.0.0.1:0", &[], &[]);
    let link = scan(&agent, dir.path());
    let claimed = Claimed::claim(&agent, &link, None, new_key(), info("Ana's phone")).await;
    agent.line_starting("Does the phone show the same code?");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(agent.wait_exit().success(), "Ctrl-C at the question stops tandem up with status 0");
    assert!(!tandem(dir.path(), &["devices"]).contains("Ana's phone"), "nothing was paired");
    claimed.close().await;
}

/// Review r2: a phone that got its answer before the agent crashed
/// (`pair.sent`) is a paired phone. When the agent comes back more than
/// `unfinished_pairing_secs` after the pairing, and the phone (like every
/// phone of `tandem up`, whose relay restarts with it) reconnects a moment
/// after the agent, the daemon must not forget it before it had the chance
/// to: `daemon/expiry.rs` says nothing is forgotten in the first minute
/// after the relay connection came up, but the pending branch does not
/// wait (only the ephemeral one does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_pairing_is_kept_when_the_agent_comes_back_late() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(tandem_relay::run(
        listener,
        tandem_relay::Config::new(dir.path().join("relay")),
        shutdown.clone(),
    ));
    let tandem_cmd = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.arg("--data-dir")
            .arg(dir.path())
            .arg("--config")
            .arg(&config)
            .args(["--name", "build-box"])
            .args(args)
            .env("TANDEM_UNFINISHED_PAIRING_SECS", "2")
            .stderr(std::process::Stdio::null());
        cmd
    };
    let url = format!("ws://127.0.0.1:{port}/v1/connect");
    let mut pair =
        tandem_cmd(&["pair", "--relay", &url, "--yes", "--print-url", "--no-terminal-qr"]);
    pair.arg("--qr-png").arg(dir.path().join("qr.png")).env("FAILPOINTS", "pair.sent=return");
    let agent = Agent::spawn(pair);
    let link = scan(&agent, dir.path());
    let claimed = Claimed::claim(&agent, &link, None, new_key(), info("Ana's phone")).await;
    let mut ana = claimed.result().await.unwrap();
    assert!(!agent.wait_exit().success(), "the agent crashed at pair.sent");
    assert!(device_line(dir.path(), "Ana's phone").contains("pairing not finished"));

    // The phone's connection drops (a tandem up restart takes its relay
    // with it); the agent is back a little later than
    // unfinished_pairing_secs, and the phone reconnects a second after it.
    ana.client.close().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runner = Agent::spawn(tandem_cmd(&["run"]));
    runner.line_starting("Connected.");
    tokio::time::sleep(Duration::from_secs(1)).await;
    ana.reconnect().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let devices = tandem(dir.path(), &["devices"]);
        assert!(
            devices.contains("Ana's phone"),
            "a phone that completed its pairing was forgotten a second after the agent came \
             back: {devices}\n{}",
            std::fs::read_to_string(dir.path().join("audit.log")).unwrap_or_default()
        );
        if !device_line(dir.path(), "Ana's phone").contains("pairing not finished") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the finished pairing was never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ana.submit("t-1", "count 1 0").await;
    let seen = until_finished(&mut ana, "t-1").await;
    assert_eq!(seen.finished("t-1").unwrap().0, FinishStatus::Succeeded);
    ana.client.close().await;
    drop(runner);
    shutdown.cancel();
    let _ = relay.await;
}

/// Review r2: pairing a device again (the same key: a phone that still has
/// its old link, like the https web client scanning a new code) when the
/// agent crashes between saving and answering (`pair.saved`). The desktop
/// now holds a new link the phone never got; the phone still holds the old
/// one. The relay kept both halves of the old route, so the phone's
/// presence is reported as soon as it connects, and the daemon takes that as
/// "the phone got its answer" (`daemon/expiry.rs` `note_presence`): the
/// pending mark is cleared, the entry is never cleaned up, and neither side
/// can open the other's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_pairing_cut_by_a_crash_is_not_finished_by_the_old_routes_presence() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let agent = Agent::up_at(dir.path(), &config, "127.0.0.1:0");
    let mut ana = Phone::pair(&agent, dir.path()).await;
    let addr = ana.relay_addr.clone();
    ana.client.close().await;
    agent.kill9();

    let agent = Agent::up_with(
        dir.path(),
        &config,
        &addr,
        &["--yes", "--pair"],
        &[("FAILPOINTS", "pair.saved=return")],
    );
    let link = scan(&agent, dir.path());
    let mut claimed =
        Claimed::claim(&agent, &link, None, ana.key.clone(), info("Ana's phone")).await;
    assert!(!agent.wait_exit().success(), "the agent crashed at pair.saved");
    assert!(!claimed.answered_within(Duration::from_secs(1)).await);
    claimed.close().await;
    assert!(device_line(dir.path(), "Ana's phone").contains("pairing not finished"));

    // The agent is back; the phone never got an answer and keeps its old link.
    let agent = Agent::up_at(dir.path(), &config, &addr);
    ana.reconnect().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let line = device_line(dir.path(), "Ana's phone");
    if line.contains("pairing not finished") {
        // Still pending (it would be cleaned up): the phone pairs again with
        // the code the restarted agent shows, and works.
        ana.client.close().await;
        let link = scan(&agent, dir.path());
        let again = Claimed::claim(&agent, &link, None, ana.key.clone(), info("Ana's phone")).await;
        let mut ana = again.result().await.unwrap();
        ana.submit("t-1", "count 1 0").await;
        let seen = until_finished(&mut ana, "t-1").await;
        assert_eq!(seen.finished("t-1").unwrap().0, FinishStatus::Succeeded);
        ana.client.close().await;
        return;
    }
    // Taken as finished: then the phone's link must work.
    ana.submit("t-1", "count 1 0").await;
    let worked =
        tokio::time::timeout(Duration::from_secs(10), until_finished(&mut ana, "t-1")).await;
    assert!(
        worked.is_ok(),
        "the re-pairing was taken as finished ({line}) although the phone never got the answer; \
         the phone's old link no longer works and the entry will never be cleaned up"
    );
}
