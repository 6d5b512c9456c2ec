//! `reconnect-storm`: N pairs stream numbered messages at a steady rate;
//! the relay is killed with SIGKILL and started again on the same port and
//! data directory while they do. Every pair's clients reconnect on their
//! own (backoff, outbox resend), the desktops resend what is unacknowledged
//! end to end; the run measures how long until every pair has a message
//! come out again, and checks that every message came out exactly once, in
//! order: lost and duplicated must both be 0, in `--quick` too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::reconnect_phases::{self, Phases};
use super::{Context, health_failures, per_second};
use crate::cli::Count;
use crate::error::{BenchError, Result};
use crate::load::{self, Pace, Plan};
use crate::procfs::{cpu_seconds, listen_overflows};
use crate::report::{ScenarioReport, Table, num, opt};
use crate::stats::Percentiles;
use crate::target::tandem::TandemTarget;
use crate::target::{HealthReport, Target};

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Pairs streaming.
    pub pairs: usize,
    /// Messages per second, all pairs together.
    pub rate: f64,
    /// Message size in bytes.
    pub payload: usize,
    /// TLS between devices and the relay.
    pub tls: bool,
    /// Messages sent.
    pub sent: u64,
    /// Messages that came out (each once).
    pub received: u64,
    /// Messages lost (must be 0): skipped over, or not out 60 s after
    /// sending stopped.
    pub lost: u64,
    /// Messages that came out twice (must be 0).
    pub duplicates: u64,
    /// From the kill until the new relay listened, ms.
    pub relay_down_ms: f64,
    /// From the kill until every pair had a message come out again, ms.
    pub all_resumed_after_kill_ms: Option<f64>,
    /// The same, counted from the moment the new relay listened, ms.
    pub all_resumed_after_restart_ms: Option<f64>,
    /// Median pair, from the kill, ms.
    pub median_resumed_after_kill_ms: Option<f64>,
    /// Pairs that never resumed.
    pub not_resumed: usize,
    /// Message latency over the whole run (the outage included).
    pub latency: Percentiles,
    /// Reconnections, redeliveries dropped by the end-to-end layer, errors.
    pub health: HealthReport,
    /// Where the time went, phase by phase.
    pub phases: Phases,
    /// CPU seconds the restarted relay used from its start until every
    /// pair resumed (its store open included).
    pub relay_cpu_to_resumed_s: Option<f64>,
    /// CPU seconds the bench (every simulated device) used from the kill
    /// until every pair resumed.
    pub bench_cpu_to_resumed_s: Option<f64>,
    /// The bench's CPU per second in the second before the kill (the
    /// steady stream's cost, in cores).
    pub bench_cores_before_kill: Option<f64>,
    /// Cores the relay and the bench had together from the kill until every
    /// pair resumed (their CPU seconds over the wall time): far below the
    /// machine's cores while the storm is CPU-bound means other processes
    /// had the rest.
    pub cores_during_storm: Option<f64>,
    /// Connections the kernel dropped for a full accept queue from the kill
    /// until the run ended (`ListenOverflows`, the whole machine's: another
    /// process's show here too). Each costs its client a retransmitted
    /// handshake, 1 s or more.
    pub listen_overflows: Option<u64>,
}

/// CPU samples every [`SAMPLE_EVERY`]: (run clock ns, restarted relay's CPU
/// seconds, the bench's).
type CpuSamples = Vec<(u64, Option<f64>, Option<f64>)>;

/// How often the storm samples CPU time.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Sample the bench's CPU time (and the relay's once `relay_pid` is set)
/// until `stop` is set.
async fn sample_cpu(
    clock: crate::wire::Clock,
    relay_pid: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> CpuSamples {
    let me = std::process::id();
    let mut v = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let pid = u32::try_from(relay_pid.load(Ordering::Acquire)).unwrap_or(0);
        let relay = (pid != 0).then(|| cpu_seconds(pid)).flatten();
        v.push((clock.now_ns(), relay, cpu_seconds(me)));
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    v
}

/// The first sample at or after `ns`.
fn sample_at(samples: &CpuSamples, ns: u64) -> Option<&(u64, Option<f64>, Option<f64>)> {
    samples.iter().find(|s| s.0 >= ns)
}

/// A storm's size and schedule: `-n` pairs, the first `--rates` (all
/// pairs together), the first `--payloads`, streaming `before` the kill
/// and `after` it (`--duration`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub pairs: usize,
    pub rate: f64,
    pub payload: usize,
    pub before: Duration,
    pub after: Duration,
}

impl Shape {
    /// From the options, with defaults `(full, quick)` for the pairs, the
    /// rate and the seconds after the kill.
    pub(crate) fn of(
        ctx: &Context,
        pairs: (usize, usize),
        rate: (f64, f64),
        after: (f64, f64),
    ) -> Result<Self> {
        let pairs = match ctx.opts.n.as_ref().and_then(|n| n.first().copied()) {
            Some(Count::N(n)) => n.max(1),
            Some(Count::Max) => {
                return Err(BenchError::Usage("reconnect-storm: -n takes a number".into()));
            }
            None => ctx.pick(pairs.0, pairs.1),
        };
        let first_rate = ctx.opts.rates.as_ref().and_then(|r| r.first().copied());
        Ok(Self {
            pairs,
            rate: first_rate.unwrap_or(ctx.pick(rate.0, rate.1)),
            payload: ctx.opts.payloads.as_ref().and_then(|p| p.first().copied()).unwrap_or(1024),
            before: Duration::from_secs_f64(ctx.pick(2.0, 1.0)),
            after: ctx.duration(after.0, after.1),
        })
    }

    /// The load: paced, no warm-up, a minute to drain, `mark` noted.
    pub(crate) fn plan(&self, mark: &Arc<AtomicU64>) -> Plan {
        Plan {
            payload: self.payload.max(crate::wire::HEADER_LEN),
            pace: Pace::Rate { per_pair: self.rate / self.pairs as f64, window: 100_000 },
            warmup: Duration::ZERO,
            duration: self.before + self.after,
            drain: Duration::from_secs(60),
            mark: Some(Arc::clone(mark)),
            lossy: false,
        }
    }
}

/// Run it: over several nodes with `--nodes N` (N ≥ 2,
/// [`super::storm_nodes`]), else against one relay.
///
/// # Errors
/// As [`run_single`] or [`super::storm_nodes::run`].
pub async fn run(ctx: &Context) -> Result<ScenarioReport> {
    match ctx.opts.nodes {
        Some(n) if n > 1 => super::storm_nodes::run(ctx, n).await,
        _ => run_single(ctx).await,
    }
}

/// The storm against one relay, killed and restarted.
///
/// # Errors
/// With `--url` (the bench must own the relay to kill it), or when the
/// relay or the pairs cannot be set up.
pub async fn run_single(ctx: &Context) -> Result<ScenarioReport> {
    if ctx.opts.url.is_some() {
        return Err(BenchError::Usage(
            "reconnect-storm kills and restarts the relay: it needs one started by the bench \
             (leave out --url)"
                .into(),
        ));
    }
    let started = Instant::now();
    let shape = Shape::of(ctx, (200, 8), (2000.0, 400.0), (8.0, 4.0))?;
    let (pairs, rate, payload, before) = (shape.pairs, shape.rate, shape.payload, shape.before);

    let mut relay = ctx.start_relay(ctx.opts.tls, 20)?;
    let target = TandemTarget::new(ctx.access(Some(&relay))?, Some(relay.pid()));
    let ps: Vec<load::Pair> = target.open(pairs).await?.into_iter().map(load::Pair::new).collect();

    let mark = Arc::new(AtomicU64::new(u64::MAX));
    let plan = shape.plan(&mark);
    let clock = ctx.clock;
    let load = tokio::spawn(async move { load::run(ps, &plan, clock, &[]).await });

    let relay_pid = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_cpu(clock, Arc::clone(&relay_pid), Arc::clone(&stop)));
    tokio::time::sleep(before).await;
    let overflows_before = listen_overflows();
    let killed = std::time::Instant::now();
    let killed_ns = clock.ns_at(killed);
    let (relay_back, restart) = tokio::task::spawn_blocking(move || {
        let r = relay.restart();
        (relay, r)
    })
    .await
    .map_err(|e| BenchError::Process(e.to_string()))?;
    relay = relay_back;
    relay_pid.store(u64::from(relay.pid()), Ordering::Release);
    let up_ns = clock.now_ns();
    mark.store(up_ns, Ordering::Release);
    let restart_result = restart;
    let (ps, out) = load.await.map_err(|e| BenchError::Process(e.to_string()))?;
    stop.store(true, Ordering::Release);
    let overflows = listen_overflows().zip(overflows_before).map(|(a, b)| a.saturating_sub(b));
    let samples = sampler.await.unwrap_or_default();
    restart_result?;

    let ms = |ns: u64| ns as f64 / 1e6;
    let mut resumed: Vec<u64> = out.first_after_mark.iter().flatten().map(|f| f.at_ns).collect();
    resumed.sort_unstable();
    let not_resumed = out.first_after_mark.iter().filter(|f| f.is_none()).count();
    let last = resumed.last().copied().filter(|_| not_resumed == 0);
    let median = resumed.get(resumed.len() / 2).copied();
    let received: u64 = ps.iter().map(|p| p.tally.received - p.tally.duplicates).sum();
    let health = target.health().report();
    let mut results = Results {
        pairs,
        rate,
        payload,
        tls: ctx.opts.tls,
        sent: out.sent,
        received,
        lost: out.lost + out.missing,
        duplicates: out.duplicates,
        relay_down_ms: ms(up_ns.saturating_sub(killed_ns)),
        all_resumed_after_kill_ms: last.map(|t| ms(t.saturating_sub(killed_ns))),
        all_resumed_after_restart_ms: last.map(|t| ms(t.saturating_sub(up_ns))),
        median_resumed_after_kill_ms: median.map(|t| ms(t.saturating_sub(killed_ns))),
        not_resumed,
        latency: Percentiles::of(&out.latency),
        health: health.clone(),
        phases: reconnect_phases::phases(ps.iter().zip(&out.first_after_mark), clock, killed),
        relay_cpu_to_resumed_s: None,
        bench_cpu_to_resumed_s: None,
        bench_cores_before_kill: None,
        cores_during_storm: None,
        listen_overflows: overflows,
    };
    cpu_figures(&mut results, &samples, killed_ns, last);
    let mut failures = out.failures("the storm");
    if not_resumed > 0 {
        failures.push(format!("{not_resumed} of {pairs} pairs did not resume"));
    }
    if !relay.alive() {
        failures.push(format!("the restarted relay died; its log:\n{}", relay.log_tail()));
    }
    failures.extend(health_failures("tandem", &health));
    print(&results, per_second(out.sent, out.seconds));
    reconnect_phases::print(&results.phases);
    drop(ps);
    ScenarioReport::new("reconnect-storm", started, &results, failures)
}

/// The CPU figures of `r` from `samples`: the relay's since it started
/// again (its CPU time counts from its start) and the bench's since the
/// kill, up to `resumed` (every pair resumed; ns on the run's clock).
fn cpu_figures(r: &mut Results, samples: &CpuSamples, killed_ns: u64, resumed: Option<u64>) {
    let second_before = killed_ns.saturating_sub(1_000_000_000);
    let at_kill = sample_at(samples, killed_ns);
    if let (Some(&(t0, _, Some(b0))), Some(&(t1, _, Some(b1)))) =
        (sample_at(samples, second_before), at_kill)
        && t1 > t0
    {
        r.bench_cores_before_kill = Some((b1 - b0) / ((t1 - t0) as f64 / 1e9));
    }
    let Some(end) = resumed.and_then(|t| sample_at(samples, t)) else { return };
    r.relay_cpu_to_resumed_s = end.1;
    if let (Some(&(t0, _, Some(b0))), &(t1, _, Some(b1))) = (at_kill, end) {
        r.bench_cpu_to_resumed_s = Some(b1 - b0);
        if let Some(relay) = end.1
            && t1 > t0
        {
            r.cores_during_storm = Some((relay + b1 - b0) / ((t1 - t0) as f64 / 1e9));
        }
    }
}

fn print(r: &Results, sent_rate: f64) {
    let opt_ms = |v: Option<f64>| v.map_or_else(|| "never".into(), |v| num(v, 0));
    let mut t = Table::new(
        format!(
            "reconnect-storm: {} pairs, {:.0} msg/s ({:.0} sent/s), relay killed and restarted{}",
            r.pairs,
            r.rate,
            sent_rate,
            if r.tls { ", TLS" } else { "" }
        ),
        &["figure", "value"],
    );
    for (k, v) in [
        ("relay down (kill → listening), ms", num(r.relay_down_ms, 0)),
        ("every pair resumed, ms after kill", opt_ms(r.all_resumed_after_kill_ms)),
        ("every pair resumed, ms after restart", opt_ms(r.all_resumed_after_restart_ms)),
        ("median pair resumed, ms after kill", opt_ms(r.median_resumed_after_kill_ms)),
        ("messages sent", r.sent.to_string()),
        ("messages received", r.received.to_string()),
        ("lost (must be 0)", r.lost.to_string()),
        ("duplicated (must be 0)", r.duplicates.to_string()),
        ("reconnections", r.health.reconnects.to_string()),
        (
            "handshakes dropped, accept queue full (machine-wide)",
            r.listen_overflows.map_or_else(|| "-".into(), |v| v.to_string()),
        ),
        (
            "CPU s to every pair resumed: relay (since its start) / bench (since the kill)",
            format!("{} / {}", opt(r.relay_cpu_to_resumed_s, 2), opt(r.bench_cpu_to_resumed_s, 2)),
        ),
        (
            "cores: bench before the kill / relay + bench during the storm",
            format!("{} / {}", opt(r.bench_cores_before_kill, 2), opt(r.cores_during_storm, 2)),
        ),
        ("redeliveries dropped end to end", r.health.redeliveries.to_string()),
        (
            "latency p50 / p99 / max, ms",
            format!(
                "{} / {} / {}",
                num(r.latency.p50_us / 1000.0, 1),
                num(r.latency.p99_us / 1000.0, 1),
                num(r.latency.max_us / 1000.0, 0)
            ),
        ),
    ] {
        t.row(vec![k.into(), v]);
    }
    t.print();
}
