//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};

use crate::target::TargetKind;

/// Tandem's load generator: simulated desktop/phone pairs speaking the real
/// protocol against a relay, with a bare forwarder and a direct loopback
/// path as baselines measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "tandem-bench", version, about, long_about = None)]
pub struct Cli {
    /// The scenario.
    #[command(subcommand)]
    pub command: Command,
    /// Options shared by the scenarios.
    #[command(flatten)]
    pub opts: Opts,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// N authenticated idle connections: the relay's memory per connection
    /// (plain WebSocket and TLS; the forwarder as baseline).
    Idle(IdleArgs),
    /// P pairs sending as fast as end-to-end acks allow: messages/s, MB/s,
    /// CPU per message (tandem and the bare forwarder).
    Throughput,
    /// Fixed rates: added latency percentiles against a direct loopback path.
    Latency,
    /// N pairs streaming while the relay is killed (SIGKILL) and restarted:
    /// time until every pair resumed; lost and duplicated messages (must be 0).
    ReconnectStorm,
    /// Pairings per second, and the latency of one pairing.
    Pairing,
    /// Offline recipients: P desktops send M messages each while their
    /// phones are not connected (every frame must be written), then the
    /// phones connect and drain: messages/s written, drained, and the
    /// store's commit batching from the relay's `/metrics`.
    Offline,
    /// Every scenario, one after the other.
    All,
    /// Run the bare forwarder server (a baseline target).
    Forwarder(ForwarderArgs),
    /// Run an iroh-relay server, plain HTTP (the `iroh` target; cargo feature `iroh`).
    #[command(hide = true)]
    IrohRelay(ForwarderArgs),
}

/// Options of every scenario.
#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// The tandem-relay binary to start (default: the one next to this binary).
    #[arg(long, global = true, value_name = "PATH")]
    pub relay_bin: Option<PathBuf>,
    /// Use an already running relay instead of starting one.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// With --url: the relay's process id on this machine, for its memory and CPU time.
    #[arg(long, global = true, value_name = "PID")]
    pub relay_pid: Option<u32>,
    /// With --url: an extra root certificate (PEM) to trust.
    #[arg(long, global = true, value_name = "PATH")]
    pub root_cert: Option<PathBuf>,
    /// Small and short: correctness only (every check still fails the run).
    #[arg(long, global = true)]
    pub quick: bool,
    /// Where to write the JSON report (default: target/bench/<scenario>.json).
    #[arg(long, global = true, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// idle: connections (numbers or `max`); reconnect-storm: pairs;
    /// pairing: pairings.
    #[arg(short = 'n', global = true, value_delimiter = ',', value_name = "N")]
    pub n: Option<Vec<Count>>,
    /// throughput: simultaneous pairs, one run per count; latency,
    /// offline: the first is used.
    #[arg(long, global = true, value_delimiter = ',', value_name = "P")]
    pub pairs: Option<Vec<usize>>,
    /// offline: messages each desktop sends while its phone is away.
    #[arg(long, global = true, value_name = "M")]
    pub messages: Option<u64>,
    /// An extra argument for every tandem-relay the bench starts, after
    /// its own (repeat it: `--relay-arg=--hold-window-ms --relay-arg=200`),
    /// for A/B runs of relay settings. Only flags the bench does not set.
    #[arg(long = "relay-arg", global = true, value_name = "ARG", allow_hyphen_values = true)]
    pub relay_args: Vec<String>,
    /// throughput: message sizes in bytes; latency, reconnect-storm: the first is used.
    #[arg(long, global = true, value_delimiter = ',', value_name = "BYTES")]
    pub payloads: Option<Vec<usize>>,
    /// latency: total messages per second; reconnect-storm: the first is used.
    #[arg(long, global = true, value_delimiter = ',', value_name = "PER_SECOND")]
    pub rates: Option<Vec<f64>>,
    /// TLS (a self-signed certificate) for the relay the bench starts; idle
    /// measures only TLS then (by default it measures plain and TLS).
    #[arg(long, global = true)]
    pub tls: bool,
    /// Seconds each measurement lasts (after a warm-up).
    #[arg(long, global = true, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// throughput, latency: what to drive (tandem, forwarder, direct; iroh
    /// with the cargo feature `iroh`).
    #[arg(long, global = true, value_delimiter = ',', value_name = "TARGET")]
    pub targets: Option<Vec<TargetKind>>,
    /// throughput: unacknowledged messages per pair.
    #[arg(long, global = true, value_name = "MESSAGES")]
    pub window: Option<u64>,
    /// idle: most connections per load-generating process.
    #[arg(long, global = true, value_name = "N")]
    pub per_process: Option<usize>,
    /// pairing: pairings at once; idle: connection attempts at once per process.
    #[arg(long, global = true, value_name = "N")]
    pub concurrency: Option<usize>,
    /// The Redis server the bench starts for the Redis targets and the
    /// storm over several nodes: its `appendfsync` (AOF is always on).
    #[arg(long, global = true, value_name = "always|everysec|no", default_value = "everysec",
          value_parser = ["always", "everysec", "no"])]
    pub redis_fsync: String,
    /// Leave out the Redis targets even when `redis-server` is installed
    /// (they are in the defaults of throughput and latency when it is).
    #[arg(long, global = true)]
    pub no_redis: bool,
    /// reconnect-storm: relay nodes on one Redis behind the bench's
    /// balancer; one of them is killed and not restarted (1, the default:
    /// the one relay, killed and restarted).
    #[arg(long, global = true, value_name = "N")]
    pub nodes: Option<usize>,
    /// reconnect-storm --nodes: who balances the devices over the nodes:
    /// haproxy with `deploy/haproxy/haproxy.cfg` (up to 3 nodes), the
    /// bench itself (round robin, a refused node skipped), or `auto`:
    /// haproxy when it is installed, the configuration is in the tree and
    /// there are at most 3 nodes, else the bench.
    #[arg(long, global = true, value_name = "auto|bench|haproxy", default_value = "auto",
          value_parser = ["auto", "bench", "haproxy"])]
    pub balancer: String,
    /// Pin the load generator (this process) to CPU 0 and every server it
    /// starts (relay, forwarder, iroh-relay) to CPU 1, with `taskset`: each
    /// server gets exactly one core, the simulated devices the other.
    #[arg(long, global = true)]
    pub pin: bool,
}

/// A number of connections, or as many as the open-file limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Exactly this many.
    N(usize),
    /// The open-file limit less what a process keeps for itself.
    Max,
}

impl FromStr for Count {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Count::Max);
        }
        let digits: String = s.chars().filter(|c| *c != '_').collect();
        let n = match digits.strip_suffix(['k', 'K']) {
            Some(k) => k.parse::<usize>().map(|k| k * 1000),
            None => digits.parse::<usize>(),
        };
        n.map(Count::N).map_err(|_| format!("{s:?} is not a number or `max`"))
    }
}

/// `idle`'s own options (the worker ones are internal).
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Internal: be a worker that holds connections for the parent.
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Internal: connections this worker opens.
    #[arg(long, hide = true)]
    pub worker_connections: Option<usize>,
    /// Internal: the first three bytes of this worker's loopback source
    /// addresses (`127.R.W`; the fourth counts up every 5 000 connections).
    #[arg(long, hide = true)]
    pub worker_source: Option<String>,
    /// Internal: what the worker connects to.
    #[arg(long, hide = true)]
    pub worker_target: Option<TargetKind>,
    /// Leave out the forwarder baseline.
    #[arg(long)]
    pub no_baseline: bool,
}

/// The forwarder's options.
#[derive(Debug, Clone, Args)]
pub struct ForwarderArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Exit when standard input closes (how the bench runs it).
    #[arg(long, hide = true)]
    pub exit_with_stdin: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse() {
        assert_eq!("max".parse(), Ok(Count::Max));
        assert_eq!("10k".parse(), Ok(Count::N(10_000)));
        assert_eq!("20_000".parse(), Ok(Count::N(20_000)));
        assert!("ten".parse::<Count>().is_err());
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "tandem-bench",
            "throughput",
            "--quick",
            "--payloads",
            "64,1024",
            "--targets",
            "tandem,forwarder",
            "--pairs",
            "16,64",
            "--relay-arg=--hold-window-ms",
            "--relay-arg",
            "200",
        ])
        .unwrap();
        assert_eq!(cli.opts.pairs, Some(vec![16, 64]));
        assert_eq!(cli.opts.relay_args, ["--hold-window-ms", "200"]);
        assert!(cli.opts.quick);
        assert_eq!(cli.opts.payloads, Some(vec![64, 1024]));
        assert_eq!(cli.opts.targets, Some(vec![TargetKind::Tandem, TargetKind::Forwarder]));
        let cli = Cli::try_parse_from([
            "tandem-bench",
            "latency",
            "--targets",
            "direct,tandem-wire,forwarder",
            "--pin",
        ])
        .unwrap();
        assert!(cli.opts.pin);
        assert_eq!(
            cli.opts.targets,
            Some(vec![TargetKind::Direct, TargetKind::TandemWire, TargetKind::Forwarder])
        );
        let cli = Cli::try_parse_from(["tandem-bench", "idle", "-n", "10k,max", "--tls"]).unwrap();
        assert_eq!(cli.opts.n, Some(vec![Count::N(10_000), Count::Max]));
        assert!(cli.opts.tls);
    }
}
