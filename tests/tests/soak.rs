//! The soak (issue 17): the real relay (in a network namespace of its own),
//! agent (`tandem run`) and phone engine, each a process of its own, under a
//! moderate steady load for `TANDEM_SOAK_SECS` (default 120: the test
//! command's two-minute variant; `scripts/soak.sh` runs an hour), with
//! faults sprinkled in at seeded random points: a short network cut (a
//! blackhole: no RST), a `SIGSTOP` of one of the three, now and then a
//! `kill -9` of one and its restart on the same data. Meanwhile a thread
//! samples the resident memory (`VmRSS`) and open file descriptors of each
//! process every few seconds (`support/samples.rs`).
//!
//! At the end, and after every fault, the harness counts at the endpoints
//! (`support/tally.rs`): nothing lost, duplicated or out of order, every
//! confirmed task ran once. It asserts that too, that no process logged an
//! error or panicked, that the file descriptors stay bounded, and that the
//! resident memory of each process's longest life grew by less than
//! `TANDEM_SOAK_MAX_GROWTH_KIB` (default 32 MiB) after warm-up; it prints
//! the figures (`SOAK …` lines: first, last, largest, slope per hour) that
//! docs/RELIABILITY.md quotes.
//!
//! Knobs (environment): `TANDEM_SOAK_SECS` (run time), `TANDEM_SOAK_LOAD_MS`
//! (one task submitted every so often, default 1000: the agent runs tasks one at a time, about 0.65 s each in a debug build on a busy machine), `TANDEM_SOAK_FAULT_SECS`
//! (a fault about every so often, ±25 %, default 20), `TANDEM_SOAK_KILL_EVERY`
//! (every n-th fault is a kill -9, default 3), `TANDEM_SOAK_CUT_SECS` and
//! `TANDEM_SOAK_STOP_SECS` (network cut and stop lengths, default 3),
//! `TANDEM_SOAK_SAMPLE_SECS` (default 2), `TANDEM_SOAK_WARMUP_SECS` (default
//! 30), `TANDEM_SOAK_CSV` (also copy the samples there), `TANDEM_FAULT_SEED`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;
mod support;

use std::time::{Duration, Instant};

use rand::Rng;
use support::net::Netns;
use support::samples::{self, NAMES, Sampler};
use support::world::World;
use support::{env_number, seeded};

crate::relay_process_test!();

/// Not a test: the phone process the soak starts (this binary, run again
/// with the phone's variables set).
#[test]
#[ignore = "not a test: the phone process the soak starts"]
fn phone_process() {
    support::phone::serve_if_asked();
}

/// The faults, in turn.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Cut,
    Stop,
    Kill,
}

/// The pid of process `which` (0 relay, 1 agent, 2 phone).
fn pid(w: &World, which: usize) -> u32 {
    match which {
        0 => w.relay.pid(),
        1 => w.agent.proc.pid(),
        _ => w.phone.pid(),
    }
}

#[test]
fn soak() {
    let (seed, mut rng) = seeded("soak");
    let secs = env_number("TANDEM_SOAK_SECS", 120);
    let load_ms = env_number("TANDEM_SOAK_LOAD_MS", 1000);
    let fault_secs = env_number("TANDEM_SOAK_FAULT_SECS", 20);
    let kill_every = env_number("TANDEM_SOAK_KILL_EVERY", 3).max(1);
    let cut_secs = env_number("TANDEM_SOAK_CUT_SECS", 3);
    let stop_secs = env_number("TANDEM_SOAK_STOP_SECS", 3);
    let sample_secs = env_number("TANDEM_SOAK_SAMPLE_SECS", 2);
    let warmup = env_number("TANDEM_SOAK_WARMUP_SECS", 30);
    let max_growth = env_number("TANDEM_SOAK_MAX_GROWTH_KIB", 32 * 1024);
    eprintln!(
        "soak: {secs} s, a task every {load_ms} ms, a fault every ~{fault_secs} s (every \
         {kill_every}th a kill -9), cuts {cut_secs} s, stops {stop_secs} s, samples every \
         {sample_secs} s, warm-up {warmup} s"
    );
    let tmp = support::scenario_dir();
    let dir = tmp.path();
    // Index 1: another subnet than the fault suite's (index 0), should the
    // two run at once.
    let ns = Netns::new(1);
    let mut w = World::new(dir, "soak", seed, Some(&ns));
    w.resumed();
    let csv = dir.join("samples.csv");
    let sampler = Sampler::start(
        [0, 1, 2].map(|i| pid(&w, i)),
        Duration::from_secs(sample_secs.max(1)),
        &csv,
    );

    let start = Instant::now();
    let run = Duration::from_secs(secs);
    let next_fault_in = |rng: &mut rand::rngs::StdRng| {
        let ms = fault_secs * 1000;
        Duration::from_millis(rng.random_range(ms * 3 / 4..=ms * 5 / 4))
    };
    let mut next_fault = start + next_fault_in(&mut rng);
    let mut faults = 0u64;
    let mut counts = [0u64; 3];
    let mut kills = [0u64; 3];
    let mut stops = [0u64; 3];
    let mut total = support::tally::Tally::default();
    let mut resumes = Vec::new();
    while start.elapsed() < run {
        // The load: a task (an `accepted`, 4 progress events, a finish)
        // every `load_ms`, their answers read meanwhile.
        w.submit("count 4 40");
        w.read_answers(Duration::from_millis(load_ms));
        if Instant::now() < next_fault {
            continue;
        }
        faults += 1;
        let kind = if faults.is_multiple_of(kill_every) {
            Fault::Kill
        } else if faults % 2 == 1 {
            Fault::Cut
        } else {
            Fault::Stop
        };
        let victim = rng.random_range(0..3usize);
        let at = start.elapsed().as_secs();
        match kind {
            Fault::Cut => {
                eprintln!("soak {at} s: network cut (blackhole) for {cut_secs} s");
                counts[0] += 1;
                ns.blackhole();
                w.submit("count 2 10");
                std::thread::sleep(Duration::from_secs(cut_secs));
                ns.heal();
            }
            Fault::Stop => {
                eprintln!("soak {at} s: {} stopped for {stop_secs} s", NAMES[victim]);
                counts[1] += 1;
                stops[victim] += 1;
                let p = pid(&w, victim);
                support::signal(p, "STOP");
                w.submit("count 2 10");
                std::thread::sleep(Duration::from_secs(stop_secs));
                support::signal(p, "CONT");
            }
            Fault::Kill => {
                eprintln!("soak {at} s: {} killed (-9) and started again", NAMES[victim]);
                counts[2] += 1;
                kills[victim] += 1;
                match victim {
                    0 => {
                        w.relay.kill9();
                        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
                        w.relay.restart();
                    }
                    1 => {
                        w.agent.proc.kill9();
                        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
                        w.agent.restart();
                    }
                    _ => {
                        w.phone.kill9();
                        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
                        w.phone.restart();
                    }
                }
                sampler.set_pid(victim, pid(&w, victim));
            }
        }
        let took = w.resumed();
        resumes.push(took);
        eprintln!("soak {at} s: {kind:?} cleared; resumed in {took:?}");
        // Count this stretch (every task it submitted, settled) and start
        // the next: the tallies stay small however long the run.
        let t = w.tally();
        t.assert_clean(&format!("soak, the stretch ending with fault {faults}"));
        total.add(&t);
        w.submitted.clear();
        next_fault = Instant::now() + next_fault_in(&mut rng);
    }
    let t = w.tally();
    total.add(&t);
    let samples = sampler.finish();
    if let Ok(to) = std::env::var("TANDEM_SOAK_CSV") {
        std::fs::copy(&csv, &to).unwrap();
        eprintln!("soak: samples copied to {to}");
    }
    w.figures.tally = total.clone();
    w.figures.resume = resumes;
    w.figures.cycles = faults;
    let elapsed = start.elapsed().as_secs();
    w.figures.print();
    eprintln!(
        "SOAK seed={seed} secs={elapsed} faults={faults}: network cuts {}, stops {} (relay {}, \
         agent {}, phone {}), kills {} (relay {}, agent {}, phone {})",
        counts[0], counts[1], stops[0], stops[1], stops[2], counts[2], kills[0], kills[1], kills[2]
    );
    let summaries: Vec<_> =
        (0..3).map(|i| samples::summarize(&samples, i, warmup as f64)).collect();
    for s in &summaries {
        eprintln!("SOAK {s}");
    }
    let mut log_errors = Vec::new();
    for (name, log) in [("relay", "relay.log"), ("agent", "agent.log"), ("phone", "phone.log")] {
        let (errors, warnings, panics, kinds) = samples::log_levels(&dir.join(log));
        eprintln!("SOAK log {name}: {errors} errors, {warnings} warnings, {panics} panics");
        for k in &kinds {
            eprintln!("SOAK log {name}:   {k}");
        }
        if errors + panics > 0 {
            log_errors.push(format!("{name}: {errors} errors, {panics} panics"));
        }
    }
    total.assert_clean("soak");
    assert!(log_errors.is_empty(), "errors in the logs: {log_errors:?}");
    for s in &summaries {
        assert!(s.samples > 0, "{}: never sampled", s.name);
        // A leak of descriptors shows as a climb; a few come and go with
        // connections and the executor's pipes.
        assert!(
            s.fds.warm_last <= s.fds.warm_first + 16 && s.fds.max < 256,
            "file descriptors not flat: {s}"
        );
        assert!(
            s.rss.warm_last <= s.rss.warm_first + max_growth,
            "resident memory grew by more than {max_growth} KiB after warm-up: {s}"
        );
    }
}

/// The slope helper the figures use.
#[test]
fn slope_of_a_line() {
    let pts: Vec<(f64, f64)> =
        (0..10).map(|i| (f64::from(i) * 60.0, 100.0 + f64::from(i))).collect();
    // One per minute: 60 per hour.
    assert!((samples::slope_per_hour(&pts) - 60.0).abs() < 1e-9);
    assert!(samples::slope_per_hour(&pts[..1]).abs() < f64::EPSILON);
}
