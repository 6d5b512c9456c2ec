//! The load drivers: numbered messages into every pair, either as fast as
//! the end-to-end acknowledgements allow (a window of unacknowledged
//! messages per pair) or at a fixed rate; what comes out is checked (every
//! message once, in order) and timed.
//!
//! A run has a schedule on the run's [`Clock`]: sending starts at once,
//! counting starts after the warm-up (`t0`), sending stops at `t1`, then the
//! pairs drain: the driver waits until every message sent has come out and
//! been acknowledged (or the drain deadline passes, which is a failure).
//! Throughput counts messages that came out in `[t0, t1)`; latency counts
//! messages sent in `[t0, t1)`, from the moment the driver handed them to
//! the target to the moment the phone end had them in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::{Instant, sleep_until};

use crate::procfs::CpuMeter;
use crate::stats::histogram;
use crate::target::{PairIo, Received};
use crate::wire::{self, Clock};

/// How a pair's sender is paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as acknowledgements allow: at most this many messages
    /// unacknowledged end to end.
    Window(u64),
    /// A fixed rate per pair (messages per second), never more than
    /// `window` unacknowledged; a sender more than 10 ms behind skips the
    /// slots it missed (counted).
    Rate {
        /// Messages per second for this pair.
        per_pair: f64,
        /// Most unacknowledged messages.
        window: u64,
    },
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Message size in bytes (at least [`wire::HEADER_LEN`]).
    pub payload: usize,
    /// How senders are paced.
    pub pace: Pace,
    /// Before counting starts.
    pub warmup: Duration,
    /// How long counting lasts (sending stops at its end).
    pub duration: Duration,
    /// Most time to wait for the pairs to drain after sending stops.
    pub drain: Duration,
    /// If set, each pair notes the first message it receives after this
    /// moment (nanoseconds on the run's clock; `u64::MAX` until set).
    pub mark: Option<Arc<AtomicU64>>,
    /// The target drops messages by design: what is still missing after
    /// the drain is written off (counted once, as lost), not waited for
    /// again in the next run.
    pub lossy: bool,
}

/// What one pair has received so far, across runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// The highest message number received.
    pub last: u64,
    /// Messages received (duplicates included).
    pub received: u64,
    /// Messages received again.
    pub duplicates: u64,
    /// Messages skipped over (a later one came first): lost.
    pub skipped: u64,
    /// Messages that were not benchmark messages.
    pub malformed: u64,
}

impl Tally {
    fn on(&mut self, seq: u64) {
        self.received += 1;
        if seq <= self.last {
            self.duplicates += 1;
        } else {
            self.skipped += seq - self.last - 1;
            self.last = seq;
        }
    }
}

/// A pair under load: its channels, how far it got, what it received.
#[derive(Debug)]
pub struct Pair {
    io: PairIo,
    /// Messages sent so far (the next one is `sent + 1`).
    pub sent: u64,
    /// What came out.
    pub tally: Tally,
}

impl Pair {
    /// A fresh pair.
    #[must_use]
    pub fn new(io: PairIo) -> Self {
        Self { io, sent: 0, tally: Tally::default() }
    }

    fn acked(&self) -> u64 {
        *self.io.acked.borrow()
    }

    /// Its relay clients' steps, when the target notes them.
    #[must_use]
    pub fn steps(&self) -> Option<&Arc<crate::target::steps::PairSteps>> {
        self.io.steps.as_ref()
    }

    /// Every message sent came out exactly once and was acknowledged.
    #[must_use]
    pub fn drained(&self) -> bool {
        self.tally.last == self.sent && self.acked() >= self.sent
    }
}

/// What one run measured, over every pair.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Length of the counting window.
    pub seconds: f64,
    /// Messages that came out in the window.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Messages sent in the whole run.
    pub sent: u64,
    /// Latency of messages sent in the window (ns).
    pub latency: Histogram<u64>,
    /// Messages that never came out: a later one came first (or one that
    /// was not a benchmark message came instead).
    pub lost: u64,
    /// Messages that had not come out when the drain deadline passed.
    pub missing: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Pairs that had not drained by the deadline.
    pub undrained: usize,
    /// Rate slots skipped because a sender fell behind.
    pub missed: u64,
    /// CPU seconds the target's processes used in the window.
    pub target_cpu: Option<f64>,
    /// The same per process, in the order of the pids given.
    pub target_cpu_each: Vec<Option<f64>>,
    /// CPU seconds this process used in the window.
    pub bench_cpu: Option<f64>,
    /// Per pair (in the order of the pairs returned), the first message
    /// that came out after the mark.
    pub first_after_mark: Vec<Option<FirstOut>>,
    /// The drain deadline the run had.
    pub drain: Duration,
    /// For the first few pairs that did not drain: sent, received up to,
    /// acknowledged up to.
    pub stuck: Vec<(u64, u64, u64)>,
}

impl Outcome {
    /// The correctness checks, as failures in words (`what` names the run):
    /// every message out exactly once, every pair drained, something came
    /// through.
    #[must_use]
    pub fn failures(&self, what: &str) -> Vec<String> {
        self.failures_of(what, false)
    }

    /// [`Outcome::failures`] for a target that may drop messages by design
    /// (`lossy`: iroh-relay drops on full queues): its losses are figures
    /// ([`Outcome::lost_total`]), not failures; duplicates still fail.
    #[must_use]
    pub fn failures_of(&self, what: &str, lossy: bool) -> Vec<String> {
        let mut f = Vec::new();
        if lossy {
            if self.duplicates > 0 {
                f.push(format!("{what}: {} duplicated messages", self.duplicates));
            }
            if self.messages == 0 {
                f.push(format!("{what}: nothing came through"));
            }
            return f;
        }
        if self.lost > 0 || self.duplicates > 0 {
            f.push(format!("{what}: {} lost, {} duplicated messages", self.lost, self.duplicates));
        }
        if self.undrained > 0 {
            let stuck: Vec<String> = self
                .stuck
                .iter()
                .map(|(s, r, a)| format!("sent {s}, received up to {r}, acked up to {a}"))
                .collect();
            f.push(format!(
                "{what}: {} pair(s) still had {} message(s) to deliver {} s after sending \
                 stopped ({})",
                self.undrained,
                self.missing,
                self.drain.as_secs(),
                stuck.join("; ")
            ));
        }
        if self.messages == 0 {
            f.push(format!("{what}: nothing came through"));
        }
        f
    }
}

impl Outcome {
    /// Messages that never came out: skipped over, or still missing when
    /// the drain ended.
    #[must_use]
    pub fn lost_total(&self) -> u64 {
        self.lost + self.missing
    }

    /// Messages sent in the run that came out (once).
    #[must_use]
    pub fn delivered(&self) -> u64 {
        self.sent.saturating_sub(self.lost_total())
    }
}

/// The first message a pair had out after the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstOut {
    /// When it came out (the run's clock, ns).
    pub at_ns: u64,
    /// When the driver handed it to the target (the run's clock, ns).
    pub sent_ns: u64,
    /// Its number.
    pub seq: u64,
}

/// What one pair's driver returns.
struct PairRun {
    pair: Pair,
    messages: u64,
    bytes: u64,
    sent: u64,
    latency: Histogram<u64>,
    missed: u64,
    first_after_mark: Option<FirstOut>,
    drained: bool,
}

/// Run `plan` over `pairs`; returns them (for the next run) and the
/// outcome, with the CPU time of `target_pids` added up.
pub async fn run(
    pairs: Vec<Pair>,
    plan: &Plan,
    clock: Clock,
    target_pids: &[u32],
) -> (Vec<Pair>, Outcome) {
    // The tallies carry over from run to run: count this run's share.
    let lost_before: u64 = pairs.iter().map(|p| p.tally.skipped + p.tally.malformed).sum();
    let duplicates_before: u64 = pairs.iter().map(|p| p.tally.duplicates).sum();
    let start = Instant::now();
    let t0 = start + plan.warmup;
    let t1 = t0 + plan.duration;
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|pair| tokio::spawn(drive(pair, plan.clone(), clock, start, t0, t1)))
        .collect();
    sleep_until(t0).await;
    let target: Vec<CpuMeter> = target_pids.iter().copied().map(CpuMeter::start).collect();
    let bench = CpuMeter::start(std::process::id());
    sleep_until(t1).await;
    // Every process of the target (relay nodes and Redis), added up.
    let target_cpu_each: Vec<Option<f64>> = target.iter().map(CpuMeter::elapsed).collect();
    let target_cpu =
        if target.is_empty() { None } else { target_cpu_each.iter().copied().sum::<Option<f64>>() };
    let bench_cpu = bench.elapsed();

    let mut out = Outcome {
        seconds: plan.duration.as_secs_f64(),
        messages: 0,
        bytes: 0,
        sent: 0,
        latency: histogram(),
        lost: 0,
        missing: 0,
        duplicates: 0,
        undrained: 0,
        missed: 0,
        target_cpu,
        target_cpu_each,
        bench_cpu,
        first_after_mark: Vec::new(),
        drain: plan.drain,
        stuck: Vec::new(),
    };
    let mut pairs = Vec::with_capacity(tasks.len());
    for t in tasks {
        let Ok(r) = t.await else {
            out.undrained += 1;
            continue;
        };
        out.messages += r.messages;
        out.bytes += r.bytes;
        out.sent += r.sent;
        out.missed += r.missed;
        let _ = out.latency.add(&r.latency);
        out.first_after_mark.push(r.first_after_mark);
        if !r.drained {
            out.undrained += 1;
            if out.stuck.len() < 3 {
                out.stuck.push((r.pair.sent, r.pair.tally.last, r.pair.acked()));
            }
        }
        pairs.push(r.pair);
    }
    for p in &pairs {
        out.lost += p.tally.skipped + p.tally.malformed;
        out.missing += p.sent.saturating_sub(p.tally.last);
        out.duplicates += p.tally.duplicates;
    }
    out.lost = out.lost.saturating_sub(lost_before);
    out.duplicates = out.duplicates.saturating_sub(duplicates_before);
    if plan.lossy {
        for p in &mut pairs {
            p.tally.last = p.tally.last.max(p.sent);
        }
    }
    (pairs, out)
}

/// What woke a pair's driver.
enum Step {
    Received(Received),
    Sent,
    Again,
    Stop,
}

/// Drive one pair through a run.
async fn drive(
    mut pair: Pair,
    plan: Plan,
    clock: Clock,
    start: Instant,
    t0: Instant,
    t1: Instant,
) -> PairRun {
    let (t0_ns, t1_ns) = (clock.ns_at(t0.into_std()), clock.ns_at(t1.into_std()));
    let drain_until = t1 + plan.drain;
    let (window, rate) = match plan.pace {
        Pace::Window(w) => (w.max(1), None),
        Pace::Rate { per_pair, window } => (window.max(1), Some(per_pair.max(0.001))),
    };
    pair.io.acked.borrow_and_update();
    let mut r = PairRun {
        pair,
        messages: 0,
        bytes: 0,
        sent: 0,
        latency: histogram(),
        missed: 0,
        first_after_mark: None,
        drained: false,
    };
    // Paced senders: slots sent in this run.
    let mut slots = 0u64;
    loop {
        let now = Instant::now();
        let sending = now < t1;
        if !sending && r.pair.drained() {
            r.drained = true;
            break;
        }
        let outstanding = r.pair.sent.saturating_sub(r.pair.acked());
        // For a paced sender: how many slots are due by now, and when the next is.
        let (due, next_slot) = match rate {
            None => (u64::MAX, None),
            Some(rate) => {
                let elapsed = now.saturating_duration_since(start).as_secs_f64();
                let due = (elapsed * rate) as u64 + 1;
                let behind_limit = (rate * 0.01) as u64 + 1;
                if due > slots + behind_limit {
                    r.missed += due - slots - 1;
                    slots = due - 1;
                }
                let next = start + Duration::from_secs_f64(slots as f64 / rate);
                (due, Some(next))
            }
        };
        let can_send = sending && outstanding < window && slots < due;
        let step = tokio::select! {
            biased;
            received = r.pair.io.received.recv() => match received {
                Some(received) => Step::Received(received),
                None => Step::Stop,
            },
            changed = r.pair.io.acked.changed() => {
                if changed.is_err() { Step::Stop } else { Step::Again }
            }
            permit = r.pair.io.send.reserve(), if can_send => match permit {
                Ok(permit) => {
                    let seq = r.pair.sent + 1;
                    permit.send(wire::message(seq, clock.now_ns(), plan.payload));
                    Step::Sent
                }
                Err(_) => Step::Stop,
            },
            () = sleep_until(next_slot.unwrap_or(t1)), if sending && rate.is_some() && slots >= due => Step::Again,
            () = sleep_until(t1), if sending => Step::Again,
            () = sleep_until(drain_until), if !sending => Step::Stop,
        };
        match step {
            Step::Received(received) => {
                on_received(&mut r, &received, clock, t0_ns, t1_ns, plan.mark.as_deref());
            }
            Step::Sent => {
                r.pair.sent += 1;
                r.sent += 1;
                slots += 1;
            }
            Step::Again => {}
            Step::Stop => break,
        }
    }
    r
}

fn on_received(
    r: &mut PairRun,
    received: &Received,
    clock: Clock,
    t0_ns: u64,
    t1_ns: u64,
    mark: Option<&AtomicU64>,
) {
    let Some((seq, sent_ns)) = wire::parse(&received.message) else {
        r.pair.tally.malformed += 1;
        return;
    };
    r.pair.tally.on(seq);
    let at_ns = clock.ns_at(received.at);
    if (t0_ns..t1_ns).contains(&at_ns) {
        r.messages += 1;
        r.bytes += received.message.len() as u64;
    }
    if (t0_ns..t1_ns).contains(&sent_ns) {
        let _ = r.latency.record(at_ns.saturating_sub(sent_ns).max(1));
    }
    if r.first_after_mark.is_none()
        && let Some(mark) = mark
        && at_ns > mark.load(Ordering::Acquire)
    {
        r.first_after_mark = Some(FirstOut { at_ns, sent_ns, seq });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_duplicates_and_gaps() {
        let mut t = Tally::default();
        for s in [1, 2, 2, 3, 5, 4, 6] {
            t.on(s);
        }
        assert_eq!((t.last, t.received, t.duplicates, t.skipped), (6, 7, 2, 1));
    }
}
