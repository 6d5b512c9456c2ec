//! The long-running subcommands: `tandem up` (a relay here, then the daemon)
//! and the daemon `tandem run` drives, with its task manager.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::{
    args::{Cli, QrArgs},
    local::load_settings,
    relay::{connect_agent, lan_ip},
};
use anyhow::Context;
use tandem_agent::agent_config::AgentConfig;
use tandem_agent::audit::AuditLog;
use tandem_agent::awake::KeepAwake;
use tandem_agent::daemon::Daemon;
use tandem_agent::history::{DEFAULT_MAX_EVENTS_PER_TASK, History};
use tandem_agent::keystore::KeyStore;
use tandem_agent::pair::{DaemonKeeper, PairAlongside, PairOptions, pair_alongside, split_events};
use tandem_agent::peers::PeerStore;
use tandem_agent::tasks::{TaskManager, TaskOptions, TaskUpdate};
use tandem_agent::text::escaped;
use tandem_agent::ui::Input;
use tandem_agent::{damage, datadir, ipc};
use tandem_client::Client;
use tokio_util::sync::CancellationToken;

/// What the daemon needs from the configuration: the task manager, the
/// idle time after which phones are detached, when devices that are gone
/// are forgotten (ephemeral ones, unfinished pairings), and the session
/// schedule.
pub(crate) struct TaskSetup {
    pub(crate) tasks: (TaskManager, tokio::sync::mpsc::Receiver<TaskUpdate>),
    pub(crate) idle_detach: Duration,
    pub(crate) ephemeral_ttl: Duration,
    pub(crate) unfinished_pairing: Duration,
    pub(crate) schedule: tandem_proto::upkeep::Schedule,
    /// When a record the relay holds goes again to a phone coming online.
    pub(crate) resend_stale: Duration,
    /// What was set aside opening the task history.
    pub(crate) set_aside: Vec<damage::SetAside>,
    /// The audit log's rotation size.
    pub(crate) audit_max_bytes: u64,
}

/// The daemon over a connected client, answering the control socket.
pub(crate) fn daemon<'a>(
    client: &'a Client,
    key: &'a tandem_proto::DeviceKey,
    store: &'a mut PeerStore,
    setup: TaskSetup,
    calls: tokio::sync::mpsc::Receiver<ipc::Call>,
    dir: &std::path::Path,
    url: String,
) -> anyhow::Result<Daemon<'a>> {
    let mut awake = KeepAwake::new();
    // Damaged state does not stop the agent: set aside, said, recorded.
    let (audit, audit_aside) = AuditLog::open_or_set_aside(dir, damage::now_ms())?;
    let mut audit = audit.with_rotation(setup.audit_max_bytes);
    let mut set_aside: Vec<damage::SetAside> = audit_aside.into_iter().collect();
    for aside in store.take_set_aside().into_iter().chain(setup.set_aside) {
        if let Err(e) = audit.append(damage::now_ms(), aside.audit_event()) {
            eprintln!("warning: audit log: {e}");
        }
        set_aside.push(aside);
    }
    for aside in &set_aside {
        println!("{}", aside.describe());
    }
    let set_aside: Vec<serde_json::Value> =
        set_aside.iter().map(damage::SetAside::to_json).collect();
    Ok(Daemon::new(client, key, store, setup.tasks)
        .with_audit(audit)
        .with_status_field("set_aside", set_aside.into())
        .with_control(calls, dir.to_owned())
        .with_idle_detach(setup.idle_detach)
        .with_device_expiry(setup.ephemeral_ttl, setup.unfinished_pairing)
        .with_schedule(setup.schedule)
        .with_resend_stale(setup.resend_stale)
        .with_relay_url(url)
        .with_status_field("key_store", KeyStore::new(dir).backend().into())
        .with_busy_hook(move |busy| {
            awake.set_busy(busy);
            serde_json::to_value(awake.state()).unwrap_or_default()
        }))
}

/// Ctrl-C, or SIGTERM (a service manager stopping the agent).
pub(crate) async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// The executors and `[agent]` settings from the configuration file, ready
/// to run tasks.
pub(crate) fn task_manager(cli: &Cli, dir: &std::path::Path) -> anyhow::Result<TaskSetup> {
    let settings = load_settings(cli)?;
    if settings.executors.is_empty() {
        println!(
            "No executor is configured: tasks from phones will be refused (see `tandem --help`)."
        );
    }
    let a = &settings.agent;
    let (history, history_aside) = History::open_or_set_aside(dir, damage::now_ms())?;
    let history = history.with_limits(a.max_tasks_kept, DEFAULT_MAX_EVENTS_PER_TASK);
    let options = TaskOptions {
        max_concurrent: a.max_concurrent_tasks,
        approval_timeout: Duration::from_secs(a.approval_timeout_secs),
        max_unfinished: a.max_unfinished_tasks,
        projects: settings.projects,
        // Checked when the file was read.
        rules: tandem_agent::rules::compile(&settings.rules)
            .map_err(|(i, e)| anyhow::anyhow!("rule {i}: {e}"))?,
        added_rules_dir: Some(dir.to_owned()),
    };
    Ok(TaskSetup {
        idle_detach: Duration::from_secs(a.idle_detach_secs),
        ephemeral_ttl: Duration::from_secs(a.ephemeral_device_ttl_secs),
        unfinished_pairing: Duration::from_secs(a.unfinished_pairing_secs),
        tasks: TaskManager::new(settings.executors, history, options)?,
        schedule: a.schedule(),
        resend_stale: Duration::from_secs(a.resend_stale_secs),
        set_aside: history_aside.into_iter().collect(),
        audit_max_bytes: a.audit_max_bytes,
    })
}

/// `tandem up`: a relay on this computer, the agent connected to it, and
/// the pairing code when no phone is paired yet (or with `--pair`), and
/// again each time Enter is pressed, while the daemon serves.
pub(crate) async fn up(
    dir: &std::path::Path,
    mut opts: PairOptions,
    listen: SocketAddr,
    force_pair: bool,
    qr: &QrArgs,
    tasks: TaskSetup,
    calls: tokio::sync::mpsc::Receiver<ipc::Call>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr()?;
    let port = bound.port();
    let lan = if listen.ip().is_unspecified() { lan_ip() } else { listen.ip() };
    let host = match lan {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    // The relay's store: private like the rest of the data dir.
    datadir::prepare(&dir.join("relay"))?;
    let mut config = tandem_relay::Config::new(dir.join("relay"));
    for n in [lan.to_string(), host.clone()] {
        if !config.names.contains(&n) {
            config.names.push(n);
        }
    }
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let ready_tx = std::sync::Mutex::new(Some(ready_tx));
    config.on_ready = Some(Arc::new(move |addr, _pem| {
        if let Some(tx) = ready_tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(addr);
        }
    }));
    let relay = tokio::spawn(tandem_relay::run(listener, config, shutdown.clone()));
    let _ = tokio::time::timeout(Duration::from_secs(20), ready_rx)
        .await
        .context("the local relay did not start")?;
    // What the relay just created with the umask's modes: made 0600 now.
    datadir::prepare(dir)?;
    opts.link_base = format!("http://{host}:{port}/p");
    // The agent dials its own relay on loopback when it listens everywhere,
    // else on the one address it listens on.
    let url = if listen.ip().is_unspecified() {
        format!("ws://127.0.0.1:{port}/v1/connect")
    } else {
        format!("ws://{host}:{port}/v1/connect")
    };
    println!("Relay running on {bound} (phones on this network reach it at http://{host}:{port}).");
    let mut agent_config = AgentConfig::load(dir)?;
    agent_config.relay_url = Some(url.clone());
    agent_config.relay_roots_pem.clear();
    agent_config.save(dir)?;
    let (key, client, events, epoch) = connect_agent(dir, &mut agent_config, url.clone()).await?;
    let mut store = PeerStore::open(dir)?;
    let paired = store.list().iter().filter(|p| !p.pairing_pending()).count();
    for p in store.list().iter().filter(|p| p.pairing_pending()) {
        println!(
            "The pairing of {} ({}) did not finish (this computer stopped before the phone got its answer): pair it again, or it is forgotten.",
            escaped(p.name()),
            p.device_id()
        );
    }
    // A web page paired here by a version that kept its keys in the
    // browser's storage: on this plain-http origin a host on another network
    // can read them (docs/SECURITY.md §3). Today's pages pair as ephemeral.
    for p in store.list().iter().filter(|p| p.info().platform == "web" && !p.ephemeral()) {
        println!(
            "warning: {} ({}) is a web page paired by an older version, which kept its keys in the browser's storage at this plain-http address, where a host on another network can read them: revoke it (`tandem revoke {}`) and pair again.",
            escaped(p.name()),
            p.device_id(),
            p.device_id()
        );
    }
    // The daemon serves from the start; pairings run alongside it and hand
    // new devices to it.
    let (keeper, pair_calls) = DaemonKeeper::channel();
    let mut daemon = daemon(&client, &key, &mut store, tasks, calls, dir, url)?
        .with_name(opts.info.name.clone())
        .with_pairing(pair_calls)
        .with_relay_epoch(epoch);
    let (mut daemon_events, mut pair_events, _router) = split_events(events);
    let input = Some(Input::stdin());
    let mut ui = qr.ui(input.clone());
    let alongside = PairAlongside { client: &client, key: &key, opts, keeper, input, paired };
    let pairing = pair_alongside(alongside, &mut pair_events, &mut ui, paired == 0 || force_pair);
    let outcome = tokio::select! {
        r = daemon.run(&mut daemon_events) => r.map_err(anyhow::Error::from),
        e = pairing => Err(e.into()),
        () = stop_signal() => Ok(()),
    };
    drop(daemon);
    client.close().await;
    shutdown.cancel();
    let _ = relay.await;
    outcome
}
