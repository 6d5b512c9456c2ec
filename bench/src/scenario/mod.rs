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
pub mod storm_nodes;
pub mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Opts;
use crate::cluster::Cluster;
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
    /// The relay nodes and their Redis (the Redis targets).
    pub cluster: Option<Cluster>,
}

impl Running {
    fn of(target: Box<dyn Target>) -> Self {
        Self { target, relay: None, cluster: None }
    }

    /// The processes whose CPU time is the target's: every node and Redis
    /// for the Redis targets, else the target's process.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        match &self.cluster {
            Some(c) => c.pids(),
            None => self.target.pid().into_iter().collect(),
        }
    }

    /// Names for [`Running::pids`], in the same order (`n1`, `n2`,
    /// `redis`; `relay` or the target's name for one process).
    #[must_use]
    pub fn process_names(&self) -> Vec<String> {
        match &self.cluster {
            Some(c) => (1..=c.nodes.len())
                .map(crate::cluster::node_id)
                .chain(std::iter::once("redis".to_owned()))
                .collect(),
            None => self.target.pid().map(|_| self.target.name().to_owned()).into_iter().collect(),
        }
    }

    /// Cores each process kept busy over `seconds` (the Redis targets:
    /// every node and Redis), from a run's CPU seconds per process.
    #[must_use]
    pub fn cores_each(&self, cpu_each: &[Option<f64>], seconds: f64) -> Vec<(String, Option<f64>)> {
        if self.cluster.is_none() || seconds <= 0.0 {
            return Vec::new();
        }
        self.process_names()
            .into_iter()
            .zip(cpu_each.iter().map(|c| c.map(|c| c / seconds)))
            .collect()
    }

    /// Redis's command counters now (the Redis targets).
    #[must_use]
    pub fn redis_commands(&self) -> Option<crate::redis::Commands> {
        self.cluster.as_ref().and_then(Cluster::commands)
    }

    /// The end of the relays' logs, when the bench started them.
    #[must_use]
    pub fn log_tail(&self) -> Option<String> {
        match (&self.relay, &self.cluster) {
            (Some(r), _) => Some(r.log_tail()),
            (None, Some(c)) => Some(c.log_tails()),
            (None, None) => None,
        }
    }
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
        RelayProcess::start(self.relay_options(tls, ping_interval_secs))
    }

    /// How the bench starts relays (`--relay-arg`s included).
    #[must_use]
    pub fn relay_options(&self, tls: bool, ping_interval_secs: u64) -> RelayOptions {
        RelayOptions {
            bin: self.relay_bin.clone(),
            tls,
            ping_interval_secs,
            extra_args: self.opts.relay_args.clone(),
        }
    }

    /// Start Redis and `nodes` relay nodes on it (`--redis-fsync`).
    ///
    /// # Errors
    /// [`BenchError::Usage`] with `--url` or without `redis-server`;
    /// [`BenchError::Process`] when a process does not start.
    pub fn start_cluster(
        &self,
        nodes: usize,
        tls: bool,
        ping_interval_secs: u64,
    ) -> Result<Cluster> {
        self.start_cluster_with(nodes, tls, ping_interval_secs, &[])
    }

    /// [`Context::start_cluster`] with `node_args` for every node (before
    /// `--relay-arg`s).
    ///
    /// # Errors
    /// As [`Context::start_cluster`].
    pub fn start_cluster_with(
        &self,
        nodes: usize,
        tls: bool,
        ping_interval_secs: u64,
        node_args: &[&str],
    ) -> Result<Cluster> {
        if self.opts.url.is_some() {
            return Err(BenchError::Usage(
                "the Redis targets start their own nodes and Redis (leave out --url)".into(),
            ));
        }
        if !crate::redis::available() {
            return Err(BenchError::Usage(format!(
                "{} is not installed (apt install redis-server): the Redis targets and the storm \
                 over several nodes need it",
                crate::redis::PROGRAM
            )));
        }
        let mut opts = self.relay_options(tls, ping_interval_secs);
        let mut args: Vec<String> = node_args.iter().map(|a| (*a).to_owned()).collect();
        args.append(&mut opts.extra_args);
        opts.extra_args = args;
        Cluster::start(&opts, nodes, self.redis_fsync())
    }

    /// `--redis-fsync` (Redis's `appendfsync`).
    #[must_use]
    pub fn redis_fsync(&self) -> &str {
        self.opts.redis_fsync.as_str()
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
        Ok(Running { target: Box::new(TandemTarget::new(access, pid)), relay, cluster: None })
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
        Ok(Running {
            target: Box::new(TandemWireTarget::new(access, pid, sizes)?),
            relay,
            cluster: None,
        })
    }

    /// `tandem-wire` against relay nodes on Redis: one node
    /// (`tandem-wire-redis`), or two with desktops on node 1 and phones on
    /// node 2 (`tandem-wire-cluster`).
    ///
    /// # Errors
    /// As [`Context::start_cluster`]; under `--tls`.
    pub fn tandem_wire_redis(&self, kind: TargetKind, sizes: WireSizes) -> Result<Running> {
        if self.opts.tls {
            return Err(BenchError::Usage("the tandem-wire targets do not speak TLS".into()));
        }
        let (name, nodes) = match kind {
            TargetKind::TandemWireCluster => ("tandem-wire-cluster", 2),
            _ => ("tandem-wire-redis", 1),
        };
        let cluster = self.start_cluster(nodes, false, PING_SECS)?;
        let at = |i: usize| cluster.nodes.get(i).or(cluster.nodes.first());
        let (first, last) = (at(0), at(nodes - 1));
        let desktop = self.access(first)?;
        let phone = self.access(last)?;
        let pid = first.map(RelayProcess::pid);
        let target = TandemWireTarget::between(name, desktop, phone, pid, sizes)?;
        Ok(Running { target: Box::new(target), relay: None, cluster: Some(cluster) })
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

    /// The targets a scenario drives: `--targets`, or `default` and the
    /// Redis targets (without the tandem-wire ones under `--tls`: they
    /// speak plain WebSocket only; without the Redis ones when
    /// `redis-server` is not installed or with `--url`, said on standard
    /// output).
    #[must_use]
    pub fn targets(&self, default: &[TargetKind]) -> Vec<TargetKind> {
        if let Some(t) = &self.opts.targets {
            return t.clone();
        }
        let wire =
            [TargetKind::TandemWire, TargetKind::TandemWireRedis, TargetKind::TandemWireCluster];
        let mut kinds: Vec<TargetKind> =
            default.iter().copied().filter(|k| !(self.opts.tls && wire.contains(k))).collect();
        if self.opts.tls || self.opts.url.is_some() || self.opts.no_redis {
            return kinds;
        }
        if crate::redis::available() {
            kinds.extend(TargetKind::REDIS);
        } else {
            println!("{}", crate::redis::missing_message("tandem-wire-redis, tandem-wire-cluster"));
        }
        kinds
    }

    /// Start a target of `kind`.
    ///
    /// # Errors
    /// When its server does not start.
    pub async fn target(&self, kind: TargetKind, sizes: WireSizes) -> Result<Running> {
        match kind {
            TargetKind::Tandem => self.tandem(),
            TargetKind::TandemWire => self.tandem_wire(sizes),
            TargetKind::TandemWireRedis | TargetKind::TandemWireCluster => {
                self.tandem_wire_redis(kind, sizes)
            }
            TargetKind::Forwarder => {
                Ok(Running::of(Box::new(ForwarderTarget::start(&self.exe, sizes)?)))
            }
            TargetKind::Direct => Ok(Running::of(Box::new(DirectTarget::start(sizes).await?))),
            #[cfg(feature = "iroh")]
            TargetKind::Iroh => {
                Ok(Running::of(Box::new(crate::target::iroh::IrohTarget::start(&self.exe, sizes)?)))
            }
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
