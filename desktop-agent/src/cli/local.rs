//! Helpers every subcommand shares: the data directory, this computer's
//! description, the paired devices, the audit log and the settings.

use std::path::PathBuf;

use super::args::Cli;
use anyhow::Context;
use tandem_agent::audit::{AuditEvent, AuditLog};
use tandem_agent::history::History;
use tandem_agent::peers::PeerStore;
use tandem_agent::settings::Settings;
use tandem_proto::message::DeviceInfo;

pub(crate) fn data_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.data_dir {
        Some(d) => Ok(d.clone()),
        None => Ok(dirs::data_dir()
            .context("no data directory on this system; pass --data-dir")?
            .join("tandem")),
    }
}

pub(crate) fn device_info(cli: &Cli) -> DeviceInfo {
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

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The paired devices, outside the daemon: a damaged peer file is set
/// aside, said on standard error and recorded (the daemon shows its own in
/// `tandem status`).
pub(crate) fn open_peers(dir: &std::path::Path) -> anyhow::Result<PeerStore> {
    let mut store = PeerStore::open(dir)?;
    for aside in store.take_set_aside() {
        eprintln!("{}", aside.describe());
        record(dir, aside.audit_event());
    }
    Ok(store)
}

/// Append to the audit log (a failure is reported, never fatal).
pub(crate) fn record(dir: &std::path::Path, event: AuditEvent) {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    match AuditLog::open(dir).and_then(|mut log| log.append(at, event)) {
        Ok(_) => {}
        Err(e) => eprintln!("warning: audit log: {e}"),
    }
}

/// The configuration file (`--config`, else the default path).
pub(crate) fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    let path = match &cli.config {
        Some(p) => Some(p.clone()),
        None => Settings::default_path(),
    };
    Ok(match path {
        Some(p) => Settings::load(&p)?,
        None => Settings::default(),
    })
}

/// With no agent running: say what happens to the queued tasks of a device
/// that was revoked or lowered below `submit` (the agent drops them when it
/// starts, before anything runs).
pub(crate) fn say_queued_dropped(dir: &std::path::Path, id: &tandem_proto::DeviceId) {
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
