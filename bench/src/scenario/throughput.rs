//! `throughput`: P pairs, each sending as fast as its end-to-end
//! acknowledgements allow (a window of unacknowledged messages), for each
//! payload size; messages and megabytes per second that came out at the
//! phone ends, and the target process's CPU time per message. The same load
//! against the bare forwarder in the same run gives the ratios.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Context, health_failures, per_second};
use crate::error::Result;
use crate::load::{self, Pace, Plan};
use crate::redis::RedisOps;
use crate::report::{ScenarioReport, Table, num, opt};
use crate::stats::{Percentiles, ratio};
use crate::target::{HealthReport, TargetKind};
use crate::wire::WireSizes;

/// One target at one pair count and payload size.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The target.
    pub target: &'static str,
    /// Simultaneous pairs.
    pub pairs: usize,
    /// Message size in bytes.
    pub payload: usize,
    /// Messages that came out in the window, per second.
    pub messages_per_s: f64,
    /// Message bytes per second, in MB (10^6).
    pub mb_per_s: f64,
    /// Frame bytes on the wire per second (into the target), in MB.
    pub wire_mb_per_s: f64,
    /// Messages counted.
    pub messages: u64,
    /// Messages sent in the whole run (warm-up and drain included).
    pub sent: u64,
    /// Of those, messages that came out (once).
    pub delivered: u64,
    /// CPU seconds the target's process used in the window.
    pub target_cpu_s: Option<f64>,
    /// The target's CPU time per message, in microseconds.
    pub cpu_us_per_message: Option<f64>,
    /// Cores the target kept busy (CPU seconds per second).
    pub target_cores: Option<f64>,
    /// Cores this process (the simulated devices) kept busy.
    pub bench_cores: Option<f64>,
    /// Latency under this load (the window fills queues; not the latency
    /// scenario's figure).
    pub latency: Percentiles,
    /// Messages lost (must be 0, except for a target that drops by design:
    /// iroh-relay).
    pub lost: u64,
    /// Messages received twice (must be 0).
    pub duplicates: u64,
    /// Redis commands per message (the Redis targets).
    pub redis: Option<RedisOps>,
    /// Cores each of the target's processes kept busy (the Redis targets:
    /// `n1`, `n2`, `redis`).
    pub cores_each: Vec<(String, Option<f64>)>,
}

/// Tandem against the baselines at one pair count and payload size.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Simultaneous pairs.
    pub pairs: usize,
    /// Message size in bytes.
    pub payload: usize,
    /// Tandem's messages per second ÷ the forwarder's.
    pub messages_tandem_over_forwarder: Option<f64>,
    /// Tandem's CPU per message ÷ the forwarder's.
    pub cpu_per_message_tandem_over_forwarder: Option<f64>,
    /// Tandem's messages per second ÷ iroh-relay's delivered rate.
    pub messages_tandem_over_iroh: Option<f64>,
    /// Tandem's CPU per message ÷ iroh-relay's.
    pub cpu_per_message_tandem_over_iroh: Option<f64>,
    /// tandem-wire's messages per second ÷ the forwarder's: the relay
    /// against the forwarder with load generators of the same cost.
    pub messages_wire_over_forwarder: Option<f64>,
    /// tandem-wire's relay CPU per message ÷ the forwarder's.
    pub cpu_per_message_wire_over_forwarder: Option<f64>,
    /// tandem-wire-cluster's messages per second ÷ tandem-wire's (one
    /// node, embedded store): issue 16's goal is at least
    /// [`CLUSTER_GOAL`].
    pub messages_cluster_over_wire: Option<f64>,
    /// tandem-wire-cluster's messages per second ÷ tandem-wire-redis's
    /// (the same store, one node): what crossing nodes costs.
    pub messages_cluster_over_redis: Option<f64>,
    /// tandem-wire-redis's messages per second ÷ tandem-wire's: what the
    /// Redis store costs on one node.
    pub messages_redis_over_wire: Option<f64>,
    /// CPU per message (every node and Redis) of tandem-wire-cluster ÷
    /// tandem-wire's relay.
    pub cpu_per_message_cluster_over_wire: Option<f64>,
    /// Whether `messages_cluster_over_wire` meets [`CLUSTER_GOAL`].
    pub cluster_goal_met: Option<bool>,
}

/// Issue 16's goal: cross-node throughput at least this share of one
/// node's (tandem-wire-cluster ÷ tandem-wire).
pub const CLUSTER_GOAL: f64 = 0.6;

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Simultaneous pairs, one run each.
    pub pairs: Vec<usize>,
    /// Unacknowledged messages per pair.
    pub window: u64,
    /// Warm-up before each measurement, seconds.
    pub warmup_s: f64,
    /// Each measurement, seconds.
    pub duration_s: f64,
    /// TLS between devices and the relay.
    pub tls: bool,
    /// `--pin`: servers on CPU 1, the load generator on CPU 0.
    pub pinned: bool,
    /// Extra relay arguments (`--relay-arg`).
    pub relay_args: Vec<String>,
    /// Frame sizes the baselines copy.
    pub wire: WireSizes,
    /// The measurements.
    pub rows: Vec<Row>,
    /// Tandem over the baselines.
    pub ratios: Vec<Ratio>,
    /// What happened inside the pairs, per target.
    pub health: Vec<(&'static str, HealthReport)>,
}

/// Run it.
///
/// # Errors
/// When a target cannot be started or its pairs set up.
pub async fn run(ctx: &Context) -> Result<ScenarioReport> {
    let started = Instant::now();
    let payloads = ctx.opts.payloads.clone().unwrap_or_else(|| vec![64, 1024, 16 * 1024]);
    let pair_counts = ctx.opts.pairs.clone().unwrap_or_else(|| vec![ctx.pick(16, 2)]);
    let window = ctx.opts.window.unwrap_or(64);
    let targets = ctx.targets(&[TargetKind::Tandem, TargetKind::TandemWire, TargetKind::Forwarder]);
    let warmup = Duration::from_secs_f64(ctx.pick(1.0, 0.3));
    let duration = ctx.duration(5.0, 1.0);
    let sizes = WireSizes::measure()?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut health = Vec::new();
    for kind in targets {
        // A target that cannot start fails the run; the others still run.
        let running = match ctx.target(kind, sizes).await {
            Ok(running) => running,
            Err(e) => {
                failures.push(format!("{}: could not start: {e}", kind.name()));
                continue;
            }
        };
        let target = &running.target;
        let lossy = target.lossy();
        for &pairs in &pair_counts {
            let mut ps: Vec<load::Pair> = match target.open(pairs.max(1)).await {
                Ok(ps) => ps.into_iter().map(load::Pair::new).collect(),
                Err(e) => {
                    failures
                        .push(format!("{}: {pairs} pairs could not be set up: {e}", target.name()));
                    if let Some(tail) = running.log_tail() {
                        failures.push(format!("the relay's log ends:\n{tail}"));
                    }
                    continue;
                }
            };
            for &payload in &payloads {
                let plan = Plan {
                    payload: payload.max(crate::wire::HEADER_LEN),
                    pace: Pace::Window(window),
                    warmup,
                    duration,
                    drain: Duration::from_secs(if lossy { 3 } else { 60 }),
                    mark: None,
                    lossy,
                };
                let commands = running.redis_commands();
                let (back, out) = load::run(ps, &plan, ctx.clock, &running.pids()).await;
                ps = back;
                let redis = commands.zip(running.redis_commands()).and_then(|(before, after)| {
                    RedisOps::of(&after.since(&before), out.delivered())
                });
                let secs = out.seconds;
                let rate = per_second(out.messages, secs);
                rows.push(Row {
                    target: target.name(),
                    pairs,
                    payload,
                    messages_per_s: rate,
                    mb_per_s: per_second(out.bytes, secs) / 1e6,
                    wire_mb_per_s: rate * sizes.data_frame(payload) as f64 / 1e6,
                    messages: out.messages,
                    sent: out.sent,
                    delivered: out.delivered(),
                    target_cpu_s: out.target_cpu,
                    cpu_us_per_message: out
                        .target_cpu
                        .filter(|_| out.messages > 0)
                        .map(|c| c * 1e6 / out.messages as f64),
                    target_cores: out.target_cpu.map(|c| c / secs),
                    bench_cores: out.bench_cpu.map(|c| c / secs),
                    latency: Percentiles::of(&out.latency),
                    lost: out.lost_total(),
                    duplicates: out.duplicates,
                    redis,
                    cores_each: running.cores_each(&out.target_cpu_each, secs),
                });
                let what = format!("{} with {pairs} pairs at {payload} B", target.name());
                let failed = out.failures_of(&what, lossy);
                if !failed.is_empty()
                    && let Some(tail) = running.log_tail()
                {
                    failures.push(format!("the relay's log ends:\n{tail}"));
                }
                failures.extend(failed);
            }
            drop(ps);
        }
        let h = target.health().report();
        failures.extend(health_failures(target.name(), &h));
        health.push((target.name(), h));
    }
    let mut ratios = Vec::new();
    for &pairs in &pair_counts {
        for &payload in &payloads {
            let find = |t: &str| {
                rows.iter().find(|r| r.target == t && r.pairs == pairs && r.payload == payload)
            };
            let (tandem, wire) = (find("tandem"), find("tandem-wire"));
            let over_of = |top: Option<&Row>, base: Option<&Row>, cpu: bool| {
                let (t, b) = top.zip(base)?;
                if cpu {
                    ratio(t.cpu_us_per_message?, b.cpu_us_per_message?)
                } else {
                    ratio(t.messages_per_s, b.messages_per_s)
                }
            };
            let over = |base: Option<&Row>, cpu: bool| over_of(tandem, base, cpu);
            let (forwarder, iroh) = (find("forwarder"), find("iroh"));
            let (redis, cluster) = (find("tandem-wire-redis"), find("tandem-wire-cluster"));
            let cluster_over_wire = over_of(cluster, wire, false);
            ratios.push(Ratio {
                pairs,
                payload,
                messages_tandem_over_forwarder: over(forwarder, false),
                cpu_per_message_tandem_over_forwarder: over(forwarder, true),
                messages_tandem_over_iroh: over(iroh, false),
                cpu_per_message_tandem_over_iroh: over(iroh, true),
                messages_wire_over_forwarder: over_of(wire, forwarder, false),
                cpu_per_message_wire_over_forwarder: over_of(wire, forwarder, true),
                messages_cluster_over_wire: cluster_over_wire,
                messages_cluster_over_redis: over_of(cluster, redis, false),
                messages_redis_over_wire: over_of(redis, wire, false),
                cpu_per_message_cluster_over_wire: over_of(cluster, wire, true),
                cluster_goal_met: cluster_over_wire.map(|r| r >= CLUSTER_GOAL),
            });
        }
    }
    let results = Results {
        pairs: pair_counts,
        window,
        warmup_s: warmup.as_secs_f64(),
        duration_s: duration.as_secs_f64(),
        tls: ctx.opts.tls,
        pinned: crate::pin::pinned(),
        relay_args: ctx.opts.relay_args.clone(),
        wire: sizes,
        rows,
        ratios,
        health,
    };
    print(&results);
    ScenarioReport::new("throughput", started, &results, failures)
}

fn print(r: &Results) {
    let mut t = Table::new(
        format!(
            "throughput: {:?} pairs, window {}, {:.0} s each{}{}",
            r.pairs,
            r.window,
            r.duration_s,
            if r.tls { ", TLS" } else { "" },
            if r.pinned { ", pinned (server CPU 1, bench CPU 0)" } else { "" }
        ),
        &[
            "target",
            "pairs",
            "payload",
            "msg/s",
            "MB/s",
            "wire MB/s",
            "cpu µs/msg",
            "target cores",
            "bench cores",
            "p50 µs",
            "p99 µs",
            "sent",
            "delivered",
            "lost",
            "dup",
            "redis cmd/msg",
            "cores per process",
        ],
    );
    for row in &r.rows {
        t.row(vec![
            row.target.into(),
            row.pairs.to_string(),
            row.payload.to_string(),
            num(row.messages_per_s, 0),
            num(row.mb_per_s, 2),
            num(row.wire_mb_per_s, 2),
            opt(row.cpu_us_per_message, 1),
            opt(row.target_cores, 2),
            opt(row.bench_cores, 2),
            num(row.latency.p50_us, 0),
            num(row.latency.p99_us, 0),
            row.sent.to_string(),
            row.delivered.to_string(),
            row.lost.to_string(),
            row.duplicates.to_string(),
            opt(row.redis.as_ref().map(|r| r.commands_per_message), 1),
            cores_each(&row.cores_each),
        ]);
    }
    t.print();
    let mut t = Table::new(
        "throughput ratios (tandem = end to end, devices' crypto in the load generator; \
         wire = tandem-wire, the same relay at the frame level)",
        &[
            "pairs",
            "payload",
            "tandem msg/s ÷ fwd",
            "tandem cpu/msg ÷ fwd",
            "wire msg/s ÷ fwd",
            "wire cpu/msg ÷ fwd",
            "tandem msg/s ÷ iroh",
            "tandem cpu/msg ÷ iroh",
        ],
    );
    for ratio in &r.ratios {
        t.row(vec![
            ratio.pairs.to_string(),
            ratio.payload.to_string(),
            opt(ratio.messages_tandem_over_forwarder, 3),
            opt(ratio.cpu_per_message_tandem_over_forwarder, 2),
            opt(ratio.messages_wire_over_forwarder, 3),
            opt(ratio.cpu_per_message_wire_over_forwarder, 2),
            opt(ratio.messages_tandem_over_iroh, 3),
            opt(ratio.cpu_per_message_tandem_over_iroh, 2),
        ]);
    }
    t.print();
    if r.ratios
        .iter()
        .all(|x| x.messages_cluster_over_wire.is_none() && x.messages_redis_over_wire.is_none())
    {
        return;
    }
    let mut t = Table::new(
        format!(
            "several nodes (issue 16): cluster = desktop on node 1, phone on node 2, one Redis; \
             redis = one node on Redis; wire = one node, embedded store; goal cluster ÷ wire ≥ {CLUSTER_GOAL}"
        ),
        &[
            "pairs",
            "payload",
            "cluster ÷ wire",
            "redis ÷ wire",
            "cluster ÷ redis",
            "cluster cpu/msg ÷ wire",
            "goal",
        ],
    );
    for ratio in &r.ratios {
        t.row(vec![
            ratio.pairs.to_string(),
            ratio.payload.to_string(),
            opt(ratio.messages_cluster_over_wire, 3),
            opt(ratio.messages_redis_over_wire, 3),
            opt(ratio.messages_cluster_over_redis, 3),
            opt(ratio.cpu_per_message_cluster_over_wire, 2),
            verdict(ratio.cluster_goal_met),
        ]);
    }
    t.print();
}

/// `n1 0.61 redis 0.40`, or `-`.
pub(crate) fn cores_each(each: &[(String, Option<f64>)]) -> String {
    if each.is_empty() {
        return "-".into();
    }
    each.iter().map(|(n, c)| format!("{n} {}", opt(*c, 2))).collect::<Vec<_>>().join(" ")
}

/// `met`, `missed` or `-`.
pub(crate) fn verdict(met: Option<bool>) -> String {
    match met {
        Some(true) => "met".into(),
        Some(false) => "missed".into(),
        None => "-".into(),
    }
}
