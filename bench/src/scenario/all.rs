//! `all`: every scenario, one after the other. A scenario that cannot run
//! is reported as failed and the others still run. The storm over several
//! nodes (and the Redis targets of throughput and latency) run when
//! `redis-server` is installed, and are skipped with a message otherwise.

use std::time::Instant;

use super::{Context, idle, latency, offline, pairing, reconnect, storm_nodes, throughput};
use crate::cli::IdleArgs;
use crate::error::Result;
use crate::report::ScenarioReport;

/// The scenarios' names, in the order `all` runs them.
pub const ORDER: [&str; 7] = [
    "idle",
    "throughput",
    "latency",
    "offline",
    "reconnect-storm",
    "reconnect-storm-nodes",
    "pairing",
];

/// Nodes in `all`'s storm over several nodes, unless `--nodes` says more.
const STORM_NODES: usize = 3;

/// Run every scenario.
pub async fn run(ctx: &Context) -> Vec<ScenarioReport> {
    let mut reports = Vec::new();
    for name in ORDER {
        let started = Instant::now();
        println!("\n== {name}");
        if name == "reconnect-storm-nodes" {
            if ctx.opts.no_redis {
                println!("skipping {name}: --no-redis");
                continue;
            }
            if !crate::redis::available() {
                println!("{}", crate::redis::missing_message(name));
                continue;
            }
        }
        let outcome = match name {
            "idle" => {
                let args = IdleArgs {
                    worker: false,
                    worker_connections: None,
                    worker_source: None,
                    worker_target: None,
                    no_baseline: false,
                };
                idle::run(ctx, &args).await
            }
            "throughput" => throughput::run(ctx).await,
            "latency" => latency::run(ctx).await,
            "offline" => offline::run(ctx).await,
            "reconnect-storm" => reconnect::run_single(ctx).await,
            "reconnect-storm-nodes" => {
                storm_nodes::run(ctx, ctx.opts.nodes.unwrap_or(STORM_NODES).max(2)).await
            }
            _ => pairing::run(ctx).await,
        };
        reports.push(settle(name, started, outcome));
    }
    reports
}

/// A scenario's report, or a failed one carrying its error.
#[must_use]
pub fn settle(
    name: &'static str,
    started: Instant,
    outcome: Result<ScenarioReport>,
) -> ScenarioReport {
    outcome.unwrap_or_else(|e| ScenarioReport {
        scenario: name,
        passed: false,
        failures: vec![format!("could not run: {e}")],
        elapsed_s: started.elapsed().as_secs_f64(),
        results: serde_json::Value::Null,
    })
}
