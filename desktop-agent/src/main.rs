//! `tandem`: the desktop agent's command line. Thin: it parses flags, sets
//! up logging and calls into the library.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tandem_agent::agent_config::AgentConfig;
use tandem_agent::audit::{self, AuditEvent, AuditLog};
use tandem_agent::awake::KeepAwake;
use tandem_agent::daemon::Daemon;
use tandem_agent::history::{DEFAULT_MAX_EVENTS_PER_TASK, History, Lookup, StoredState};
use tandem_agent::keystore::KeyStore;
use tandem_agent::pair::{
    DaemonKeeper, PairAlongside, PairOptions, StoreKeeper, least_scope, pair, pair_alongside,
    split_events,
};
use tandem_agent::peers::{PeerStore, Scope};
use tandem_agent::report::field;
use tandem_agent::service;
use tandem_agent::settings::Settings;
use tandem_agent::tasks::{TaskManager, TaskOptions, TaskUpdate};
use tandem_agent::text::escaped;
use tandem_agent::ui::{Input, TerminalUi};
use tandem_agent::{damage, datadir, ipc, report, text};
use tandem_client::{Client, ClientConfig, Event};
use tandem_proto::Role;
use tandem_proto::entropy::Entropy;
use tandem_proto::message::DeviceInfo;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    version,
    about = "Send work to this computer from your phone, end to end encrypted"
)]
struct Cli {
    /// Where the agent keeps its key, paired devices and state.
    #[arg(long, env = "TANDEM_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// What this computer is called on the phone.
    #[arg(long, env = "TANDEM_NAME", global = true)]
    name: Option<String>,
    /// The configuration file (executors); default: the platform's config
    /// directory, tandem/config.toml.
    #[arg(long, env = "TANDEM_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a relay on this computer and connect to it; show the pairing QR
    /// code if no phone is paired yet, and again each time Enter is pressed.
    /// Ctrl-C stops both.
    Up {
        /// Address for the local relay (a phone on the same network must reach it).
        #[arg(long, default_value = "0.0.0.0:7878")]
        listen: SocketAddr,
        /// Show a pairing code at once even if a phone is paired already.
        #[arg(long)]
        pair: bool,
        #[command(flatten)]
        qr: QrArgs,
    },
    /// Pair a phone through a relay: show the QR code, confirm the 6-digit code.
    Pair {
        /// The relay's WebSocket URL, e.g. wss://relay.example.com/v1/connect
        /// (remembered for later commands).
        #[arg(long, env = "TANDEM_RELAY")]
        relay: Option<String>,
        /// The link the QR code opens (default: the relay's https origin + /p).
        #[arg(long)]
        link_base: Option<String>,
        /// A PEM file with a certificate to trust for the relay (self-signed relays).
        #[arg(long)]
        relay_ca: Option<PathBuf>,
        /// Give up after this many seconds without a pairing.
        #[arg(long)]
        timeout_secs: Option<u64>,
        #[command(flatten)]
        qr: QrArgs,
    },
    /// Connect to the configured relay and serve tasks (no local relay).
    Run,
    /// List paired devices with their scope and when they were last seen.
    Devices,
    /// Revoke a device: it can send nothing from now on, and the tasks it
    /// submitted stop (running ones are cancelled, queued ones never run).
    Revoke {
        /// Device id, a unique prefix of it, or its name.
        device: String,
    },
    /// Cancel a queued or running task; every phone sees it finish as
    /// cancelled. Exits with 1 when there is nothing to cancel (no such
    /// task, or it has finished) and 3 when no agent is running.
    Cancel {
        /// Task id, or a unique prefix of it.
        task: String,
    },
    /// Check the audit log's hash chain.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Whether the agent is running, its relay connection, devices and tasks.
    /// Exits with 3 when no agent is running on this data dir.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recent tasks; with a task id, its events. `--follow` keeps printing
    /// new events as they happen (needs a running agent).
    Tasks {
        /// Show this task's events.
        task: Option<String>,
        /// Keep printing new events.
        #[arg(long, short)]
        follow: bool,
        /// How many tasks to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The permission tool of `claude` executors: an MCP server on stdio,
    /// started by Claude Code (not by hand).
    #[command(hide = true)]
    McpPermission {
        /// The task's permission socket.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Limit what a device may do: view, submit or approve. Lowered to
    /// view, its queued and running tasks stop; lowered to submit, it can
    /// no longer answer approvals.
    Scope {
        /// Device id, a unique prefix of it, or its name.
        device: String,
        /// view | submit | approve
        scope: Scope,
    },
    /// Run `tandem run` at login: a systemd user unit (Linux) or a launchd
    /// agent (macOS), restarted when it fails.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceAction {
    /// Write the unit (or agent) with this data dir and config, then enable
    /// and start it. If the service manager is missing or fails, the file is
    /// still written and the commands to run are printed (exit status 0).
    Install {
        /// Only write the file; start nothing.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop, disable and remove it (succeeds if it is not installed).
    Uninstall,
}

#[derive(Subcommand, Debug)]
enum AuditAction {
    /// Verify every entry's hash and the chain; exit non-zero on any break.
    Verify,
}

#[derive(clap::Args, Debug, Default)]
struct QrArgs {
    /// Also write the QR code as a PNG.
    #[arg(long)]
    qr_png: Option<PathBuf>,
    /// Also write the QR code as an SVG.
    #[arg(long)]
    qr_svg: Option<PathBuf>,
    /// Print the pairing link as text.
    #[arg(long)]
    print_url: bool,
    /// Do not draw the QR code in the terminal.
    #[arg(long)]
    no_terminal_qr: bool,
    /// Confirm the pairing without asking (scripts), with the proposed scope.
    #[arg(long)]
    yes: bool,
    /// The scope to propose for the new device: view, submit or approve
    /// (default: the least that lets you work with the configured
    /// executors; a device paired again keeps its scope).
    #[arg(long)]
    scope: Option<Scope>,
}

impl QrArgs {
    /// The terminal UI, answering from `input` unless `--yes`.
    fn ui(&self, input: Option<Input>) -> TerminalUi {
        TerminalUi {
            yes: self.yes,
            print_url: self.print_url,
            qr_png: self.qr_png.clone(),
            qr_svg: self.qr_svg.clone(),
            no_terminal_qr: self.no_terminal_qr,
            input: if self.yes { None } else { input },
        }
    }

    /// Pairing options for `link_base`, proposing the least scope that
    /// works with `settings`' executors unless `--scope` says otherwise.
    fn options(&self, link_base: String, info: DeviceInfo, settings: &Settings) -> PairOptions {
        let mut opts = PairOptions::new(link_base, info);
        opts.default_scope = least_scope(&settings.executors);
        opts.scope = self.scope;
        opts.answer_wait =
            opts.step_timeout.min(Duration::from_secs(settings.agent.unfinished_pairing_secs));
        opts.outbox.max_messages = settings.agent.outbox_max_messages;
        opts
    }
}

fn data_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.data_dir {
        Some(d) => Ok(d.clone()),
        None => Ok(dirs::data_dir()
            .context("no data directory on this system; pass --data-dir")?
            .join("tandem")),
    }
}

fn device_info(cli: &Cli) -> DeviceInfo {
    let name = cli.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "desktop".into())
    });
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    DeviceInfo {
        name,
        platform: std::env::consts::OS.into(),
        app_version: env!("CARGO_PKG_VERSION").into(),
        ephemeral: false,
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The https (or http) origin a WebSocket relay URL belongs to, plus `/p`.
fn link_base_for(relay: &str) -> anyhow::Result<String> {
    let (scheme, rest) = if let Some(r) = relay.strip_prefix("wss://") {
        ("https", r)
    } else if let Some(r) = relay.strip_prefix("ws://") {
        ("http", r)
    } else {
        bail!("the relay URL must start with wss:// (or ws:// on a local network)");
    };
    let host = rest.split('/').next().unwrap_or_default();
    Ok(format!("{scheme}://{host}/p"))
}

/// `scheme://host[:port]` of an http(s) URL, lower case, without a default port.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    if authority.is_empty() {
        return None;
    }
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

/// The relay's http(s) origin for the QR payload when the pairing link
/// (`link_base`) opens a web client on another origin than the relay's
/// (`tandem pair --link-base`): the client cannot take the relay from the
/// link's origin then. `None` when they are the same origin.
fn relay_origin_for(link_base: &str, relay: &str) -> anyhow::Result<Option<String>> {
    let relay_base = link_base_for(relay)?;
    let relay_origin = relay_base.strip_suffix("/p").unwrap_or(&relay_base).to_owned();
    let link_origin = origin_of(link_base)
        .with_context(|| format!("the link base {link_base:?} must be an https:// URL"))?;
    if origin_of(&relay_origin).as_deref() == Some(link_origin.as_str()) {
        return Ok(None);
    }
    tandem_proto::qr::QrPayload::validate_relay(&relay_origin).map_err(|e| {
        anyhow::anyhow!(
            "the link opens {link_origin}, so it must name the relay, but {relay_origin} cannot be named in a pairing link: {e}"
        )
    })?;
    Ok(Some(relay_origin))
}

/// The address of this machine on the local network: the source address the
/// system would use to reach an outside address. Connecting a UDP socket
/// sends nothing.
fn lan_ip() -> IpAddr {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Wait for the first connection; returns the relay store's epoch.
async fn wait_connected(events: &mut tokio::sync::mpsc::Receiver<Event>) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Connected { store_epoch, .. })) => return Ok(store_epoch),
            Ok(Some(Event::Disconnected { reason, retry_in, .. })) if retry_in == Duration::MAX => {
                bail!("the relay refused this device: {reason}")
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the relay connection closed"),
            Err(_) => bail!("could not reach the relay within 20 s"),
        }
    }
}

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
        Command::Status { json } => status(&dir, *json).await,
        Command::Service { action } => service(&dir, cli.config.as_deref(), action),
        Command::Tasks { task, follow, limit } => {
            tasks(&dir, task.as_deref(), *follow, *limit).await
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
            let mut daemon =
                daemon(&client, &key, &mut store, tasks, calls, &dir, url)?.with_relay_epoch(epoch);
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

/// `tandem service install|uninstall`: do it, then say what happened and
/// what is left for the user.
fn service(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
    action: &ServiceAction,
) -> anyhow::Result<()> {
    let outcome = match action {
        ServiceAction::Install { no_start } => {
            let spec = service::ServiceSpec::for_current_exe(dir, config)?;
            service::install(&spec, !no_start)?
        }
        ServiceAction::Uninstall => service::uninstall()?,
    };
    match (action, &outcome.path) {
        (ServiceAction::Install { .. }, Some(p)) => println!("Wrote {}.", p.display()),
        (ServiceAction::Uninstall, Some(p)) => println!("Removed {}.", p.display()),
        (_, None) => println!("The tandem service is not installed; nothing to do."),
    }
    for cmd in &outcome.ran {
        println!("Ran `{cmd}`.");
    }
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    if !outcome.manual.is_empty() {
        println!("To finish, run:");
        for cmd in &outcome.manual {
            println!("  {cmd}");
        }
    } else if matches!(action, ServiceAction::Install { .. }) {
        println!("The agent runs in the background now and starts at login.");
    }
    Ok(())
}

/// Connect to the relay as this desktop (the daemon, or `tandem pair`,
/// then sends the revocations the relay has not confirmed).
/// A connected agent client, its events, and the relay store's epoch at
/// the connection (the daemon does not see that first `Connected`).
type Connected = (tandem_proto::DeviceKey, Client, tokio::sync::mpsc::Receiver<Event>, u64);

async fn connect_agent(
    dir: &std::path::Path,
    config: &mut AgentConfig,
    url: String,
) -> anyhow::Result<Connected> {
    let key = KeyStore::new(dir).load_or_create(&mut Entropy::os())?;
    let mut cc = ClientConfig::new(url, key.clone(), Role::Desktop);
    cc.extra_roots_pem = config.relay_roots_pem.clone();
    let (client, mut events) = Client::start(cc);
    let epoch = wait_connected(&mut events).await?;
    Ok((key, client, events, epoch))
}

/// The paired devices, outside the daemon: a damaged peer file is set
/// aside, said on standard error and recorded (the daemon shows its own in
/// `tandem status`).
fn open_peers(dir: &std::path::Path) -> anyhow::Result<PeerStore> {
    let mut store = PeerStore::open(dir)?;
    for aside in store.take_set_aside() {
        eprintln!("{}", aside.describe());
        record(dir, aside.audit_event());
    }
    Ok(store)
}

/// Append to the audit log (a failure is reported, never fatal).
fn record(dir: &std::path::Path, event: AuditEvent) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    match AuditLog::open(dir).and_then(|mut log| log.append(at, event)) {
        Ok(_) => {}
        Err(e) => eprintln!("warning: audit log: {e}"),
    }
}

/// What the daemon needs from the configuration: the task manager, the
/// idle time after which phones are detached, when devices that are gone
/// are forgotten (ephemeral ones, unfinished pairings), and the session
/// schedule.
struct TaskSetup {
    tasks: (TaskManager, tokio::sync::mpsc::Receiver<TaskUpdate>),
    idle_detach: Duration,
    ephemeral_ttl: Duration,
    unfinished_pairing: Duration,
    schedule: tandem_proto::upkeep::Schedule,
    /// When a record the relay holds goes again to a phone coming online.
    resend_stale: Duration,
    /// What was set aside opening the task history.
    set_aside: Vec<damage::SetAside>,
    /// The audit log's rotation size.
    audit_max_bytes: u64,
}

/// The daemon over a connected client, answering the control socket.
fn daemon<'a>(
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
async fn stop_signal() {
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

/// `tandem status`.
async fn status(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    match ipc::call(dir, &ipc::Request::Status).await {
        Ok(v) if json => println!("{v}"),
        Ok(v) => print!("{}", report::status_text(&v, now_unix().saturating_mul(1000))),
        Err(ipc::IpcError::NotRunning) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "running": false}));
            } else {
                let peers = open_peers(dir)?.len();
                println!(
                    "The agent is not running on {} ({peers} paired device(s)). Start it with `tandem up` or `tandem run`.",
                    dir.display()
                );
            }
            std::process::exit(3);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `tandem tasks [TASK] [--follow]`.
async fn tasks(
    dir: &std::path::Path,
    task: Option<&str>,
    follow: bool,
    limit: usize,
) -> anyhow::Result<()> {
    let now_ms = now_unix().saturating_mul(1000);
    // Subscribe first, so nothing falls between the replay and the live stream.
    let mut live = if follow {
        let req = ipc::Request::Follow { task_id: task.map(str::to_owned) };
        let mut answers = match ipc::open(dir, &req).await {
            Err(ipc::IpcError::NotRunning) => {
                bail!("--follow needs a running agent (`tandem up` or `tandem run`)")
            }
            r => r?,
        };
        if let Some(first) = answers.next().await? {
            ipc::check(first)?;
        }
        Some(answers)
    } else {
        None
    };
    let mut shown: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    match task {
        None => {
            let records = match ipc::call(dir, &ipc::Request::Tasks { limit }).await {
                Ok(v) => serde_json::from_value(field(&v, "tasks").clone())?,
                Err(ipc::IpcError::NotRunning) => History::open(dir)?.recent(limit)?,
                Err(e) => return Err(e.into()),
            };
            print!("{}", report::task_lines(&records, now_ms));
        }
        Some(query) => {
            let mut events: Vec<tandem_proto::message::Message> = Vec::new();
            // An id or a unique prefix of one: the agent answers with the id.
            let mut id = query.to_owned();
            // The running agent answers in pages: ask until a short one.
            loop {
                let from_offset = events.len() as u64;
                let req = ipc::Request::Events { task_id: id.clone(), from_offset };
                let page: Vec<tandem_proto::message::Message> = match ipc::call(dir, &req).await {
                    Ok(v) => {
                        if let Some(found) = field(&v, "task_id").as_str() {
                            found.clone_into(&mut id);
                        }
                        serde_json::from_value(field(&v, "events").clone())?
                    }
                    Err(ipc::IpcError::NotRunning) if from_offset == 0 => {
                        let history = History::open(dir)?;
                        if let Lookup::Found(r) = history.find(query)? {
                            id = r.task_id;
                        }
                        history.events(&id, 0, usize::MAX)?
                    }
                    Err(e) => return Err(e.into()),
                };
                let full = page.len() >= ipc::EVENTS_PAGE;
                events.extend(page);
                if !full {
                    break;
                }
            }
            if events.is_empty() {
                println!("No events for task {}.", text::one_line(&id));
            }
            for m in &events {
                print_event(m, &mut shown);
            }
        }
    }
    if let Some(answers) = &mut live {
        while let Some(v) = answers.next().await? {
            let m: tandem_proto::message::Message =
                serde_json::from_value(field(&v, "event").clone())?;
            print_event(&m, &mut shown);
        }
        bail!("the agent stopped (or this follower fell behind)");
    }
    Ok(())
}

/// Print a task event once (the replay and the live stream overlap).
fn print_event(
    m: &tandem_proto::message::Message,
    shown: &mut std::collections::HashMap<String, u64>,
) {
    let tandem_proto::message::Message::TaskEvent { task_id, offset, .. } = m else { return };
    if shown.get(task_id).is_some_and(|o| *offset < *o) {
        return;
    }
    shown.insert(task_id.clone(), offset + 1);
    if let Some(line) = report::event_line(m) {
        println!("{line}");
    }
}

/// The executors and `[agent]` settings from the configuration file, ready
/// to run tasks.
fn task_manager(cli: &Cli, dir: &std::path::Path) -> anyhow::Result<TaskSetup> {
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

/// The configuration file (`--config`, else the default path).
fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    let path = match &cli.config {
        Some(p) => Some(p.clone()),
        None => Settings::default_path(),
    };
    Ok(match path {
        Some(p) => Settings::load(&p)?,
        None => Settings::default(),
    })
}

/// `tandem pair`: the revocations the relay has not confirmed (the daemon
/// sends them itself on every connection).
async fn send_pending_revokes(client: &Client, dir: &std::path::Path, config: &mut AgentConfig) {
    let mut left = Vec::new();
    for id in std::mem::take(&mut config.pending_revokes) {
        let told = tokio::time::timeout(Duration::from_secs(10), client.revoke(id)).await;
        if !matches!(told, Ok(Ok(()))) {
            left.push(id);
        }
    }
    config.pending_revokes = left;
    let _ = config.save(dir);
}

/// With no agent running: say what happens to the queued tasks of a device
/// that was revoked or lowered below `submit` (the agent drops them when it
/// starts, before anything runs).
fn say_queued_dropped(dir: &std::path::Path, id: &tandem_proto::DeviceId) {
    let Ok(history) = History::open(dir) else { return };
    let key = id.to_string();
    let waiting = history
        .unfinished()
        .map(|tasks| tasks.iter().filter(|t| t.runner() == key).count())
        .unwrap_or(0);
    if waiting > 0 {
        println!(
            "{waiting} unfinished task(s) of it end when the agent starts; none of them runs again."
        );
    }
}

/// `tandem cancel TASK`.
async fn cancel(dir: &std::path::Path, query: &str) -> anyhow::Result<()> {
    match ipc::call(dir, &ipc::Request::Cancel { task: query.to_owned() }).await {
        Ok(v) => {
            let id = text::one_line(field(&v, "task_id").as_str().unwrap_or(query));
            if field(&v, "was").as_str() == Some("running") {
                println!("Cancelling task {id}: its executor is being stopped.");
            } else {
                println!("Cancelled task {id} before it started.");
            }
            return Ok(());
        }
        Err(ipc::IpcError::Refused(msg)) => {
            eprintln!("{}", text::one_line(&msg));
            std::process::exit(1);
        }
        Err(ipc::IpcError::NotRunning) => {}
        Err(e) => return Err(e.into()),
    }
    let history = History::open(dir)?;
    let task = match history.find(query)? {
        Lookup::Found(r) => r,
        Lookup::NotFound => {
            eprintln!("No task matches `{}` (see `tandem tasks`).", text::one_line(query));
            std::process::exit(1);
        }
        Lookup::Ambiguous(ids) => {
            eprintln!(
                "`{}` matches several tasks: {}; give more of the id.",
                text::one_line(query),
                text::one_line(&ids.join(", "))
            );
            std::process::exit(1);
        }
    };
    let id = text::one_line(&task.task_id);
    match task.state {
        StoredState::Finished { .. } => {
            eprintln!("Task {id} has already finished ({}); nothing to cancel.", task.state_str());
            std::process::exit(1);
        }
        StoredState::Running => println!(
            "The agent is not running on {}, so neither is task {id}: it was interrupted when the agent stopped, and finishes as interrupted when the agent starts.",
            dir.display()
        ),
        StoredState::Queued => {
            // It must not run when the agent starts: finished in the history now.
            let task_id = task.task_id.clone();
            tandem_agent::tasks::cancel_queued_offline(&history, *task)?;
            drop(history);
            record(
                dir,
                AuditEvent::Cancelled {
                    by: "desktop".into(),
                    task_id: task_id.clone(),
                    instruction: None,
                },
            );
            record(dir, AuditEvent::TaskFinished { task_id, status: "cancelled".into() });
            println!(
                "Cancelled task {id} before it started. The agent is not running on {}; phones hear of it when it starts.",
                dir.display()
            );
            return Ok(());
        }
    }
    std::process::exit(3);
}

/// `tandem up`: a relay on this computer, the agent connected to it, and
/// the pairing code when no phone is paired yet (or with `--pair`), and
/// again each time Enter is pressed, while the daemon serves.
async fn up(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_base_on_another_origin_names_the_relay() {
        let relay = "wss://relay.example.com/v1/connect";
        let same = |base: &str| relay_origin_for(base, relay).ok().flatten();
        assert_eq!(same("https://relay.example.com/p"), None);
        assert_eq!(same("https://Relay.Example.com:443/p"), None);
        assert_eq!(same("https://app.example.com/p"), Some("https://relay.example.com".to_owned()));
        assert_eq!(
            same("https://relay.example.com:8443/p"),
            Some("https://relay.example.com".to_owned())
        );
        let local = relay_origin_for("https://app.example.com/p", "ws://127.0.0.1:7878/v1/connect");
        assert_eq!(local.ok().flatten(), Some("http://127.0.0.1:7878".to_owned()));
        // The default link (the relay's own origin) never names it.
        let base = link_base_for("ws://192.168.1.5:7878/v1/connect").ok().unwrap_or_default();
        assert_eq!(
            relay_origin_for(&base, "ws://192.168.1.5:7878/v1/connect").ok().flatten(),
            None
        );
        // Plain http to a public relay cannot go into a QR payload.
        assert!(
            relay_origin_for("https://app.example.com/p", "ws://relay.example.com/v1/connect")
                .is_err()
        );
        assert!(relay_origin_for("app.example.com/p", relay).is_err());
    }
}
