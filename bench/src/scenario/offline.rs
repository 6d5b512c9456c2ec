//! `offline`: recipients that are not connected, so the relay must write
//! every frame. P pairs are made, the phones disconnect, each desktop sends
//! M messages (sealed with its `Link`, up to [`MAX_IN_FLIGHT`] sends waiting
//! for the relay's `Ok`); the **write** rate is messages answered per second
//! until the last `Ok`. Then the phones connect again with their keys and
//! drain their queues; the **drain** rate is messages out of the phones'
//! `Link`s per second. Every message must come out once, in order.
//!
//! The relay's `/metrics` (the bench starts it with `--metrics-listen`) is
//! read before and after each phase: the deltas of every series that
//! names commits, batches, fsyncs or writes, and frames forwarded, are
//! reported; with a commit counter the frames per commit (the group commit's
//! batching) follow. A relay without such a counter shows only what it has.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;
use tandem_client::{ClientError, Event};
use tandem_proto::entropy::Entropy;
use tandem_proto::link::{Link, LinkEvent};
use tandem_proto::{DeviceId, DeviceKey, Role};

use super::{Context, PING_SECS, per_second};
use crate::error::{BenchError, Result};
use crate::pairing::{Device, RelayAccess, pair};
use crate::procfs::CpuMeter;
use crate::report::{ScenarioReport, Table, num, opt};
use crate::target::tandem::MAX_IN_FLIGHT;
use crate::wire;

/// How long the drain may take before it counts as failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// One phase (write or drain).
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Messages in the phase.
    pub messages: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Messages per second.
    pub messages_per_s: f64,
    /// The relay's CPU seconds in the phase.
    pub relay_cpu_s: Option<f64>,
    /// The relay's CPU per message, µs.
    pub cpu_us_per_message: Option<f64>,
    /// Deltas of the relay's store series (`/metrics`) over the phase.
    pub store_metrics: BTreeMap<String, f64>,
    /// Frames forwarded per commit, when the relay counts its commits.
    pub frames_per_commit: Option<f64>,
}

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Pairs (one desktop sending, one phone away).
    pub pairs: usize,
    /// Messages each desktop sent.
    pub messages_per_pair: u64,
    /// Message size in bytes.
    pub payload: usize,
    /// Extra relay arguments (`--relay-arg`).
    pub relay_args: Vec<String>,
    /// Sending while the phones are away: every frame written.
    pub write: Phase,
    /// The phones back, draining their queues.
    pub drain: Phase,
    /// Messages that never came out.
    pub lost: u64,
    /// Messages that came out twice.
    pub duplicates: u64,
    /// Sends the relay refused.
    pub refused: u64,
    /// Whether the relay served `/metrics`.
    pub metrics_read: bool,
}

/// A paired desktop (connected) and a phone's key and link (away).
struct Set {
    desktop: Device,
    desk_link: Link,
    phone_key: DeviceKey,
    phone_id: DeviceId,
    phone_link: Link,
}

async fn make_set(access: &RelayAccess) -> Result<Set> {
    let mut desktop = Device::connect(access, Role::Desktop).await?;
    let mut phone = Device::connect(access, Role::Phone).await?;
    let (desk_link, phone_link) = pair(&mut desktop, &mut phone).await?;
    let (phone_key, phone_id) = (phone.key.clone(), phone.id());
    phone.client.close().await;
    Ok(Set { desktop, desk_link, phone_key, phone_id, phone_link })
}

/// Send `m` messages; returns the refusals.
async fn write(mut desktop: Device, mut link: Link, to: DeviceId, m: u64, payload: usize) -> u64 {
    let mut in_flight: FuturesOrdered<_> = FuturesOrdered::new();
    let mut next = 1u64;
    let mut refused = 0u64;
    while next <= m || !in_flight.is_empty() {
        if next <= m && in_flight.len() < MAX_IN_FLIGHT {
            match link.send(wire::message(next, 0, payload)) {
                Ok((_, record)) => in_flight.push_back(desktop.client.send(to, record).boxed()),
                Err(_) => refused += 1,
            }
            next += 1;
            continue;
        }
        tokio::select! {
            Some(answer) = in_flight.next() => {
                let answer: std::result::Result<(), ClientError> = answer;
                refused += u64::from(answer.is_err());
            }
            // Keep the client's events drained (presence and the like).
            event = desktop.events.recv() => if event.is_none() { break },
        }
    }
    desktop.client.close().await;
    refused
}

/// A phone back with its key: take in `m` messages; returns (lost, duplicates).
async fn drain(
    access: RelayAccess,
    key: DeviceKey,
    mut link: Link,
    m: u64,
    until: tokio::time::Instant,
) -> Result<(u64, u64)> {
    let mut phone = Device::connect_as(&access, Role::Phone, key.clone()).await?;
    let mut entropy = Entropy::os();
    let (mut last, mut duplicates, mut skipped) = (0u64, 0u64, 0u64);
    while last < m {
        let event = tokio::time::timeout_at(until, phone.events.recv())
            .await
            .map_err(|_| BenchError::Timeout("an offline queue draining".into()))?;
        let Some(Event::Deliver { delivery_id, payload, .. }) = event else {
            if event.is_none() {
                return Err(BenchError::Process("the phone's client stopped".into()));
            }
            continue;
        };
        if let Ok(events) = link.receive(&key, &payload, &mut entropy) {
            for e in events {
                if let LinkEvent::Message { message, .. } = e
                    && let Some((seq, _)) = wire::parse(&message)
                {
                    if seq <= last {
                        duplicates += 1;
                    } else {
                        skipped += seq - last - 1;
                        last = seq;
                    }
                }
            }
        }
        phone.client.ack(delivery_id);
    }
    phone.client.close().await;
    Ok((skipped, duplicates))
}

/// The series of `/metrics` worth a delta here: name → value.
fn store_series(text: &str) -> BTreeMap<String, f64> {
    const WORDS: [&str; 6] = ["commit", "batch", "fsync", "write", "frames_forwarded", "hold"];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| WORDS.iter().any(|w| k.contains(w)))
        .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
        .collect()
}

fn deltas(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).collect()
}

/// Frames forwarded per durable commit of the store
/// (`tandem_relay_store_durable_commits`), when the relay counts them.
fn per_commit(d: &BTreeMap<String, f64>) -> Option<f64> {
    let frames = d.iter().find(|(k, _)| k.starts_with("tandem_relay_frames_forwarded"))?.1;
    let commits = d.get("tandem_relay_store_durable_commits")?;
    (*commits > 0.0).then(|| frames / commits)
}

/// Run it.
///
/// # Errors
/// When the relay cannot be started or the pairs set up.
pub async fn run(ctx: &Context) -> Result<ScenarioReport> {
    let started = Instant::now();
    let pairs = ctx.opts.pairs.as_ref().and_then(|p| p.first().copied());
    let pairs = pairs.unwrap_or(ctx.pick(16, 2)).max(1);
    let m = ctx.opts.messages.unwrap_or(ctx.pick(5_000, 200)).max(1);
    let payload = ctx.opts.payloads.as_ref().and_then(|p| p.first().copied()).unwrap_or(1024);
    let payload = payload.max(wire::HEADER_LEN);
    let relay = match ctx.opts.url {
        Some(_) => None,
        None => Some(ctx.start_relay(ctx.opts.tls, PING_SECS)?),
    };
    let access = ctx.access(relay.as_ref())?;
    let pid = relay.as_ref().map(crate::relay::RelayProcess::pid).or(ctx.opts.relay_pid);
    let sets: Vec<Set> = futures_util::stream::iter(0..pairs)
        .map(|_| make_set(&access))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    // Let the relay see the phones go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = || relay.as_ref().and_then(crate::relay::RelayProcess::metrics);
    let m0 = metrics();

    let meter = pid.map(CpuMeter::start);
    let t = Instant::now();
    let mut phones = Vec::new();
    let mut writers = Vec::new();
    for s in sets {
        writers.push(tokio::spawn(write(s.desktop, s.desk_link, s.phone_id, m, payload)));
        phones.push((s.phone_key, s.phone_link));
    }
    let mut refused = 0;
    for w in writers {
        refused += w.await.map_err(|e| BenchError::Process(format!("a writer failed: {e}")))?;
    }
    let write_s = t.elapsed().as_secs_f64();
    let write_cpu = meter.and_then(|m| m.elapsed());
    let m1 = metrics();

    let meter = pid.map(CpuMeter::start);
    let t = Instant::now();
    let until = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let drains: Vec<_> = phones
        .into_iter()
        .map(|(key, link)| tokio::spawn(drain(access.clone(), key, link, m, until)))
        .collect();
    let (mut lost, mut duplicates) = (0, 0);
    let mut failures = Vec::new();
    for d in drains {
        match d.await {
            Ok(Ok((l, dup))) => {
                lost += l;
                duplicates += dup;
            }
            Ok(Err(e)) => failures.push(format!("a phone did not drain: {e}")),
            Err(e) => failures.push(format!("a phone's task failed: {e}")),
        }
    }
    let drain_s = t.elapsed().as_secs_f64();
    let drain_cpu = meter.and_then(|m| m.elapsed());
    let m2 = metrics();

    let total = m * pairs as u64;
    let phase = |seconds: f64, cpu: Option<f64>, a: &Option<String>, b: &Option<String>| {
        let d = match (a, b) {
            (Some(a), Some(b)) => deltas(&store_series(a), &store_series(b)),
            _ => BTreeMap::new(),
        };
        Phase {
            messages: total,
            seconds,
            messages_per_s: per_second(total, seconds),
            relay_cpu_s: cpu,
            cpu_us_per_message: cpu.map(|c| c * 1e6 / total as f64),
            frames_per_commit: per_commit(&d),
            store_metrics: d,
        }
    };
    let results = Results {
        pairs,
        messages_per_pair: m,
        payload,
        relay_args: ctx.opts.relay_args.clone(),
        write: phase(write_s, write_cpu, &m0, &m1),
        drain: phase(drain_s, drain_cpu, &m1, &m2),
        lost,
        duplicates,
        refused,
        metrics_read: m0.is_some(),
    };
    if lost > 0 || duplicates > 0 {
        failures.push(format!("{lost} lost, {duplicates} duplicated messages"));
    }
    if refused > 0 {
        failures.push(format!("the relay refused {refused} sends"));
    }
    if !failures.is_empty()
        && let Some(relay) = &relay
    {
        failures.push(format!("the relay's log ends:\n{}", relay.log_tail()));
    }
    print(&results);
    ScenarioReport::new("offline", started, &results, failures)
}

fn print(r: &Results) {
    let mut t = Table::new(
        format!(
            "offline recipients: {} pairs × {} messages of {} B{}",
            r.pairs,
            r.messages_per_pair,
            r.payload,
            if r.relay_args.is_empty() {
                String::new()
            } else {
                format!(", relay {}", r.relay_args.join(" "))
            }
        ),
        &["phase", "messages", "seconds", "msg/s", "relay cpu µs/msg", "frames/commit"],
    );
    for (name, p) in [("write", &r.write), ("drain", &r.drain)] {
        t.row(vec![
            name.into(),
            p.messages.to_string(),
            num(p.seconds, 2),
            num(p.messages_per_s, 0),
            opt(p.cpu_us_per_message, 1),
            opt(p.frames_per_commit, 1),
        ]);
    }
    t.print();
    if !r.metrics_read {
        println!("(the relay's /metrics could not be read)");
    }
    for (name, p) in [("write", &r.write), ("drain", &r.drain)] {
        for (series, delta) in &p.store_metrics {
            println!("  {name}: Δ {series} = {delta}");
        }
    }
    println!("lost {}, duplicated {}, refused {}", r.lost, r.duplicates, r.refused);
}
