//! `reconnect-storm --nodes N` (N ≥ 2; issue 16): N relay nodes on one
//! Redis the bench starts, behind haproxy with the deployment's
//! configuration or the bench's own round-robin balancer
//! ([`crate::balancer`], `--balancer`); P pairs of real `tandem-client` devices connect
//! (and pair) through it, so their ends are spread over the nodes, and
//! stream numbered messages at a steady rate. One node (`n2`) is killed
//! with SIGKILL and not restarted: its devices' clients reconnect through
//! the balancer, which hands them to the surviving nodes, and pick
//! up what waited for them in Redis. The run measures how long until every
//! pair with an end on the killed node had a message out again (issue 16's
//! goal: within 5 s), and checks that every message came out exactly once,
//! in order (lost and duplicated must be 0).
//!
//! A pair counts as resumed at its first message out after both of its
//! ends authenticated again, or later: the first message out after the
//! kill plus [`SETTLE`] (bytes the dead node had already handed to the
//! balancer may still arrive just after the kill), and never before the
//! pair was back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::reconnect::Shape;
use super::reconnect_phases::{self, Phases};
use super::{Context, PING_SECS, health_failures, per_second};
use crate::balancer::{Balancer, HAPROXY_MAX_NODES, HAPROXY_NODE_ARGS, Haproxy, haproxy_available};
use crate::cluster::node_id;
use crate::error::{BenchError, Result};
use crate::load;
use crate::pairing::RelayAccess;
use crate::redis::RedisOps;
use crate::report::{ScenarioReport, Table, num};
use crate::stats::Percentiles;
use crate::target::steps::{End, Step};
use crate::target::tandem::TandemTarget;
use crate::target::{HealthReport, Target};

/// Issue 16's goal: every pair of the killed node resumed within this.
pub const RESUME_GOAL_MS: f64 = 5000.0;
/// After the kill, how long before a message out counts as a resumption.
pub const SETTLE: Duration = Duration::from_millis(100);
/// The node killed (index into the nodes: `n2`).
const KILLED: usize = 1;

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Relay nodes at the start.
    pub nodes: usize,
    /// The node killed (`n2`), not restarted.
    pub killed_node: String,
    /// Who balanced: the bench (round robin; a refused node is skipped) or
    /// haproxy with the deployment's configuration.
    pub balancer: &'static str,
    /// Redis's `appendfsync` (AOF on).
    pub redis_fsync: String,
    /// Pairs streaming.
    pub pairs: usize,
    /// Messages per second, all pairs together.
    pub rate: f64,
    /// Message size in bytes.
    pub payload: usize,
    /// Connections the balancer had handed to each node at the kill (the
    /// bench's balancer only; empty with haproxy).
    pub connections_per_node: Vec<u64>,
    /// Pairs with an end on the killed node.
    pub pairs_on_killed_node: usize,
    /// Devices that lost their connection after the kill.
    pub devices_moved: usize,
    /// Connections the balancer handed to each node after the kill.
    pub reconnections_per_node: Vec<u64>,
    /// Messages sent.
    pub sent: u64,
    /// Messages that came out (each once).
    pub received: u64,
    /// Messages lost (must be 0).
    pub lost: u64,
    /// Messages that came out twice (must be 0).
    pub duplicates: u64,
    /// From the kill until every pair of the killed node resumed, ms.
    pub all_resumed_after_kill_ms: Option<f64>,
    /// The median such pair, ms.
    pub median_resumed_after_kill_ms: Option<f64>,
    /// Pairs of the killed node that never resumed.
    pub not_resumed: usize,
    /// Every pair resumed within [`RESUME_GOAL_MS`] with nothing lost or
    /// duplicated.
    pub goal_met: bool,
    /// Message latency over the whole run (the outage included).
    pub latency: Percentiles,
    /// Redis commands per message over the whole run (pairing and the
    /// outage included).
    pub redis: Option<RedisOps>,
    /// Reconnections, redeliveries dropped end to end, errors.
    pub health: HealthReport,
    /// Where the time went, over the pairs with an end on the killed node
    /// and the ends that moved.
    pub phases: Phases,
}

/// Run it.
///
/// # Errors
/// With `--url` or `--tls`, without `redis-server`, or when the nodes or
/// the pairs cannot be set up.
pub async fn run(ctx: &Context, nodes: usize) -> Result<ScenarioReport> {
    if ctx.opts.tls {
        return Err(BenchError::Usage("reconnect-storm --nodes: plain WebSocket only".into()));
    }
    let started = Instant::now();
    let shape = Shape::of(ctx, (300, 9), (2000.0, 300.0), (8.0, 3.0))?;
    let (pairs, rate, payload) = (shape.pairs, shape.rate, shape.payload);

    let haproxy = match ctx.opts.balancer.as_str() {
        "haproxy" => true,
        "bench" => false,
        _ => nodes <= HAPROXY_MAX_NODES && haproxy_available(),
    };
    let node_args: &[&str] = if haproxy { &HAPROXY_NODE_ARGS } else { &[] };
    let mut cluster = ctx.start_cluster_with(nodes.max(2), false, PING_SECS, node_args)?;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr().to_owned()).collect();
    let lb = if haproxy {
        Lb::Haproxy(Haproxy::start(&addrs)?)
    } else {
        Lb::Bench(Balancer::start(&addrs).await?)
    };
    let target = TandemTarget::new(RelayAccess { url: lb.url(), roots: Vec::new() }, None);
    let ps: Vec<load::Pair> = target.open(pairs).await?.into_iter().map(load::Pair::new).collect();
    let commands = cluster.commands();

    let mark = Arc::new(AtomicU64::new(u64::MAX));
    let plan = shape.plan(&mark);
    let clock = ctx.clock;
    let load = tokio::spawn(async move { load::run(ps, &plan, clock, &[]).await });
    tokio::time::sleep(shape.before).await;
    let at_kill = lb.handed();
    let killed = Instant::now();
    let killed_ns = clock.ns_at(killed);
    mark.store(clock.ns_at(killed + SETTLE), Ordering::Release);
    let victim = cluster
        .nodes
        .get_mut(KILLED)
        .ok_or_else(|| BenchError::Usage("--nodes: at least 2".into()))?;
    victim.kill9();
    let (ps, out) = load.await.map_err(|e| BenchError::Process(e.to_string()))?;
    let redis = commands.zip(cluster.commands()).and_then(|(b, a)| {
        RedisOps::of(&a.since(&b), out.sent.saturating_sub(out.lost + out.missing))
    });

    // The pairs with an end on the killed node: an end that lost its
    // connection after the kill.
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut resumed = Vec::new();
    let (mut affected, mut not_resumed, mut moved) = (0, 0, 0);
    let mut on_killed = Vec::new();
    for (pair, first) in ps.iter().zip(&out.first_after_mark) {
        let steps = pair.steps().map(|s| s.all()).unwrap_or_default();
        let ends = [End::Desktop, End::Phone].map(|e| end_after(&steps, e, killed));
        let lost = ends.iter().filter(|e| e.0).count();
        if lost == 0 {
            continue;
        }
        affected += 1;
        moved += lost;
        on_killed.push((pair, first));
        // Back: the last of the moved ends authenticated again.
        let back = ends.iter().filter(|e| e.0).map(|e| e.1).collect::<Option<Vec<_>>>();
        let back = back.and_then(|b| b.into_iter().max());
        match (first, back) {
            (Some(f), Some(b)) => {
                resumed.push(ms(f.at_ns.max(clock.ns_at(b)).saturating_sub(killed_ns)))
            }
            _ => not_resumed += 1,
        }
    }
    resumed.sort_by(f64::total_cmp);
    let mut phases = reconnect_phases::phases(on_killed, clock, killed);
    // An end that stayed on a live node never lost its connection: not one
    // that failed to come back.
    phases.devices_not_back = phases.devices_not_back.saturating_sub(2 * affected - moved);
    let all = resumed.last().copied().filter(|_| not_resumed == 0);
    let handed = lb.handed();
    let health = target.health().report();
    let received: u64 = ps.iter().map(|p| p.tally.received - p.tally.duplicates).sum();
    let lost = out.lost + out.missing;
    let results = Results {
        nodes: cluster.nodes.len(),
        killed_node: node_id(KILLED + 1),
        balancer: lb.describe(),
        redis_fsync: ctx.redis_fsync().to_owned(),
        pairs,
        rate,
        payload,
        connections_per_node: at_kill.clone(),
        pairs_on_killed_node: affected,
        devices_moved: moved,
        reconnections_per_node: handed
            .iter()
            .zip(&at_kill)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
        sent: out.sent,
        received,
        lost,
        duplicates: out.duplicates,
        all_resumed_after_kill_ms: all,
        median_resumed_after_kill_ms: resumed.get(resumed.len() / 2).copied(),
        not_resumed,
        goal_met: all.is_some_and(|t| t <= RESUME_GOAL_MS) && lost == 0 && out.duplicates == 0,
        latency: Percentiles::of(&out.latency),
        redis,
        health: health.clone(),
        phases,
    };
    let mut failures = out.failures("the storm over several nodes");
    if not_resumed > 0 {
        failures
            .push(format!("{not_resumed} of {affected} pairs of the killed node did not resume"));
    }
    if affected == 0 {
        failures.push("no pair had an end on the killed node".into());
    }
    for (i, n) in cluster.nodes.iter_mut().enumerate() {
        if i != KILLED && !n.alive() {
            failures.push(format!("{} died; its log:\n{}", node_id(i + 1), n.log_tail()));
        }
    }
    if !failures.is_empty() {
        failures.push(format!("the nodes' logs end:\n{}", cluster.log_tails()));
    }
    failures.extend(health_failures("tandem", &health));
    print(&results, per_second(out.sent, out.seconds));
    reconnect_phases::print(&results.phases);
    drop(ps);
    ScenarioReport::new("reconnect-storm-nodes", started, &results, failures)
}

/// The balancer in front of the nodes.
enum Lb {
    Bench(Balancer),
    Haproxy(Haproxy),
}

impl Lb {
    fn url(&self) -> String {
        match self {
            Lb::Bench(b) => b.url(),
            Lb::Haproxy(h) => h.url(),
        }
    }

    /// Connections handed to each node (the bench's balancer only).
    fn handed(&self) -> Vec<u64> {
        match self {
            Lb::Bench(b) => b.handed(),
            Lb::Haproxy(_) => Vec::new(),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Lb::Bench(_) => "bench (round robin over the nodes; a refused node is skipped)",
            Lb::Haproxy(_) => "haproxy with deploy/haproxy/haproxy.cfg",
        }
    }
}

/// Whether `end` lost its connection after `since`, and when it
/// authenticated again after that (if it did).
fn end_after(steps: &[(Instant, End, Step)], end: End, since: Instant) -> (bool, Option<Instant>) {
    let mut lost = false;
    let mut back = None;
    for &(at, e, step) in steps {
        if e != end || at < since {
            continue;
        }
        match step {
            Step::Disconnected { .. } => {
                lost = true;
                back = None;
            }
            Step::Connected { .. } if lost => back = Some(at),
            Step::Connected { .. } => {}
        }
    }
    (lost, back)
}

fn print(r: &Results, sent_rate: f64) {
    let opt_ms = |v: Option<f64>| v.map_or_else(|| "never".into(), |v| num(v, 0));
    let join = |v: &[u64]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(" / ");
    let mut t = Table::new(
        format!(
            "reconnect-storm over {} nodes on one Redis (appendfsync {}): {} pairs, {:.0} msg/s \
             ({:.0} sent/s), {} killed (-9, not restarted); balancer: {}",
            r.nodes, r.redis_fsync, r.pairs, r.rate, sent_rate, r.killed_node, r.balancer
        ),
        &["figure", "value"],
    );
    for (k, v) in [
        ("connections per node at the kill", join(&r.connections_per_node)),
        ("pairs with an end on the killed node", r.pairs_on_killed_node.to_string()),
        ("devices moved", r.devices_moved.to_string()),
        ("reconnections per node after the kill", join(&r.reconnections_per_node)),
        ("every such pair resumed, ms after kill", opt_ms(r.all_resumed_after_kill_ms)),
        ("median such pair resumed, ms after kill", opt_ms(r.median_resumed_after_kill_ms)),
        ("messages sent", r.sent.to_string()),
        ("messages received", r.received.to_string()),
        ("lost (must be 0)", r.lost.to_string()),
        ("duplicated (must be 0)", r.duplicates.to_string()),
        (
            "Redis commands per message (whole run)",
            r.redis.as_ref().map_or_else(|| "-".into(), |o| num(o.commands_per_message, 1)),
        ),
        (
            "goal (all resumed ≤ 5 s, 0 lost, 0 duplicated)",
            if r.goal_met { "met".into() } else { "missed".into() },
        ),
        (
            "latency p50 / p99 / max, ms",
            format!(
                "{} / {} / {}",
                num(r.latency.p50_us / 1000.0, 1),
                num(r.latency.p99_us / 1000.0, 1),
                num(r.latency.max_us / 1000.0, 0)
            ),
        ),
    ] {
        t.row(vec![k.into(), v]);
    }
    t.print();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::steps::Cause;

    #[test]
    fn an_end_is_moved_when_it_lost_its_connection_after_the_kill() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let down = Step::Disconnected { retry_in: ms(10), cause: Cause::Other };
        let up = Step::Connected { queued: 0 };
        let steps = vec![
            (t0, End::Desktop, up),
            (t0, End::Phone, up),
            (t0 + ms(100), End::Phone, down),
            (t0 + ms(120), End::Phone, down),
            (t0 + ms(300), End::Phone, up),
        ];
        assert_eq!(end_after(&steps, End::Desktop, t0 + ms(50)), (false, None));
        assert_eq!(end_after(&steps, End::Phone, t0 + ms(50)), (true, Some(t0 + ms(300))));
        let never = &steps[..4];
        assert_eq!(end_after(never, End::Phone, t0 + ms(50)), (true, None));
    }
}
