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
use crate::report::{ScenarioReport, Table, num, opt};
use crate::stats::{Percentiles, ratio};
use crate::target::{HealthReport, TargetKind};
use crate::wire::WireSizes;

/// One target at one payload size.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The target.
    pub target: &'static str,
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
    /// Messages lost (must be 0).
    pub lost: u64,
    /// Messages received twice (must be 0).
    pub duplicates: u64,
}

/// Tandem against the forwarder at one payload size.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Message size in bytes.
    pub payload: usize,
    /// Tandem's messages per second ÷ the forwarder's.
    pub messages_tandem_over_forwarder: Option<f64>,
    /// Tandem's CPU per message ÷ the forwarder's.
    pub cpu_per_message_tandem_over_forwarder: Option<f64>,
}

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Simultaneous pairs.
    pub pairs: usize,
    /// Unacknowledged messages per pair.
    pub window: u64,
    /// Warm-up before each measurement, seconds.
    pub warmup_s: f64,
    /// Each measurement, seconds.
    pub duration_s: f64,
    /// TLS between devices and the relay.
    pub tls: bool,
    /// Frame sizes the baselines copy.
    pub wire: WireSizes,
    /// The measurements.
    pub rows: Vec<Row>,
    /// Tandem over the forwarder.
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
    let pairs = ctx.opts.pairs.unwrap_or(ctx.pick(16, 2));
    let window = ctx.opts.window.unwrap_or(64);
    let targets =
        ctx.opts.targets.clone().unwrap_or_else(|| vec![TargetKind::Tandem, TargetKind::Forwarder]);
    let warmup = Duration::from_secs_f64(ctx.pick(1.0, 0.3));
    let duration = ctx.duration(5.0, 1.0);
    let sizes = WireSizes::measure()?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut health = Vec::new();
    for kind in targets {
        let running = ctx.target(kind, sizes).await?;
        let target = &running.target;
        let mut ps: Vec<load::Pair> =
            target.open(pairs).await?.into_iter().map(load::Pair::new).collect();
        for &payload in &payloads {
            let plan = Plan {
                payload: payload.max(crate::wire::HEADER_LEN),
                pace: Pace::Window(window),
                warmup,
                duration,
                drain: Duration::from_secs(60),
                mark: None,
            };
            let (back, out) = load::run(ps, &plan, ctx.clock, target.pid()).await;
            ps = back;
            let secs = out.seconds;
            let rate = per_second(out.messages, secs);
            let row = Row {
                target: target.name(),
                payload,
                messages_per_s: rate,
                mb_per_s: per_second(out.bytes, secs) / 1e6,
                wire_mb_per_s: rate * sizes.data_frame(payload) as f64 / 1e6,
                messages: out.messages,
                target_cpu_s: out.target_cpu,
                cpu_us_per_message: out
                    .target_cpu
                    .filter(|_| out.messages > 0)
                    .map(|c| c * 1e6 / out.messages as f64),
                target_cores: out.target_cpu.map(|c| c / secs),
                bench_cores: out.bench_cpu.map(|c| c / secs),
                latency: Percentiles::of(&out.latency),
                lost: out.lost,
                duplicates: out.duplicates,
            };
            let what = format!("{} at {payload} B", target.name());
            let failed = out.failures(&what);
            if !failed.is_empty()
                && let Some(relay) = &running.relay
            {
                failures.push(format!("the relay's log ends:\n{}", relay.log_tail()));
            }
            failures.extend(failed);
            rows.push(row);
        }
        let h = target.health().report();
        failures.extend(health_failures(target.name(), &h));
        health.push((target.name(), h));
        drop(ps);
    }
    let ratios = payloads
        .iter()
        .map(|&payload| {
            let find = |t: &str| rows.iter().find(|r| r.target == t && r.payload == payload);
            let (t, f) = (find("tandem"), find("forwarder"));
            Ratio {
                payload,
                messages_tandem_over_forwarder: t
                    .zip(f)
                    .and_then(|(t, f)| ratio(t.messages_per_s, f.messages_per_s)),
                cpu_per_message_tandem_over_forwarder: t
                    .zip(f)
                    .and_then(|(t, f)| ratio(t.cpu_us_per_message?, f.cpu_us_per_message?)),
            }
        })
        .collect();
    let results = Results {
        pairs,
        window,
        warmup_s: warmup.as_secs_f64(),
        duration_s: duration.as_secs_f64(),
        tls: ctx.opts.tls,
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
            "throughput: {} pairs, window {}, {:.0} s each{}",
            r.pairs,
            r.window,
            r.duration_s,
            if r.tls { ", TLS" } else { "" }
        ),
        &[
            "target",
            "payload",
            "msg/s",
            "MB/s",
            "wire MB/s",
            "cpu µs/msg",
            "target cores",
            "bench cores",
            "p50 µs",
            "p99 µs",
            "lost",
            "dup",
        ],
    );
    for row in &r.rows {
        t.row(vec![
            row.target.into(),
            row.payload.to_string(),
            num(row.messages_per_s, 0),
            num(row.mb_per_s, 2),
            num(row.wire_mb_per_s, 2),
            opt(row.cpu_us_per_message, 1),
            opt(row.target_cores, 2),
            opt(row.bench_cores, 2),
            num(row.latency.p50_us, 0),
            num(row.latency.p99_us, 0),
            row.lost.to_string(),
            row.duplicates.to_string(),
        ]);
    }
    t.print();
    let mut t =
        Table::new("throughput ratios (tandem ÷ forwarder)", &["payload", "msg/s", "cpu/msg"]);
    for ratio in &r.ratios {
        t.row(vec![
            ratio.payload.to_string(),
            opt(ratio.messages_tandem_over_forwarder, 3),
            opt(ratio.cpu_per_message_tandem_over_forwarder, 2),
        ]);
    }
    t.print();
}
