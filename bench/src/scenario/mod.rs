//! The scenarios, and what they share: the options with their defaults and
//! quick-mode values, and starting the targets.

pub mod all;
pub mod idle;
pub mod idle_worker;
pub mod latency;
pub mod offline;
pub mod pairing;
pub mod reconnect;
pub mod reconnect_phases;
pub mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Opts;
use crate::error::{BenchError, Result};
use crate::machine::Machine;
use crate::pairing::RelayAccess;
use crate::relay::{RelayOptions, RelayProcess, sibling_binary};
use crate::target::direct::DirectTarget;
use crate::target::forwarder::ForwarderTarget;
use crate::target::tandem::TandemTarget;
use crate::target::tandem_wire::TandemWireTarget;
use crate::target::{Target, TargetKind};
use crate::wire::{Clock, WireSizes};

/// Seconds between the relay's pings for loaded connections (the default).
pub(crate) const PING_SECS: u64 = 20;

/// What every scenario gets.
#[derive(Debug)]
pub struct Context {
    /// The options as given.
    pub opts: Opts,
    /// This binary (workers and the forwarder are this binary again).
    pub exe: PathBuf,
    /// The relay binary to start.
    pub relay_bin: PathBuf,
    /// Where the run happens.
    pub machine: Machine,
    /// The run's clock.
    pub clock: Clock,
    /// Root certificates from `--root-cert`.
    roots: Vec<String>,
}

/// A target that runs, with the relay behind it when the bench started one.
pub struct Running {
    /// The target.
    pub target: Box<dyn Target>,
    /// The relay process (tandem target, relay started by the bench).
    pub relay: Option<RelayProcess>,
}

impl Context {
    /// Resolve paths and read `--root-cert`.
    ///
    /// # Errors
    /// [`BenchError::Io`] when the certificate cannot be read.
    pub fn new(opts: Opts) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let relay_bin = opts.relay_bin.clone().unwrap_or_else(|| sibling_binary("tandem-relay"));
        let roots = match &opts.root_cert {
            Some(p) => vec![std::fs::read_to_string(p)?],
            None => Vec::new(),
        };
        Ok(Self { opts, exe, relay_bin, machine: Machine::detect(), clock: Clock::start(), roots })
    }

    /// `--quick`.
    #[must_use]
    pub fn quick(&self) -> bool {
        self.opts.quick
    }

    /// `full` normally, `quick` with `--quick`.
    #[must_use]
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick() { quick } else { full }
    }

    /// `--duration`, or the default for the mode.
    #[must_use]
    pub fn duration(&self, full: f64, quick: f64) -> Duration {
        Duration::from_secs_f64(self.opts.duration.unwrap_or(self.pick(full, quick)).max(0.1))
    }

    /// Start a relay as the options say (TLS with `--tls`).
    ///
    /// # Errors
    /// [`BenchError::Process`] when it does not start.
    pub fn start_relay(&self, tls: bool, ping_interval_secs: u64) -> Result<RelayProcess> {
        RelayProcess::start(RelayOptions {
            bin: self.relay_bin.clone(),
            tls,
            ping_interval_secs,
            extra_args: self.opts.relay_args.clone(),
        })
    }

    /// Where devices reach `relay`.
    ///
    /// # Errors
    /// [`BenchError::Io`] when its certificate cannot be read.
    pub fn access(&self, relay: Option<&RelayProcess>) -> Result<RelayAccess> {
        match relay {
            Some(r) => Ok(RelayAccess {
                url: r.url().to_owned(),
                roots: r.root_pem()?.into_iter().collect(),
            }),
            None => Ok(RelayAccess {
                url: self.opts.url.clone().ok_or_else(|| BenchError::Usage("no relay".into()))?,
                roots: self.roots.clone(),
            }),
        }
    }

    /// The tandem target: the relay at `--url`, or one started now.
    ///
    /// # Errors
    /// When the relay does not start.
    pub fn tandem(&self) -> Result<Running> {
        let (relay, access, pid) = self.relay_under_test()?;
        Ok(Running { target: Box::new(TandemTarget::new(access, pid)), relay })
    }

    /// The tandem-wire target: the same relay, driven at the frame level.
    ///
    /// # Errors
    /// When the relay does not start, or it is a TLS relay.
    pub fn tandem_wire(&self, sizes: WireSizes) -> Result<Running> {
        if self.opts.tls {
            return Err(BenchError::Usage("the tandem-wire target does not speak TLS".into()));
        }
        let (relay, access, pid) = self.relay_under_test()?;
        Ok(Running { target: Box::new(TandemWireTarget::new(access, pid, sizes)?), relay })
    }

    /// The relay at `--url`, or one started now; where devices reach it and
    /// its process id.
    fn relay_under_test(&self) -> Result<(Option<RelayProcess>, RelayAccess, Option<u32>)> {
        let relay = match self.opts.url {
            Some(_) => None,
            None => Some(self.start_relay(self.opts.tls, PING_SECS)?),
        };
        let access = self.access(relay.as_ref())?;
        let pid = relay.as_ref().map(RelayProcess::pid).or(self.opts.relay_pid);
        Ok((relay, access, pid))
    }

    /// The targets a scenario drives: `--targets`, or `default` (without
    /// tandem-wire under `--tls`: it speaks plain WebSocket only).
    #[must_use]
    pub fn targets(&self, default: &[TargetKind]) -> Vec<TargetKind> {
        self.opts.targets.clone().unwrap_or_else(|| {
            default
                .iter()
                .copied()
                .filter(|k| !(self.opts.tls && *k == TargetKind::TandemWire))
                .collect()
        })
    }

    /// Start a target of `kind`.
    ///
    /// # Errors
    /// When its server does not start.
    pub async fn target(&self, kind: TargetKind, sizes: WireSizes) -> Result<Running> {
        match kind {
            TargetKind::Tandem => self.tandem(),
            TargetKind::TandemWire => self.tandem_wire(sizes),
            TargetKind::Forwarder => Ok(Running {
                target: Box::new(ForwarderTarget::start(&self.exe, sizes)?),
                relay: None,
            }),
            TargetKind::Direct => {
                Ok(Running { target: Box::new(DirectTarget::start(sizes).await?), relay: None })
            }
            #[cfg(feature = "iroh")]
            TargetKind::Iroh => Ok(Running {
                target: Box::new(crate::target::iroh::IrohTarget::start(&self.exe, sizes)?),
                relay: None,
            }),
            #[cfg(not(feature = "iroh"))]
            TargetKind::Iroh => Err(BenchError::Usage(
                "the iroh target needs a build with the cargo feature `iroh`".into(),
            )),
        }
    }

    /// Where this scenario's JSON goes.
    #[must_use]
    pub fn json_path(&self, scenario: &str) -> PathBuf {
        self.opts
            .json
            .clone()
            .unwrap_or_else(|| crate::report::default_dir().join(format!("{scenario}.json")))
    }
}

/// A health report's errors as failures.
pub(crate) fn health_failures(target: &str, health: &crate::target::HealthReport) -> Vec<String> {
    if health.errors == 0 {
        return Vec::new();
    }
    vec![format!(
        "{target}: {} error(s) inside the pairs, the first: {}",
        health.errors,
        health.first_error.as_deref().unwrap_or("?")
    )]
}

/// The throughput of a run in messages per second.
pub(crate) fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 { count as f64 / seconds } else { 0.0 }
}
