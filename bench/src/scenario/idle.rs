//! `idle`: N authenticated connections that stay idle, and the relay's
//! resident memory per connection: `VmRSS` of the relay process before the
//! first connection and two seconds after the last, the difference divided
//! by N (the figure that extrapolates). Plain WebSocket and TLS, each at
//! every N asked for (by default 10 000 and as many as the open-file limit
//! allows: `max`); the bare forwarder at the first N as the stack's
//! baseline.
//!
//! The bench raises its soft open-file limit to the hard one (the relay it
//! starts inherits it) and opens the connections from worker processes
//! (`--per-process` connections each, by default as many as its limit
//! allows), each from its own loopback source addresses.
//!
//! This grew out of `relay/examples/idle_memory.rs` and measures the same
//! thing.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Context;
use crate::cli::{Count, IdleArgs};
use crate::error::{BenchError, Result};
use crate::fdlimit;
use crate::procfs::rss_kib;
use crate::report::{ScenarioReport, Table, num, opt};
use crate::stats::ratio;
use crate::target::TargetKind;
use crate::target::forwarder::ForwarderProcess;

/// How long the connections settle before memory is read.
const SETTLE: Duration = Duration::from_secs(2);

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `tandem` or `forwarder`.
    pub target: &'static str,
    /// TLS (tandem only).
    pub tls: bool,
    /// Connections asked for.
    pub requested: usize,
    /// Connections that were authenticated (tandem) or open (forwarder).
    pub connected: usize,
    /// Load-generating processes.
    pub workers: usize,
    /// Server RSS before the first connection, KiB.
    pub rss_before_kib: Option<u64>,
    /// Server RSS with every connection idle, KiB.
    pub rss_after_kib: Option<u64>,
    /// (after − before) ÷ connected, bytes.
    pub bytes_per_connection: Option<f64>,
    /// Connections per GiB at that rate.
    pub connections_per_gib: Option<f64>,
    /// Seconds to open them all.
    pub connect_s: f64,
    /// Open file descriptors of the server with every connection idle.
    pub server_fds: Option<usize>,
}

/// The relay's per-connection memory over the forwarder's.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Connections.
    pub connections: usize,
    /// TLS on the relay side.
    pub tls: bool,
    /// Relay bytes per connection ÷ forwarder bytes per connection.
    pub tandem_over_forwarder: Option<f64>,
}

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The open-file limit (soft, hard) after raising.
    pub open_files: (u64, u64),
    /// What `max` stood for.
    pub max_connections: usize,
    /// The measurements.
    pub rows: Vec<Row>,
    /// Relay over forwarder.
    pub ratios: Vec<Ratio>,
}

/// The server under test in one measurement.
struct Server<'a> {
    target: TargetKind,
    url: &'a str,
    pid: Option<u32>,
    root: Option<PathBuf>,
}

/// Run it.
///
/// # Errors
/// When a server or a worker cannot be started.
pub async fn run(ctx: &Context, args: &IdleArgs) -> Result<ScenarioReport> {
    let started = Instant::now();
    let limit = fdlimit::raise();
    let max = fdlimit::connections_per_process(limit);
    let per_process = ctx.opts.per_process.unwrap_or(ctx.pick(max, 150)).clamp(1, max);
    let mut counts: Vec<usize> = ctx
        .opts
        .n
        .clone()
        .unwrap_or_else(|| ctx.pick(vec![Count::N(10_000), Count::Max], vec![Count::N(300)]))
        .into_iter()
        .map(|c| match c {
            Count::N(n) => n,
            Count::Max => max,
        })
        .collect();
    counts.dedup();
    if ctx.opts.url.is_none()
        && let Some(n) = counts.iter().find(|n| **n > max)
    {
        return Err(BenchError::Usage(format!(
            "idle: {n} connections need more open files than the limit allows ({limit}): at most {max}"
        )));
    }
    let modes: Vec<bool> = match &ctx.opts.url {
        Some(url) => vec![url.starts_with("wss:")],
        None if ctx.opts.tls => vec![true],
        None => vec![false, true],
    };
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut run_index = 0u8;
    for &tls in &modes {
        for &n in &counts {
            run_index = run_index.wrapping_add(1).max(1);
            let relay = match ctx.opts.url {
                Some(_) => None,
                None => Some(ctx.start_relay(tls, 3600)?),
            };
            let (url, pid, root) = match &relay {
                Some(r) => (r.url().to_owned(), Some(r.pid()), r.root_pem_path()),
                None => (
                    ctx.opts.url.clone().unwrap_or_default(),
                    ctx.opts.relay_pid,
                    ctx.opts.root_cert.clone(),
                ),
            };
            let server = Server { target: TargetKind::Tandem, url: &url, pid, root };
            let row = tokio::task::block_in_place(|| {
                measure(ctx, &server, tls, n, per_process, run_index, &mut failures)
            })?;
            rows.push(row);
        }
    }
    if !args.no_baseline
        && ctx.opts.url.is_none()
        && let Some(&n) = counts.first()
    {
        run_index = run_index.wrapping_add(1).max(1);
        let fwd = ForwarderProcess::start(&ctx.exe)?;
        let server = Server {
            target: TargetKind::Forwarder,
            url: fwd.url(),
            pid: Some(fwd.pid()),
            root: None,
        };
        rows.push(tokio::task::block_in_place(|| {
            measure(ctx, &server, false, n, per_process, run_index, &mut failures)
        })?);
    }
    let ratios = rows
        .iter()
        .filter(|r| r.target == "tandem")
        .filter_map(|t| {
            let f = rows.iter().find(|f| f.target == "forwarder" && f.requested == t.requested)?;
            Some(Ratio {
                connections: t.requested,
                tls: t.tls,
                tandem_over_forwarder: t
                    .bytes_per_connection
                    .zip(f.bytes_per_connection)
                    .and_then(|(a, b)| ratio(a, b)),
            })
        })
        .collect();
    let results = Results { open_files: fdlimit::current(), max_connections: max, rows, ratios };
    print(&results);
    ScenarioReport::new("idle", started, &results, failures)
}

/// A worker process and its standard input (closing it ends the worker).
struct Worker {
    child: Child,
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn measure(
    ctx: &Context,
    server: &Server<'_>,
    tls: bool,
    n: usize,
    per_process: usize,
    run_index: u8,
    failures: &mut Vec<String>,
) -> Result<Row> {
    let name = if server.target == TargetKind::Tandem { "tandem" } else { "forwarder" };
    let what = format!("{name}{} with {n} connections", if tls { " (TLS)" } else { "" });
    std::thread::sleep(Duration::from_millis(500));
    let before = server.pid.and_then(rss_kib);
    let started = Instant::now();
    let workers = n.div_ceil(per_process).max(1);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut procs = Vec::with_capacity(workers);
    for w in 0..workers {
        let share = n / workers + usize::from(w < n % workers);
        let mut cmd = Command::new(&ctx.exe);
        cmd.args(["idle", "--worker", "--url", server.url])
            .args(["--worker-connections", &share.to_string()])
            .args(["--worker-source", &format!("127.{run_index}.{}", w + 1)])
            .args([
                "--worker-target",
                if server.target == TargetKind::Tandem { "tandem" } else { "forwarder" },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(root) = &server.root {
            cmd.arg("--root-cert").arg(root);
        }
        if let Some(c) = ctx.opts.concurrency {
            cmd.args(["--concurrency", &c.to_string()]);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| BenchError::Process(format!("cannot start an idle worker: {e}")))?;
        let stdout = child.stdout.take().ok_or_else(|| BenchError::Process("no stdout".into()))?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                if tx.send((w, line)).is_err() {
                    return;
                }
            }
        });
        procs.push(Worker { child });
    }
    drop(tx);
    // Every worker says `ready <connected> <ms>` (after `failed …` if some failed).
    let deadline = Instant::now() + Duration::from_secs(120 + 10 * (n as u64 / 1000));
    let mut ready = vec![None; workers];
    while ready.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((w, line)) = rx.recv_timeout(left) else {
            failures.push(format!("{what}: workers did not report in time"));
            break;
        };
        if let Some(rest) = line.strip_prefix("ready ") {
            let connected: usize =
                rest.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if let Some(slot) = ready.get_mut(w) {
                *slot = Some(connected);
            }
        } else if let Some(rest) = line.strip_prefix("failed ") {
            failures.push(format!("{what}: worker {w}: {rest}"));
        }
    }
    let connected: usize = ready.iter().flatten().sum();
    let connect_s = started.elapsed().as_secs_f64();
    if connected < n {
        failures.push(format!("{what}: only {connected} of {n} connected"));
    }
    std::thread::sleep(SETTLE);
    let after = server.pid.and_then(rss_kib);
    let server_fds = server
        .pid
        .and_then(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map(Iterator::count);
    let per = before
        .zip(after)
        .filter(|_| connected > 0)
        .map(|(b, a)| a.saturating_sub(b) as f64 * 1024.0 / connected as f64);
    drop(procs);
    let row = Row {
        target: name,
        tls,
        requested: n,
        connected,
        workers,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_connection: per,
        connections_per_gib: per.filter(|p| *p > 0.0).map(|p| f64::from(1u32 << 30) / p),
        connect_s,
        server_fds,
    };
    let _ = std::io::stdout().flush();
    Ok(row)
}

fn print(r: &Results) {
    let mut t = Table::new(
        format!(
            "idle: memory per idle connection (open files {} / {})",
            r.open_files.0, r.open_files.1
        ),
        &[
            "target",
            "tls",
            "connections",
            "workers",
            "rss before MiB",
            "rss after MiB",
            "bytes/conn",
            "conns/GiB",
            "connect s",
        ],
    );
    let mib = |k: Option<u64>| opt(k.map(|k| k as f64 / 1024.0), 1);
    for row in &r.rows {
        t.row(vec![
            row.target.into(),
            if row.tls { "yes".into() } else { "no".into() },
            format!("{}/{}", row.connected, row.requested),
            row.workers.to_string(),
            mib(row.rss_before_kib),
            mib(row.rss_after_kib),
            opt(row.bytes_per_connection, 0),
            opt(row.connections_per_gib, 0),
            num(row.connect_s, 1),
        ]);
    }
    t.print();
    if !r.ratios.is_empty() {
        let mut t = Table::new(
            "idle ratios (tandem ÷ forwarder, bytes per connection)",
            &["connections", "tls", "ratio"],
        );
        for ratio in &r.ratios {
            t.row(vec![
                ratio.connections.to_string(),
                if ratio.tls { "yes".into() } else { "no".into() },
                opt(ratio.tandem_over_forwarder, 2),
            ]);
        }
        t.print();
    }
}
