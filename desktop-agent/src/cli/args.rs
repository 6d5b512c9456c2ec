//! The command line: `tandem`'s flags and subcommands (clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tandem_agent::pair::{PairOptions, least_scope};
use tandem_agent::peers::Scope;
use tandem_agent::settings::Settings;
use tandem_agent::ui::{Input, TerminalUi};
use tandem_proto::message::DeviceInfo;

#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    version,
    about = "Send work to this computer from your phone, end to end encrypted"
)]
pub(crate) struct Cli {
    /// Where the agent keeps its key, paired devices and state.
    #[arg(long, env = "TANDEM_DATA_DIR", global = true)]
    pub(crate) data_dir: Option<PathBuf>,
    /// What this computer is called on the phone.
    #[arg(long, env = "TANDEM_NAME", global = true)]
    pub(crate) name: Option<String>,
    /// The configuration file (executors); default: the platform's config
    /// directory, tandem/config.toml.
    #[arg(long, env = "TANDEM_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    /// The executors and projects a phone may pick for a task, the defaults
    /// first (from the configuration file).
    Executors,
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
        /// view | submit | approve | rules (rules: may also add allow rules
        /// from an approval, "always allow")
        scope: Scope,
    },
    /// The approval rules: the configuration's `[[rule]]`s, then those
    /// phones added ("always allow", numbered); `remove N` takes an added
    /// one away (from a running agent too).
    Rules {
        #[command(subcommand)]
        action: Option<RulesAction>,
    },
    /// Run `tandem run` at login: a systemd user unit (Linux) or a launchd
    /// agent (macOS), restarted when it fails.
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum RulesAction {
    /// Remove the rule a phone added with this number (`tandem rules`
    /// numbers them).
    Remove {
        /// The rule's number.
        number: usize,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ServiceAction {
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
pub(crate) enum AuditAction {
    /// Verify every entry's hash and the chain; exit non-zero on any break.
    Verify,
}

#[derive(clap::Args, Debug, Default)]
pub(crate) struct QrArgs {
    /// Also write the QR code as a PNG.
    #[arg(long)]
    pub(crate) qr_png: Option<PathBuf>,
    /// Also write the QR code as an SVG.
    #[arg(long)]
    pub(crate) qr_svg: Option<PathBuf>,
    /// Print the pairing link as text.
    #[arg(long)]
    pub(crate) print_url: bool,
    /// Do not draw the QR code in the terminal.
    #[arg(long)]
    pub(crate) no_terminal_qr: bool,
    /// Confirm the pairing without asking (scripts), with the proposed scope.
    #[arg(long)]
    pub(crate) yes: bool,
    /// The scope to propose for the new device: view, submit or approve
    /// (default: the least that lets you work with the configured
    /// executors; a device paired again keeps its scope).
    #[arg(long)]
    pub(crate) scope: Option<Scope>,
}

impl QrArgs {
    /// The terminal UI, answering from `input` unless `--yes`.
    pub(crate) fn ui(&self, input: Option<Input>) -> TerminalUi {
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
    pub(crate) fn options(
        &self,
        link_base: String,
        info: DeviceInfo,
        settings: &Settings,
    ) -> PairOptions {
        let mut opts = PairOptions::new(link_base, info);
        opts.default_scope = least_scope(&settings.executors);
        opts.scope = self.scope;
        opts.answer_wait =
            opts.step_timeout.min(Duration::from_secs(settings.agent.unfinished_pairing_secs));
        opts.outbox.max_messages = settings.agent.outbox_max_messages;
        opts
    }
}
