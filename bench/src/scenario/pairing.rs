//! `pairing`: how fast the relay pairs devices. First the latency of one
//! pairing at a time (two connected devices: mailbox, claim, IKpsk2,
//! confirm, both routes authorised, result; the code comparison a person
//! would make is automatic), and of connecting and authenticating one
//! device; then pairings per second with many at once, each from two fresh
//! devices connecting to two paired devices.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tandem_proto::Role;

use super::{Context, per_second};
use crate::cli::Count;
use crate::error::{BenchError, Result};
use crate::pairing::{Device, RelayAccess, pair};
use crate::relay::RelayProcess;
use crate::report::{ScenarioReport, Table, num};
use crate::stats::{Percentiles, histogram};

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// TLS between devices and the relay.
    pub tls: bool,
    /// Pairings timed one at a time.
    pub samples: usize,
    /// One pairing, devices already connected.
    pub pairing_latency: Percentiles,
    /// One device connecting and authenticating.
    pub connect_latency: Percentiles,
    /// Pairings in the rate run.
    pub pairings: usize,
    /// Pairings at once.
    pub concurrency: usize,
    /// Pairings per second, fresh devices connecting included.
    pub pairings_per_s: f64,
    /// Pairings that failed (must be 0).
    pub failed: usize,
    /// The first failure.
    pub first_failure: Option<String>,
}

/// Connect two fresh devices and pair them; returns the pairing time.
async fn one(access: &RelayAccess) -> Result<(Duration, Duration)> {
    let t = Instant::now();
    let mut desktop = Device::connect(access, Role::Desktop).await?;
    let mut phone = Device::connect(access, Role::Phone).await?;
    let connected = t.elapsed();
    let t = Instant::now();
    pair(&mut desktop, &mut phone).await?;
    let paired = t.elapsed();
    desktop.client.close().await;
    phone.client.close().await;
    Ok((connected, paired))
}

/// Run it.
///
/// # Errors
/// When the relay does not start.
pub async fn run(ctx: &Context) -> Result<ScenarioReport> {
    let started = Instant::now();
    let pairings = match ctx.opts.n.as_ref().and_then(|n| n.first().copied()) {
        Some(Count::N(n)) => n.max(1),
        Some(Count::Max) => return Err(BenchError::Usage("pairing: -n takes a number".into())),
        None => ctx.pick(500, 8),
    };
    let concurrency = ctx.opts.concurrency.unwrap_or(ctx.pick(32, 4)).max(1);
    let samples = ctx.pick(50, 4);
    let relay: Option<RelayProcess> = match ctx.opts.url {
        Some(_) => None,
        None => Some(ctx.start_relay(ctx.opts.tls, 20)?),
    };
    let access = ctx.access(relay.as_ref())?;
    let mut failures = Vec::new();
    let mut first_failure = None;
    let mut failed = 0;

    let (mut pairing_h, mut connect_h) = (histogram(), histogram());
    for _ in 0..samples {
        match one(&access).await {
            Ok((connect, paired)) => {
                // Two devices connected one after the other.
                let _ = connect_h.record(nanos(connect / 2));
                let _ = pairing_h.record(nanos(paired));
            }
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }

    let t = Instant::now();
    let outcomes: Vec<Result<(Duration, Duration)>> = futures_util::stream::iter(0..pairings)
        .map(|_| one(&access))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = t.elapsed().as_secs_f64();
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    for e in outcomes.into_iter().filter_map(std::result::Result::err) {
        failed += 1;
        first_failure.get_or_insert_with(|| e.to_string());
    }
    if failed > 0 {
        failures.push(format!(
            "{failed} pairing(s) failed, the first: {}",
            first_failure.as_deref().unwrap_or("?")
        ));
    }
    let results = Results {
        tls: ctx.opts.tls,
        samples,
        pairing_latency: Percentiles::of(&pairing_h),
        connect_latency: Percentiles::of(&connect_h),
        pairings,
        concurrency,
        pairings_per_s: per_second(ok as u64, elapsed),
        failed,
        first_failure,
    };
    print(&results);
    drop(relay);
    ScenarioReport::new("pairing", started, &results, failures)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

fn print(r: &Results) {
    let mut t = Table::new(
        format!("pairing{}", if r.tls { " (TLS)" } else { "" }),
        &["figure", "p50 ms", "p99 ms", "max ms"],
    );
    for (name, p) in [
        (format!("one pairing ({} samples)", r.samples), r.pairing_latency),
        ("connect + authenticate one device".to_owned(), r.connect_latency),
    ] {
        t.row(vec![name, num(p.p50_us / 1e3, 2), num(p.p99_us / 1e3, 2), num(p.max_us / 1e3, 2)]);
    }
    t.print();
    let mut t = Table::new("pairing rate", &["pairings", "at once", "pairings/s", "failed"]);
    t.row(vec![
        r.pairings.to_string(),
        r.concurrency.to_string(),
        num(r.pairings_per_s, 1),
        r.failed.to_string(),
    ]);
    t.print();
}
