//! Executor and project choice from the phone, through a real `tandem up`
//! (relay and agent) and a paired phone: the desktop tells the phone what it
//! offers (`choices`, with the task list; project names only, never their
//! paths), a task runs with the executor and in the project the phone
//! picked (the defaults when it picks none), and an unknown executor or
//! project is refused with its documented code, never run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::{Agent, Phone};
use tandem_proto::message::{
    ExecutorChoice, FinishStatus, Message, ProjectChoice, TaskEvent, TaskState,
};

/// Submit `text` as `task_id` with `executor` in `project`.
async fn submit(phone: &mut Phone, task_id: &str, text: &str, executor: &str, project: &str) {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    phone
        .send(&Message::TaskSubmit {
            task_id: task_id.into(),
            text: text.into(),
            workspace: some(project),
            executor: some(executor),
            resume: None,
        })
        .await;
}

/// The task's `accepted` (executor, project) and its finish (status,
/// summary); panics on a refusal.
async fn ran(
    phone: &mut Phone,
    task_id: &str,
) -> ((String, Option<String>), (FinishStatus, String)) {
    let mut accepted = None;
    loop {
        match phone.message().await {
            Message::TaskEvent { task_id: t, event, .. } if t == task_id => match event {
                TaskEvent::Accepted { executor, project, .. } => {
                    accepted = Some((executor, project))
                }
                TaskEvent::Finished { status, summary, .. } => {
                    return (accepted.expect("accepted before it finished"), (status, summary));
                }
                _ => {}
            },
            Message::Refused { task_id: Some(t), code, message } if t == task_id => {
                panic!("{task_id} refused: {code} {message}")
            }
            _ => {}
        }
    }
}

/// The refusal of `task_id`: its code.
async fn refused(phone: &mut Phone, task_id: &str) -> String {
    loop {
        match phone.message().await {
            Message::Refused { task_id: Some(t), code, .. } if t == task_id => return code,
            Message::TaskEvent { task_id: t, event, .. } if t == task_id => {
                panic!("{task_id} ran: {event:?}")
            }
            _ => {}
        }
    }
}

/// `tandem executors` with `config`, a data dir of its own under `dir`.
fn tandem_executors(dir: &Path, config: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--config", config.to_str().unwrap(), "executors"])
        .output()
        .unwrap()
}

fn real(p: &Path) -> String {
    std::fs::canonicalize(p).unwrap().display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_picks_the_executor_and_the_project_and_unknown_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta) = (dir.path().join("alpha-src"), dir.path().join("beta-src"));
    std::fs::create_dir_all(&alpha).unwrap();
    std::fs::create_dir_all(&beta).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[executor]]\nname = \"where\"\ntype = \"command\"\nprogram = \"pwd\"\n\n\
             [[executor]]\nname = \"say\"\ntype = \"command\"\nprogram = \"echo\"\nargs = [\"{{task}}\"]\n\n\
             [[project]]\nname = \"alpha\"\npath = \"{}\"\n\n\
             [[project]]\nname = \"beta\"\npath = \"{}\"\n",
            alpha.display(),
            beta.display()
        ),
    )
    .unwrap();
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;

    // What the desktop offers, with the task list: names and kinds, the
    // defaults first, and no path.
    phone.send(&Message::HistoryRequest { task_id: None, from_offset: 0 }).await;
    let choices = phone.message().await;
    let wire = String::from_utf8(choices.encode().unwrap()).unwrap();
    assert!(!wire.contains("-src"), "a project's path reached the phone: {wire}");
    let Message::Choices { executors, projects, default_executor, default_project } = choices
    else {
        panic!("the desktop's choices first, got {choices:?}")
    };
    let kind = |name: &str| ExecutorChoice { name: name.into(), kind: "command".into() };
    assert_eq!(executors, [kind("where"), kind("say")]);
    let project = |name: &str| ProjectChoice { name: name.into() };
    assert_eq!(projects, [project("alpha"), project("beta")]);
    assert_eq!((default_executor.as_str(), default_project.as_deref()), ("where", Some("alpha")));
    assert!(matches!(phone.message().await, Message::TaskList { .. }));

    // No pick: the default executor in the default project.
    submit(&mut phone, "t-default", "where am I", "", "").await;
    let (accepted, (status, summary)) = ran(&mut phone, "t-default").await;
    assert_eq!(accepted, ("where".into(), Some("alpha".into())));
    assert_eq!((status, summary), (FinishStatus::Succeeded, real(&alpha)));

    // A project picked: the task runs in its directory.
    submit(&mut phone, "t-beta", "where am I", "", "beta").await;
    let (accepted, (_, summary)) = ran(&mut phone, "t-beta").await;
    assert_eq!(accepted, ("where".into(), Some("beta".into())));
    assert_eq!(summary, real(&beta));

    // Another executor, in a picked project.
    submit(&mut phone, "t-say", "hello from the phone", "say", "beta").await;
    let (accepted, (_, summary)) = ran(&mut phone, "t-say").await;
    assert_eq!(accepted, ("say".into(), Some("beta".into())));
    assert_eq!(summary, "hello from the phone");

    // Unknown ones: refused with their codes, nothing run, nothing listed.
    submit(&mut phone, "t-gamma", "where am I", "", "gamma").await;
    assert_eq!(refused(&mut phone, "t-gamma").await, "unknown_project");
    submit(&mut phone, "t-nobody", "where am I", "nobody", "alpha").await;
    assert_eq!(refused(&mut phone, "t-nobody").await, "unknown_executor");

    // The task list says where each ran.
    phone.send(&Message::HistoryRequest { task_id: None, from_offset: 0 }).await;
    let tasks = loop {
        if let Message::TaskList { tasks } = phone.message().await {
            break tasks;
        }
    };
    let listed: Vec<(&str, Option<&str>, TaskState)> =
        tasks.iter().map(|t| (t.task_id.as_str(), t.project.as_deref(), t.state)).collect();
    assert_eq!(
        listed,
        [
            ("t-say", Some("beta"), TaskState::Finished),
            ("t-beta", Some("beta"), TaskState::Finished),
            ("t-default", Some("alpha"), TaskState::Finished),
        ]
    );
    // `tandem tasks` on the desktop shows it too.
    let out = common::tandem(dir.path(), &["tasks"]);
    assert!(out.contains("beta"), "{out}");
}

/// A project the configuration cannot use stops `tandem` with a clear
/// error, before it runs anything.
#[test]
fn a_relative_or_duplicate_project_is_a_configuration_error() {
    for (projects, want) in [
        ("[[project]]\nname = \"p\"\npath = \"src/p\"\n", "path must be absolute"),
        (
            "[[project]]\nname = \"p\"\npath = \"/tmp\"\n\n[[project]]\nname = \"p\"\npath = \"/srv\"\n",
            "two projects have this name",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[[executor]]\nname = \"e\"\ntype = \"command\"\nprogram = \"true\"\n\n{projects}"
            ),
        )
        .unwrap();
        let out = tandem_executors(dir.path(), &config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(want), "{err}");
    }
}

/// `tandem executors` lists what phones may pick, with each project's
/// directory (shown on the desktop only).
#[test]
fn tandem_executors_lists_the_choices_with_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[executor]]\nname = \"claude\"\ntype = \"claude\"\n\n\
         [[executor]]\nname = \"shell\"\ntype = \"command\"\nprogram = \"true\"\n\n\
         [[project]]\nname = \"site\"\npath = \"/srv/site\"\n",
    )
    .unwrap();
    let out = tandem_executors(dir.path(), &config);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert!(lines.contains(&"claude           claude    (default)"), "{text}");
    assert!(lines.contains(&"shell            command"), "{text}");
    assert!(lines.contains(&"site             /srv/site  (default)"), "{text}");
}

/// The same through the phone engine the SDK wraps (`tandem_phone`): after
/// its task list, `Phone::choices` answers (and a `Choices` event said so),
/// `submit_in` runs in the project picked, and an unknown project comes
/// back as a `Refused` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_engine_offers_the_choices_and_submits_in_a_project() {
    use tandem_phone::{PhoneConfig, PhoneEvent};
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site-src");
    std::fs::create_dir_all(&site).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[executor]]\nname = \"where\"\ntype = \"command\"\nprogram = \"pwd\"\n\n\
             [[project]]\nname = \"home\"\npath = \"{}\"\n\n\
             [[project]]\nname = \"site\"\npath = \"{}\"\n",
            dir.path().display(),
            site.display()
        ),
    )
    .unwrap();
    let agent = Agent::up(dir.path(), &config);
    let link = agent
        .line_starting("pairing link: ")
        .trim()
        .trim_start_matches("pairing link: ")
        .to_owned();
    let phone =
        tandem_phone::Phone::open(PhoneConfig::new(dir.path().join("phone"), "Ana's phone"))
            .await
            .unwrap();
    let mut events = phone.subscribe();
    let desktop = phone.start_pairing(&link).await.unwrap().wait().await.unwrap().desktop_id;
    agent.line_starting("Connected.");
    phone.tasks(&desktop).await.unwrap();
    let choices = phone.choices(&desktop).expect("the choices came with the task list");
    let names: Vec<&str> = choices.projects.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["home", "site"]);
    assert_eq!(choices.default_project.as_deref(), Some("home"));

    let task = phone.submit_in(&desktop, "where am I", None, Some("site".into())).await.unwrap();
    let bad = phone.submit_in(&desktop, "where am I", None, Some("nope".into())).await.unwrap();
    let (mut summary, mut refusal, mut announced) = (None, None, false);
    while summary.is_none() || refusal.is_none() {
        let e = tokio::time::timeout(std::time::Duration::from_secs(30), events.recv())
            .await
            .expect("an event in time")
            .unwrap();
        match e {
            PhoneEvent::Choices { desktop_id, .. } if desktop_id == desktop => announced = true,
            PhoneEvent::Task(t) if t.task_id == task => {
                if let tandem_phone::TaskEvent::Finished { summary: s, .. } = t.event {
                    summary = Some(s);
                }
            }
            PhoneEvent::Task(t) if t.task_id == bad => panic!("an unknown project ran: {t:?}"),
            PhoneEvent::Refused { task_id: Some(t), code, .. } if t == bad => refusal = Some(code),
            _ => {}
        }
    }
    assert!(announced, "a Choices event told the app");
    assert_eq!(summary.unwrap(), real(&site));
    assert_eq!(refusal.unwrap(), "unknown_project");
    phone.close().await;
}

/// Review: a project's directory is never sent to a phone, not even when it
/// cannot be used (deleted, unmounted): the task's failure says so without
/// the path (the executor's `Workdir` error names it, and the finish goes to
/// every phone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_project_directory_is_not_named_to_the_phone() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("secret-client-src");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[executor]]\nname = \"where\"\ntype = \"command\"\nprogram = \"pwd\"\n\n\
             [[project]]\nname = \"client\"\npath = \"{}\"\n",
            gone.display()
        ),
    )
    .unwrap();
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    submit(&mut phone, "t-gone", "where am I", "", "client").await;
    let (_, (status, summary)) = ran(&mut phone, "t-gone").await;
    assert_eq!(status, FinishStatus::Failed);
    assert!(
        !summary.contains("secret-client-src"),
        "the project's path reached the phone: {summary}"
    );
}

/// Review: a desktop with as many executors and projects as a
/// configuration may name, with the longest names, still tells the phone
/// what it offers (`choices` over the 60 KiB message limit would not be
/// sent at all); a configuration naming more is refused when read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_executors_and_projects_still_reach_the_phone_as_choices() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let mut text = String::new();
    let max = tandem_agent::settings::MAX_EXECUTORS;
    for i in 0..max {
        let name = format!("{i:04}-{}", "e".repeat(59));
        text.push_str(&format!(
            "[[executor]]\nname = \"{name}\"\ntype = \"command\"\nprogram = \"pwd\"\n\n"
        ));
    }
    for i in 0..max {
        let name = format!("{i:04}-{}", "p".repeat(59));
        text.push_str(&format!("[[project]]\nname = \"{name}\"\npath = \"/tmp\"\n\n"));
    }
    std::fs::write(&config, &text).unwrap();
    let agent = Agent::up(dir.path(), &config);
    let mut phone = Phone::pair(&agent, dir.path()).await;
    phone.send(&Message::HistoryRequest { task_id: None, from_offset: 0 }).await;
    let Message::Choices { executors, projects, .. } = phone.message().await else {
        panic!("no choices before the task list")
    };
    assert_eq!((executors.len(), projects.len()), (max, max));
    drop(agent);

    // One more project: refused when the file is read, with the bound.
    text.push_str("[[project]]\nname = \"one-too-many\"\npath = \"/tmp\"\n");
    std::fs::write(&config, &text).unwrap();
    let out = tandem_executors(dir.path(), &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("at most 256 projects"), "{err}");
}
