//! `tandem-bench`: see `bench/README.md`.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tandem_bench::cli::{Cli, Command};
use tandem_bench::report::{Document, ScenarioReport};
use tandem_bench::scenario::{self, Context};
use tandem_bench::{BenchError, fdlimit, forwarder, target};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let scenario = !matches!(cli.command, Command::Forwarder(_) | Command::IrohRelay(_))
        && !matches!(cli.command, Command::Idle(ref a) if a.worker);
    // Before the runtime: its threads inherit the CPU.
    if cli.opts.pin
        && scenario
        && let Err(e) = tandem_bench::pin::pin()
    {
        eprintln!("tandem-bench: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Forwarder(args) => {
            if args.exit_with_stdin {
                target::forwarder::exit_when_stdin_closes();
            }
            if let Err(e) = forwarder::serve(args.listen).await {
                eprintln!("tandem-bench forwarder: {e}");
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Command::IrohRelay(args) => iroh_relay(&args).await,
        Command::Idle(args) if args.worker => {
            match scenario::idle_worker::run(&cli.opts, &args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("failed 0 {e}");
                    ExitCode::from(2)
                }
            }
        }
        command => scenarios(command, cli.opts).await,
    }
}

async fn scenarios(command: Command, opts: tandem_bench::cli::Opts) -> ExitCode {
    let _ = fdlimit::raise();
    let ctx = match Context::new(opts) {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("tandem-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let started = Instant::now();
    let (name, reports): (&str, Vec<ScenarioReport>) = match command {
        Command::All => ("all", scenario::all::run(&ctx).await),
        Command::Idle(args) => {
            ("idle", vec![settle("idle", scenario::idle::run(&ctx, &args).await)])
        }
        Command::Throughput => {
            ("throughput", vec![settle("throughput", scenario::throughput::run(&ctx).await)])
        }
        Command::Latency => {
            ("latency", vec![settle("latency", scenario::latency::run(&ctx).await)])
        }
        Command::Offline => {
            ("offline", vec![settle("offline", scenario::offline::run(&ctx).await)])
        }
        Command::ReconnectStorm => (
            "reconnect-storm",
            vec![settle("reconnect-storm", scenario::reconnect::run(&ctx).await)],
        ),
        Command::Pairing => {
            ("pairing", vec![settle("pairing", scenario::pairing::run(&ctx).await)])
        }
        Command::Forwarder(_) | Command::IrohRelay(_) => return ExitCode::from(2),
    };
    let path = ctx.json_path(name);
    let mut written = vec![path.clone()];
    let mut write_ok = Document::new(&ctx.machine, ctx.quick(), started_unix, &reports)
        .write(&path)
        .map_err(|e| eprintln!("tandem-bench: writing {}: {e}", path.display()))
        .is_ok();
    if name == "all"
        && let Some(dir) = path.parent()
    {
        for report in &reports {
            let one = dir.join(format!("{}.json", report.scenario));
            let doc = Document::new(
                &ctx.machine,
                ctx.quick(),
                started_unix,
                std::slice::from_ref(report),
            );
            write_ok &= doc.write(&one).is_ok();
            written.push(one);
        }
    }
    println!();
    for r in &reports {
        if r.passed {
            println!("PASS {} ({:.1} s)", r.scenario, r.elapsed_s);
        } else {
            println!("FAIL {} ({:.1} s)", r.scenario, r.elapsed_s);
            for f in &r.failures {
                println!("  - {f}");
            }
        }
    }
    for p in &written {
        println!("report: {}", p.display());
    }
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    if reports.iter().all(|r| r.passed) && write_ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

#[cfg(feature = "iroh")]
async fn iroh_relay(args: &tandem_bench::cli::ForwarderArgs) -> ExitCode {
    if args.exit_with_stdin {
        target::forwarder::exit_when_stdin_closes();
    }
    match target::iroh::serve(args.listen).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-bench iroh-relay: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(not(feature = "iroh"))]
#[allow(clippy::unused_async)]
async fn iroh_relay(_: &tandem_bench::cli::ForwarderArgs) -> ExitCode {
    eprintln!("tandem-bench iroh-relay: built without the cargo feature `iroh`");
    ExitCode::from(2)
}

fn settle(name: &'static str, outcome: Result<ScenarioReport, BenchError>) -> ScenarioReport {
    scenario::all::settle(name, Instant::now(), outcome)
}
