//! Resident memory and open file descriptors of the three processes over a
//! long run (the soak, `tests/tests/soak.rs`): a thread reads
//! `/proc/<pid>/status` (`VmRSS`) and counts `/proc/<pid>/fd` of the relay,
//! the agent and the phone every few seconds, following each process across
//! its restarts (the scenario tells it the new pid), and writes every sample
//! to a CSV file as it goes. [`summarize`] turns the samples of one process
//! into the figures docs/RELIABILITY.md reports: first, last and largest,
//! and the slope after warm-up of its longest-lived process (a least-squares
//! line through the samples: per hour).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{fds, rss_kib};

/// The processes, in the order of every array here.
pub const NAMES: [&str; 3] = ["relay", "agent", "phone"];

/// One reading of one process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t: f64,
    /// 0 relay, 1 agent, 2 phone ([`NAMES`]).
    pub which: usize,
    pub pid: u32,
    pub rss_kib: u64,
    pub fds: usize,
}

/// The sampling thread; stop it with [`Sampler::finish`].
pub struct Sampler {
    pids: Arc<[AtomicU32; 3]>,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Sample `pids` (relay, agent, phone) every `every`, appending each
    /// sample to `csv` (`t_s,process,pid,rss_kib,fds`).
    pub fn start(pids: [u32; 3], every: Duration, csv: &Path) -> Sampler {
        let pids = Arc::new(pids.map(AtomicU32::new));
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut out = std::fs::File::create(csv).unwrap();
        writeln!(out, "t_s,process,pid,rss_kib,fds").unwrap();
        let thread = {
            let (pids, stop, samples) =
                (Arc::clone(&pids), Arc::clone(&stop), Arc::clone(&samples));
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut next = start;
                while !stop.load(Ordering::Acquire) {
                    if Instant::now() >= next {
                        next += every;
                        let t = start.elapsed().as_secs_f64();
                        for (which, pid) in pids.iter().enumerate() {
                            let pid = pid.load(Ordering::Acquire);
                            let (rss_kib, fds) = (rss_kib(pid), fds(pid));
                            // Between a kill and its restart: nothing to read.
                            if rss_kib == 0 {
                                continue;
                            }
                            let s = Sample { t, which, pid, rss_kib, fds };
                            let _ = writeln!(out, "{t:.1},{},{pid},{rss_kib},{fds}", NAMES[which]);
                            samples.lock().unwrap().push(s);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Sampler { pids, stop, samples, thread: Some(thread) }
    }

    /// Follow `which` (0 relay, 1 agent, 2 phone) to its new process.
    pub fn set_pid(&self, which: usize, pid: u32) {
        self.pids[which].store(pid, Ordering::Release);
    }

    /// Stop sampling; every sample taken.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// One quantity (RSS in KiB, or open file descriptors) of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trend {
    /// The first and last samples of the whole run (across restarts).
    pub first: u64,
    pub last: u64,
    pub max: u64,
    /// Over the longest-lived process after warm-up: its first and last
    /// samples there, and the least-squares slope, per hour.
    pub warm_first: u64,
    pub warm_last: u64,
    pub slope_per_hour: f64,
}

/// The figures of one process.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub name: &'static str,
    pub samples: usize,
    /// How many processes it was (restarts + 1).
    pub processes: usize,
    /// Seconds the longest-lived process was sampled after warm-up.
    pub warm_secs: f64,
    pub rss: Trend,
    pub fds: Trend,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} samples, {} process(es); RSS KiB first {} last {} max {}, longest process after \
             warm-up {}->{} over {:.0} s, slope {:+.0} KiB/h; fds first {} last {} max {}, after \
             warm-up {}->{}, slope {:+.1}/h",
            self.name,
            self.samples,
            self.processes,
            self.rss.first,
            self.rss.last,
            self.rss.max,
            self.rss.warm_first,
            self.rss.warm_last,
            self.warm_secs,
            self.rss.slope_per_hour,
            self.fds.first,
            self.fds.last,
            self.fds.max,
            self.fds.warm_first,
            self.fds.warm_last,
            self.fds.slope_per_hour,
        )
    }
}

/// Least-squares slope of `(t seconds, value)`, per hour; 0 for fewer than
/// two points.
pub fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    if points.len() < 2 {
        return 0.0;
    }
    let n = points.len() as f64;
    let (mt, mv) = points.iter().fold((0.0, 0.0), |(a, b), (t, v)| (a + t / n, b + v / n));
    let (mut num, mut den) = (0.0, 0.0);
    for (t, v) in points {
        num += (t - mt) * (v - mv);
        den += (t - mt) * (t - mt);
    }
    if den == 0.0 { 0.0 } else { num / den * 3600.0 }
}

/// The figures of process `which`: samples after `warmup` seconds of each
/// process's life count for the slope; the process with the most of them
/// is the one reported.
pub fn summarize(samples: &[Sample], which: usize, warmup: f64) -> Summary {
    let mine: Vec<&Sample> = samples.iter().filter(|s| s.which == which).collect();
    let mut s = Summary { name: NAMES[which], samples: mine.len(), ..Summary::default() };
    let (Some(first), Some(last)) = (mine.first(), mine.last()) else { return s };
    // The processes in the order they ran, each with its samples.
    let mut runs: Vec<(u32, Vec<&Sample>)> = Vec::new();
    for x in &mine {
        match runs.last_mut() {
            Some((pid, v)) if *pid == x.pid => v.push(x),
            _ => runs.push((x.pid, vec![x])),
        }
    }
    s.processes = runs.len();
    let warm = |v: &Vec<&Sample>| -> Vec<Sample> {
        let born = v.first().map_or(0.0, |x| x.t);
        v.iter().filter(|x| x.t - born >= warmup).map(|x| **x).collect()
    };
    let longest = runs.iter().map(|(_, v)| warm(v)).max_by_key(Vec::len).unwrap_or_default();
    let trend = |get: &dyn Fn(&Sample) -> u64| Trend {
        first: get(first),
        last: get(last),
        max: mine.iter().map(|x| get(x)).max().unwrap_or(0),
        warm_first: longest.first().map_or(0, get),
        warm_last: longest.last().map_or(0, get),
        slope_per_hour: slope_per_hour(
            &longest.iter().map(|x| (x.t, get(x) as f64)).collect::<Vec<_>>(),
        ),
    };
    s.rss = trend(&|x| x.rss_kib);
    s.fds = trend(&|x| x.fds as u64);
    s.warm_secs = match (longest.first(), longest.last()) {
        (Some(a), Some(b)) => b.t - a.t,
        _ => 0.0,
    };
    s
}

/// Lines of `log` at level ERROR or WARN (tracing's format) and panics:
/// `(errors, warnings, panics, the distinct messages of each, shortened)`.
pub fn log_levels(log: &Path) -> (usize, usize, usize, Vec<String>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut errors, mut warnings, mut panics) = (0, 0, 0);
    let mut kinds: Vec<String> = Vec::new();
    for l in text.lines() {
        let level = if l.contains(" ERROR ") {
            errors += 1;
            "ERROR"
        } else if l.contains(" WARN ") {
            warnings += 1;
            "WARN"
        } else if l.contains("panicked at") {
            panics += 1;
            "PANIC"
        } else {
            continue;
        };
        // The message without the timestamp, the span, the target and the
        // fields: `LEVEL span{…}: target: message field=value`.
        let msg = l.split_once(level).map_or(l, |(_, m)| m).trim();
        let msg = msg.rsplit_once("}: ").map_or(msg, |(_, m)| m);
        let msg = msg.split_once(": ").map_or(msg, |(_, m)| m);
        let msg = match msg.split_once('=') {
            Some((head, _)) => head.rsplit_once(' ').map_or(head, |(m, _)| m),
            None => msg,
        };
        let msg: String = msg.chars().take(100).collect();
        let kind = format!("{level} {msg}");
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    (errors, warnings, panics, kinds)
}
