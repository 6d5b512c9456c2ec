//! `latency`: fixed total rates (messages per second, spread evenly over P
//! pairs); for each target and rate the percentiles of the time from
//! handing a message to the target to the phone end having it, and the
//! latency each target adds to the direct loopback path measured at the
//! same rate in the same run (percentile by percentile).
//!
//! Timestamps are taken when a message is sent, so a target that cannot
//! keep up shows as an achieved rate below the one asked for (`saturated`)
//! rather than as latency.

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

/// Most unacknowledged messages per pair before a paced sender waits (and
/// skips the slots it misses): enough for a second of queueing at 1 000
/// messages per second and pair, so that a target that cannot keep up shows
/// as saturated instead of burying itself under a backlog.
const WINDOW: u64 = 1_000;

/// One target at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The target.
    pub target: &'static str,
    /// Messages per second asked for (all pairs together).
    pub rate: f64,
    /// Messages per second that came out.
    pub achieved: f64,
    /// The target did not keep up: achieved below 95 % of the rate.
    pub saturated: bool,
    /// Send slots skipped because a sender was over 10 ms behind (a full
    /// window, or the bench itself starved of CPU).
    pub missed: u64,
    /// Latency percentiles.
    pub latency: Percentiles,
    /// CPU time of the target's process per message, µs.
    pub cpu_us_per_message: Option<f64>,
    /// Messages sent in the whole run (warm-up and drain included).
    pub sent: u64,
    /// Of those, messages that came out (once).
    pub delivered: u64,
    /// Messages that never came out (0 for tandem, the forwarder and the
    /// direct path: anything else fails the run; iroh-relay drops on full
    /// queues, and that is reported here).
    pub lost: u64,
    /// Redis commands per message (the Redis targets).
    pub redis: Option<RedisOps>,
    /// Cores each of the target's processes kept busy (the Redis targets).
    pub cores_each: Vec<(String, Option<f64>)>,
}

/// What a target adds to the direct path at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    /// The target.
    pub target: &'static str,
    /// Messages per second.
    pub rate: f64,
    /// Target percentiles minus the direct path's.
    pub added: Percentiles,
}

/// The relay's added latency over the forwarder's at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Messages per second.
    pub rate: f64,
    /// Added p50, tandem ÷ forwarder.
    pub p50_tandem_over_forwarder: Option<f64>,
    /// Added p99, tandem ÷ forwarder.
    pub p99_tandem_over_forwarder: Option<f64>,
    /// Added p50, tandem-wire ÷ forwarder.
    pub p50_wire_over_forwarder: Option<f64>,
    /// Added p99, tandem-wire ÷ forwarder.
    pub p99_wire_over_forwarder: Option<f64>,
    /// p50 of tandem-wire-cluster (desktop on node 1, phone on node 2)
    /// minus tandem-wire's (one node, embedded store), µs.
    pub p50_cluster_minus_wire_us: Option<f64>,
    /// p99 of tandem-wire-cluster minus tandem-wire's, µs: issue 16's goal
    /// is under [`CLUSTER_P99_GOAL_US`] at 10 000 messages per second.
    pub p99_cluster_minus_wire_us: Option<f64>,
    /// p99 of tandem-wire-cluster minus tandem-wire-redis's (one node on
    /// the same store), µs: what crossing nodes adds.
    pub p99_cluster_minus_redis_us: Option<f64>,
    /// p99 of tandem-wire-redis minus tandem-wire's, µs: what the Redis
    /// store adds on one node.
    pub p99_redis_minus_wire_us: Option<f64>,
    /// Whether `p99_cluster_minus_wire_us` is under the goal (and the
    /// cluster kept up with the rate).
    pub cluster_goal_met: Option<bool>,
}

/// Issue 16's goal: the p99 latency crossing nodes adds to one node's, µs.
pub const CLUSTER_P99_GOAL_US: f64 = 2000.0;

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Simultaneous pairs.
    pub pairs: usize,
    /// Message size in bytes.
    pub payload: usize,
    /// Each measurement, seconds.
    pub duration_s: f64,
    /// TLS between devices and the relay.
    pub tls: bool,
    /// `--pin`: servers on CPU 1, the load generator on CPU 0.
    pub pinned: bool,
    /// The measurements.
    pub rows: Vec<Row>,
    /// Added latency against the direct path.
    pub added: Vec<Added>,
    /// Tandem's added latency over the forwarder's.
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
    let rates = ctx
        .opts
        .rates
        .clone()
        .unwrap_or_else(|| ctx.pick(vec![1e3, 1e4, 5e4], vec![500.0, 2000.0]));
    let pairs = ctx.opts.pairs.as_ref().and_then(|p| p.first().copied());
    let pairs = pairs.unwrap_or(ctx.pick(10, 2)).max(1);
    let payload = ctx.opts.payloads.as_ref().and_then(|p| p.first().copied()).unwrap_or(1024);
    let mut targets = ctx.targets(&TargetKind::ALL);
    // The direct path first: the others are compared with it.
    targets.sort_by_key(|k| *k != TargetKind::Direct);
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
        let mut ps: Vec<load::Pair> = match target.open(pairs).await {
            Ok(ps) => ps.into_iter().map(load::Pair::new).collect(),
            Err(e) => {
                failures.push(format!("{}: {pairs} pairs could not be set up: {e}", target.name()));
                if let Some(tail) = running.log_tail() {
                    failures.push(format!("the relay's log ends:\n{tail}"));
                }
                continue;
            }
        };
        for &rate in &rates {
            let per_pair = rate / pairs as f64;
            let plan = Plan {
                payload: payload.max(crate::wire::HEADER_LEN),
                pace: Pace::Rate { per_pair, window: WINDOW },
                warmup,
                duration,
                drain: Duration::from_secs(if lossy { 3 } else { 60 }),
                mark: None,
                lossy,
            };
            let commands = running.redis_commands();
            let (back, out) = load::run(ps, &plan, ctx.clock, &running.pids()).await;
            ps = back;
            let redis = commands
                .zip(running.redis_commands())
                .and_then(|(before, after)| RedisOps::of(&after.since(&before), out.delivered()));
            let achieved = per_second(out.messages, out.seconds);
            rows.push(Row {
                target: target.name(),
                rate,
                achieved,
                saturated: achieved < 0.95 * rate,
                missed: out.missed,
                latency: Percentiles::of(&out.latency),
                cpu_us_per_message: out
                    .target_cpu
                    .filter(|_| out.messages > 0)
                    .map(|c| c * 1e6 / out.messages as f64),
                sent: out.sent,
                delivered: out.delivered(),
                lost: out.lost_total(),
                redis,
                cores_each: running.cores_each(&out.target_cpu_each, out.seconds),
            });
            let what = format!("{} at {rate} msg/s", target.name());
            let failed = out.failures_of(&what, lossy);
            if !failed.is_empty()
                && let Some(tail) = running.log_tail()
            {
                failures.push(format!("the relay's log ends:\n{tail}"));
            }
            failures.extend(failed);
        }
        let h = target.health().report();
        failures.extend(health_failures(target.name(), &h));
        health.push((target.name(), h));
    }
    let mut added = Vec::new();
    for row in rows.iter().filter(|r| r.target != "direct") {
        if let Some(base) = rows.iter().find(|b| b.target == "direct" && b.rate == row.rate) {
            added.push(Added {
                target: row.target,
                rate: row.rate,
                added: row.latency.minus(&base.latency),
            });
        }
    }
    let ratios = rates
        .iter()
        .map(|&rate| {
            let find = |t: &str| added.iter().find(|a| a.target == t && a.rate == rate);
            let pair = find("tandem").zip(find("forwarder"));
            let wire = find("tandem-wire").zip(find("forwarder"));
            let row = |t: &str| rows.iter().find(|r| r.target == t && r.rate == rate);
            let minus = |a: &str, b: &str, p99: bool| {
                let (a, b) = row(a).zip(row(b))?;
                Some(if p99 {
                    a.latency.p99_us - b.latency.p99_us
                } else {
                    a.latency.p50_us - b.latency.p50_us
                })
            };
            let p99_cluster = minus("tandem-wire-cluster", "tandem-wire", true);
            let kept_up = row("tandem-wire-cluster").is_some_and(|r| !r.saturated);
            Ratio {
                p50_cluster_minus_wire_us: minus("tandem-wire-cluster", "tandem-wire", false),
                p99_cluster_minus_wire_us: p99_cluster,
                p99_cluster_minus_redis_us: minus("tandem-wire-cluster", "tandem-wire-redis", true),
                p99_redis_minus_wire_us: minus("tandem-wire-redis", "tandem-wire", true),
                cluster_goal_met: p99_cluster.map(|d| d < CLUSTER_P99_GOAL_US && kept_up),
                rate,
                p50_tandem_over_forwarder: pair
                    .and_then(|(t, f)| ratio(t.added.p50_us, f.added.p50_us)),
                p99_tandem_over_forwarder: pair
                    .and_then(|(t, f)| ratio(t.added.p99_us, f.added.p99_us)),
                p50_wire_over_forwarder: wire
                    .and_then(|(t, f)| ratio(t.added.p50_us, f.added.p50_us)),
                p99_wire_over_forwarder: wire
                    .and_then(|(t, f)| ratio(t.added.p99_us, f.added.p99_us)),
            }
        })
        .collect();
    let results = Results {
        pairs,
        payload,
        duration_s: duration.as_secs_f64(),
        tls: ctx.opts.tls,
        pinned: crate::pin::pinned(),
        rows,
        added,
        ratios,
        health,
    };
    print(&results);
    ScenarioReport::new("latency", started, &results, failures)
}

fn print(r: &Results) {
    let mut t = Table::new(
        format!(
            "latency: {} pairs, {} B messages, {:.0} s each{}{}",
            r.pairs,
            r.payload,
            r.duration_s,
            if r.tls { ", TLS" } else { "" },
            if r.pinned { ", pinned (server CPU 1, bench CPU 0)" } else { "" }
        ),
        &[
            "target",
            "rate/s",
            "achieved/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "missed",
            "sent",
            "lost",
            "saturated",
            "redis cmd/msg",
            "cores per process",
        ],
    );
    for row in &r.rows {
        t.row(vec![
            row.target.into(),
            num(row.rate, 0),
            num(row.achieved, 0),
            num(row.latency.p50_us, 1),
            num(row.latency.p99_us, 1),
            num(row.latency.p999_us, 1),
            num(row.latency.max_us, 0),
            row.missed.to_string(),
            row.sent.to_string(),
            row.lost.to_string(),
            if row.saturated { "yes".into() } else { "no".into() },
            opt(row.redis.as_ref().map(|r| r.commands_per_message), 1),
            super::throughput::cores_each(&row.cores_each),
        ]);
    }
    t.print();
    let mut t = Table::new(
        "added latency (target − direct, µs)",
        &["target", "rate/s", "p50", "p99", "p99.9"],
    );
    for a in &r.added {
        t.row(vec![
            a.target.into(),
            num(a.rate, 0),
            num(a.added.p50_us, 1),
            num(a.added.p99_us, 1),
            num(a.added.p999_us, 1),
        ]);
    }
    t.print();
    let mut t = Table::new(
        "added latency ratios (tandem = end to end; wire = tandem-wire, the same relay at the \
         frame level)",
        &["rate/s", "tandem p50 ÷ fwd", "tandem p99 ÷ fwd", "wire p50 ÷ fwd", "wire p99 ÷ fwd"],
    );
    for ratio in &r.ratios {
        t.row(vec![
            num(ratio.rate, 0),
            opt(ratio.p50_tandem_over_forwarder, 2),
            opt(ratio.p99_tandem_over_forwarder, 2),
            opt(ratio.p50_wire_over_forwarder, 2),
            opt(ratio.p99_wire_over_forwarder, 2),
        ]);
    }
    t.print();
    if r.ratios
        .iter()
        .all(|x| x.p99_cluster_minus_wire_us.is_none() && x.p99_redis_minus_wire_us.is_none())
    {
        return;
    }
    let mut t = Table::new(
        format!(
            "several nodes (issue 16), µs: cluster = desktop on node 1, phone on node 2; redis = one \
             node on Redis; wire = one node, embedded; goal cluster − wire p99 < {CLUSTER_P99_GOAL_US:.0} µs"
        ),
        &[
            "rate/s",
            "cluster − wire p50",
            "cluster − wire p99",
            "cluster − redis p99",
            "redis − wire p99",
            "goal",
        ],
    );
    for ratio in &r.ratios {
        t.row(vec![
            num(ratio.rate, 0),
            opt(ratio.p50_cluster_minus_wire_us, 0),
            opt(ratio.p99_cluster_minus_wire_us, 0),
            opt(ratio.p99_cluster_minus_redis_us, 0),
            opt(ratio.p99_redis_minus_wire_us, 0),
            super::throughput::verdict(ratio.cluster_goal_met),
        ]);
    }
    t.print();
}
