//! `tandem`: the desktop agent's command line. Thin: it parses flags, sets
//! up logging and calls into the library.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tandem_agent::agent_config::AgentConfig;
use tandem_agent::audit::{self, AuditEvent, AuditLog};
use tandem_agent::keystore::KeyStore;
use tandem_agent::pair::{StoreKeeper, pair};
use tandem_agent::peers::PeerStore;
use tandem_agent::report::field;
use tandem_agent::text::escaped;
use tandem_agent::ui::Input;
use tandem_agent::{datadir, ipc, report};
use tandem_client::{Client, ClientConfig, Event};
use tandem_proto::Role;
use tandem_proto::entropy::Entropy;

mod cli;

use crate::cli::{
    args::{AuditAction, Cli, Command},
    commands::{cancel, service, status, tasks},
    local::{
        data_dir, device_info, load_settings, now_unix, open_peers, record, say_queued_dropped,
    },
    relay::{connect_agent, link_base_for, relay_origin_for, send_pending_revokes},
    run::{daemon, stop_signal, task_manager, up},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Crash tests' failpoints (`FAILPOINTS`; only with the `failpoints` feature).
    let _failpoints = tandem_agent::crashpoint::setup();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    if let Command::McpPermission { socket } = &cli.command {
        // Before the data dir: Claude Code starts this without --data-dir.
        return Ok(tandem_agent::claude::serve_permission_tool(socket.clone()).await?);
    }
    let dir = data_dir(&cli)?;
    // 0700, every file 0600; another user's file refused.
    for fixed in datadir::prepare(&dir)? {
        eprintln!("warning: {fixed}");
    }
    // A revocation a crash cut between its two writes: finished before
    // anything reads the paired devices.
    for id in AgentConfig::finish_revocations(&dir)? {
        eprintln!("warning: the revocation of {id} was interrupted; it is finished now");
        record(&dir, AuditEvent::Revoked { device: id.to_string() });
    }
    let info = device_info(&cli);
    match &cli.command {
        Command::Devices => {
            let store = open_peers(&dir)?;
            print!("{}", report::device_lines(&store.list(), now_unix()));
            Ok(())
        }
        Command::Audit { action: AuditAction::Verify } => {
            let path = dir.join(audit::FILE_NAME);
            let (report, earlier) = audit::verify_all(&path)?;
            println!(
                "{}: {} entries in {} file(s), chain intact; last hash {}",
                path.display(),
                report.entries,
                earlier + 1,
                report.last_hash
            );
            Ok(())
        }
        Command::McpPermission { .. } => Ok(()), // served above
        Command::Executors => {
            let settings = load_settings(&cli)?;
            print!("{}", report::choice_lines(&settings.executors, &settings.projects));
            Ok(())
        }
        Command::Status { json } => status(&dir, *json).await,
        Command::Service { action } => service(&dir, cli.config.as_deref(), action),
        Command::Tasks { task, follow, limit } => {
            // For the terminal hand-off line (a config that does not load
            // only loses that line here).
            let settings = load_settings(&cli).ok();
            tasks(&dir, task.as_deref(), *follow, *limit, settings.as_ref()).await
        }
        Command::Scope { device, scope } => {
            let req = ipc::Request::SetScope { device: device.clone(), scope: *scope };
            match ipc::call(&dir, &req).await {
                Ok(v) => {
                    println!(
                        "{}: scope is now {scope}",
                        field(&v, "device_id").as_str().unwrap_or(device)
                    );
                    let stopped = field(&v, "stopped").as_u64().unwrap_or(0);
                    if stopped > 0 {
                        println!("Stopped {stopped} of its task(s): it may no longer run tasks.");
                    }
                    return Ok(());
                }
                Err(ipc::IpcError::NotRunning) => {}
                Err(e) => return Err(e.into()),
            }
            let mut store = open_peers(&dir)?;
            let id = store.resolve(device)?;
            store.set_scope(&id, *scope)?;
            record(
                &dir,
                AuditEvent::ScopeChanged { device: id.to_string(), scope: scope.to_string() },
            );
            println!("{id}: scope is now {scope}");
            if !scope.allows_submit() {
                say_queued_dropped(&dir, &id);
            }
            Ok(())
        }
        Command::Cancel { task } => cancel(&dir, task).await,
        Command::Rules { action } => {
            let settings = load_settings(&cli)?;
            cli::rules::rules(&dir, &settings.rules, action.as_ref()).await
        }
        Command::Revoke { device } => {
            let req = ipc::Request::Revoke { device: device.clone() };
            match ipc::call(&dir, &req).await {
                Ok(v) => {
                    println!(
                        "Removed {} ({}) from this computer: its messages are no longer accepted.",
                        escaped(field(&v, "name").as_str().unwrap_or("?")),
                        field(&v, "device_id").as_str().unwrap_or("?")
                    );
                    let stopped = field(&v, "stopped").as_u64().unwrap_or(0);
                    if stopped > 0 {
                        println!("Stopped {stopped} of its task(s).");
                    }
                    if let Some(w) = field(&v, "warning").as_str() {
                        eprintln!(
                            "warning: {w}; until the relay confirms, it is told only while this agent keeps running"
                        );
                    }
                    if field(&v, "relay").as_bool() == Some(true) {
                        println!("The relay refuses it from now on.");
                    } else {
                        println!(
                            "The relay could not be told now; the agent tells it when it reconnects."
                        );
                    }
                    return Ok(());
                }
                Err(ipc::IpcError::NotRunning) => {}
                Err(e) => return Err(e.into()),
            }
            let mut store = open_peers(&dir)?;
            let id = store.resolve(device)?;
            // The relay is to be told even if this process dies before it
            // answers: on disk first; the agent sends it when it connects.
            let mut config = AgentConfig::load(&dir)?;
            if !config.pending_revokes.contains(&id) {
                config.pending_revokes.push(id);
            }
            config.save(&dir)?;
            let peer = store.remove(&id)?;
            record(&dir, AuditEvent::Revoked { device: id.to_string() });
            println!(
                "Removed {} ({id}) from this computer: its messages are no longer accepted.",
                escaped(peer.name())
            );
            say_queued_dropped(&dir, &id);
            let Some(url) = config.relay_url.clone() else {
                return Ok(());
            };
            let key = KeyStore::new(&dir).load_or_create(&mut Entropy::os())?;
            let mut cc = ClientConfig::new(url, key, Role::Desktop);
            cc.extra_roots_pem = config.relay_roots_pem.clone();
            let (client, mut events) = Client::start(cc);
            // One attempt: a relay that is not there now (the one `tandem up`
            // runs stopped with the agent) hears of it from the agent later.
            let told = async {
                loop {
                    match events.recv().await {
                        Some(Event::Connected { .. }) => break,
                        Some(Event::Disconnected { reason, .. }) => bail!("{reason}"),
                        Some(_) => {}
                        None => bail!("the relay connection closed"),
                    }
                }
                client.revoke(id).await.map_err(anyhow::Error::from)
            };
            match tokio::time::timeout(Duration::from_secs(20), told).await {
                Ok(Ok(())) => {
                    let mut config = AgentConfig::load(&dir)?;
                    config.pending_revokes.retain(|p| *p != id);
                    config.save(&dir)?;
                    println!("The relay refuses it from now on.");
                }
                _ => println!(
                    "The relay could not be told now; the agent tells it when it connects (`tandem up`, `tandem run` or `tandem pair`)."
                ),
            }
            client.close().await;
            Ok(())
        }
        Command::Pair { relay, link_base, relay_ca, timeout_secs, qr } => {
            if let Ok(v) = ipc::call(&dir, &ipc::Request::Status).await {
                bail!(
                    "the agent is running on this data dir (pid {}): stop it first, or pair with `tandem up --pair`",
                    field(&v, "pid")
                );
            }
            let mut config = AgentConfig::load(&dir)?;
            let url = relay
                .clone()
                .or(config.relay_url.clone())
                .context("which relay? pass --relay wss://…/v1/connect")?;
            if let Some(ca) = relay_ca {
                let pem = std::fs::read_to_string(ca)
                    .with_context(|| format!("reading {}", ca.display()))?;
                config.relay_roots_pem = vec![pem];
            }
            let base = match link_base {
                Some(b) => b.clone(),
                None => link_base_for(&url)?,
            };
            let relay_origin = relay_origin_for(&base, &url)?;
            config.relay_url = Some(url.clone());
            config.save(&dir)?;
            let settings = load_settings(&cli)?;
            let (key, client, mut events, _) = connect_agent(&dir, &mut config, url).await?;
            send_pending_revokes(&client, &dir, &mut config).await;
            let mut opts = qr.options(base, info, &settings);
            // A link to a web client on another origin must name the relay.
            opts.relay_origin = relay_origin;
            opts.deadline = timeout_secs.map(Duration::from_secs);
            let mut ui = qr.ui((!qr.yes).then(Input::stdin));
            let mut store = open_peers(&dir)?;
            let audit = AuditLog::open(&dir).inspect_err(|e| eprintln!("warning: audit log: {e}"));
            let mut keeper = StoreKeeper::new(&mut store, audit.ok());
            // Deliveries that arrive meanwhile are not acked: the relay keeps
            // them for the daemon's next connection.
            let paired = pair(&client, &mut events, &key, &opts, &mut ui, &mut keeper).await?;
            println!("{}", paired.describe());
            client.close().await;
            Ok(())
        }
        Command::Up { listen, pair: force_pair, qr } => {
            let (_socket, calls) = ipc::serve(&dir).await?;
            let tasks = task_manager(&cli, &dir)?;
            let opts = qr.options(String::new(), info, &load_settings(&cli)?);
            up(&dir, opts, *listen, *force_pair, qr, tasks, calls).await
        }
        Command::Run => {
            let (_socket, calls) = ipc::serve(&dir).await?;
            let tasks = task_manager(&cli, &dir)?;
            let mut config = AgentConfig::load(&dir)?;
            let url = config
                .relay_url
                .clone()
                .context("no relay yet: run `tandem pair --relay …` first")?;
            let (key, client, mut events, epoch) =
                connect_agent(&dir, &mut config, url.clone()).await?;
            let mut store = PeerStore::open(&dir)?;
            println!("Connected. {} paired device(s). Press Ctrl-C to stop.", store.len());
            let mut daemon = daemon(&client, &key, &mut store, tasks, calls, &dir, url)?
                .with_relay_epoch(epoch)
                .with_name(device_info(&cli).name);
            tokio::select! {
                r = daemon.run(&mut events) => r?,
                () = stop_signal() => {}
            }
            drop(daemon);
            client.close().await;
            Ok(())
        }
    }
}
