//! Where the reconnect storm's time goes, phase by phase: from the kill to
//! each client noticing, its failed attempts and the waits its backoff
//! chose, the attempt that got through (TCP, WebSocket upgrade and
//! authentication), both ends of a pair authenticated, and the pair's first
//! message out, with which message that was (one sent before the kill and
//! resent, one sent while the pair was away, or one sent after it was
//! back).

use std::time::Instant;

use serde::Serialize;

use crate::load::{FirstOut, Pair};
use crate::report::{Table, num};
use crate::target::steps::{End, WayBack, way_back};
use crate::wire::Clock;

/// Percentiles of one phase over the devices or pairs that went through
/// it, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Spread {
    /// How many.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Spread {
    /// Of `ms` (sorted here).
    #[must_use]
    pub fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let Some(&max_ms) = ms.last() else { return Self::default() };
        let at = |q: f64| {
            let i = ((ms.len() - 1) as f64 * q).round() as usize;
            ms.get(i).copied().unwrap_or(max_ms)
        };
        Self { count: ms.len(), p50_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99), max_ms }
    }
}

/// The storm, phase by phase (times in ms after the kill unless named
/// otherwise).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Phases {
    /// Devices (both ends of every pair) that lost their connection and
    /// authenticated again.
    pub devices_back: usize,
    /// Devices that had not authenticated again by the end.
    pub devices_not_back: usize,
    /// A device's client saw its connection end.
    pub lost: Spread,
    /// Attempts that failed per device (connection refused while the relay
    /// was down, or an attempt that ran out of time).
    pub failed_attempts: Spread,
    /// Of all failed attempts, how many were refused (nobody listening).
    pub refused_attempts: u64,
    /// Of all failed attempts, how many were not.
    pub other_failed_attempts: u64,
    /// The waits a device's backoff chose, added up (ms, not after the kill).
    pub backoff_waited: Spread,
    /// The attempt that got through started (its last wait over).
    pub last_attempt_started: Spread,
    /// That attempt, from its start to `AuthOk` (ms, not after the kill):
    /// TCP, the WebSocket upgrade, `Hello`/`Challenge`/`Auth`.
    pub last_attempt_took: Spread,
    /// The device authenticated (`AuthOk`).
    pub authenticated: Spread,
    /// Devices authenticated by 0.5 s, 1 s, … 6 s after the kill.
    pub authenticated_by_half_second: Vec<usize>,
    /// Deliveries the relay said were queued at `AuthOk`, over all devices.
    pub queued_at_auth_ok: u64,
    /// Both ends of a pair authenticated.
    pub pair_authenticated: Spread,
    /// The pair's first message out after the restart.
    pub first_out: Spread,
    /// From both ends authenticated to that message out (ms).
    pub first_out_after_pair_back: Spread,
    /// Pairs whose first message was one sent before the kill (resent).
    pub first_sent_before_kill: usize,
    /// … one sent after the kill, before both ends were back.
    pub first_sent_while_away: usize,
    /// … one sent after both ends were back (the pair had nothing waiting).
    pub first_sent_after_back: usize,
}

/// Work the phases out for `pairs`, each with its first message out after
/// the mark, killed at `killed` (on `clock`).
#[must_use]
pub fn phases<'a>(
    pairs: impl IntoIterator<Item = (&'a Pair, &'a Option<FirstOut>)>,
    clock: Clock,
    killed: Instant,
) -> Phases {
    let killed_ns = clock.ns_at(killed);
    let ms_after = |at: Instant| clock.ns_at(at).saturating_sub(killed_ns) as f64 / 1e6;
    let dur_ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let mut p = Phases::default();
    let (mut lost, mut failed, mut waited, mut started, mut took, mut auth) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut pair_auth, mut first_out, mut after_back) = (vec![], vec![], vec![]);
    let mut buckets = vec![0usize; 12];
    for (pair, first) in pairs {
        let steps = pair.steps().map(|s| s.all()).unwrap_or_default();
        let [desktop, phone]: [Option<WayBack>; 2] =
            [End::Desktop, End::Phone].map(|e| way_back(&steps, e, killed));
        for w in [&desktop, &phone] {
            let Some(w) = w else {
                p.devices_not_back += 1;
                continue;
            };
            p.devices_back += 1;
            lost.push(ms_after(w.lost));
            failed.push(f64::from(w.failed));
            p.refused_attempts += u64::from(w.refused);
            p.other_failed_attempts += u64::from(w.failed - w.refused);
            waited.push(dur_ms(w.waited));
            started.push(ms_after(w.last_attempt));
            took.push(dur_ms(w.connected.saturating_duration_since(w.last_attempt)));
            let a = ms_after(w.connected);
            auth.push(a);
            for (i, b) in buckets.iter_mut().enumerate() {
                if a <= (i as f64 + 1.0) * 500.0 {
                    *b += 1;
                }
            }
            p.queued_at_auth_ok += u64::from(w.queued);
        }
        let back = match (&desktop, &phone) {
            (Some(d), Some(ph)) => Some(d.connected.max(ph.connected)),
            _ => None,
        };
        if let Some(back) = back {
            pair_auth.push(ms_after(back));
        }
        if let Some(f) = first {
            first_out.push(f.at_ns.saturating_sub(killed_ns) as f64 / 1e6);
            let back_ns = back.map(|b| clock.ns_at(b));
            if f.sent_ns < killed_ns {
                p.first_sent_before_kill += 1;
            } else if back_ns.is_some_and(|b| f.sent_ns >= b) {
                p.first_sent_after_back += 1;
            } else {
                p.first_sent_while_away += 1;
            }
            if let Some(b) = back_ns {
                after_back.push(f.at_ns.saturating_sub(b) as f64 / 1e6);
            }
        }
    }
    p.lost = Spread::of(lost);
    p.failed_attempts = Spread::of(failed);
    p.backoff_waited = Spread::of(waited);
    p.last_attempt_started = Spread::of(started);
    p.last_attempt_took = Spread::of(took);
    p.authenticated = Spread::of(auth);
    p.authenticated_by_half_second = buckets;
    p.pair_authenticated = Spread::of(pair_auth);
    p.first_out = Spread::of(first_out);
    p.first_out_after_pair_back = Spread::of(after_back);
    p
}

/// Print the phases as a table.
pub fn print(p: &Phases) {
    let mut t = Table::new(
        format!(
            "reconnect-storm phases: {} devices back ({} not), ms after the kill unless noted",
            p.devices_back, p.devices_not_back
        ),
        &["phase", "p50", "p90", "p99", "max"],
    );
    let row = |t: &mut Table, name: &str, s: &Spread, digits: usize| {
        t.row(vec![
            name.into(),
            num(s.p50_ms, digits),
            num(s.p90_ms, digits),
            num(s.p99_ms, digits),
            num(s.max_ms, digits),
        ]);
    };
    row(&mut t, "device saw the connection end", &p.lost, 0);
    row(&mut t, "failed attempts per device (count)", &p.failed_attempts, 1);
    row(&mut t, "backoff waits added up (ms)", &p.backoff_waited, 0);
    row(&mut t, "last attempt started", &p.last_attempt_started, 0);
    row(&mut t, "last attempt: TCP + upgrade + auth (ms)", &p.last_attempt_took, 0);
    row(&mut t, "device authenticated (AuthOk)", &p.authenticated, 0);
    row(&mut t, "both ends of the pair authenticated", &p.pair_authenticated, 0);
    row(&mut t, "pair's first message out", &p.first_out, 0);
    row(&mut t, "first message out after both back (ms)", &p.first_out_after_pair_back, 0);
    t.print();
    let by: Vec<String> = p.authenticated_by_half_second.iter().map(ToString::to_string).collect();
    println!(
        "failed attempts: {} refused, {} other; queued at AuthOk: {}; authenticated by 0.5 s steps: {}",
        p.refused_attempts,
        p.other_failed_attempts,
        p.queued_at_auth_ok,
        by.join(" ")
    );
    println!(
        "first message out was sent: before the kill {}, while the pair was away {}, after it was back {}",
        p.first_sent_before_kill, p.first_sent_while_away, p.first_sent_after_back
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_take_percentiles_of_the_sorted_values() {
        let s = Spread::of((1..=100).rev().map(f64::from).collect());
        assert_eq!(
            (s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (100, 51.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Spread::of(vec![]), Spread::default());
    }
}
