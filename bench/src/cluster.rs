//! Relay nodes on one Redis, started by the bench: a [`RedisServer`] of
//! its own and `n` `tandem-relay` processes with `--store redis
//! --redis-url … --node-id n1…nN`, each on its own free loopback port and
//! data directory, with the bench's usual generous limits.

use crate::error::Result;
use crate::redis::{Commands, RedisServer};
use crate::relay::{RelayOptions, RelayProcess};

/// A Redis server and the relay nodes sharing it; all killed when dropped
/// (the nodes first).
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, `n1` first.
    pub nodes: Vec<RelayProcess>,
    /// Their Redis.
    pub redis: RedisServer,
}

impl Cluster {
    /// Start Redis (`appendfsync` as given) and `nodes` relay nodes on it.
    ///
    /// # Errors
    /// [`crate::BenchError::Process`] when Redis or a node does not start
    /// (a node's log is in the error).
    pub fn start(base: &RelayOptions, nodes: usize, appendfsync: &str) -> Result<Self> {
        let redis = RedisServer::start(appendfsync)?;
        let mut started = Vec::with_capacity(nodes);
        for i in 1..=nodes.max(1) {
            let mut opts = base.clone();
            let mut args = node_args(&redis.url(), &node_id(i));
            args.append(&mut opts.extra_args);
            opts.extra_args = args;
            started.push(RelayProcess::start(opts)?);
        }
        Ok(Self { nodes: started, redis })
    }

    /// Every process of the cluster (the nodes, then Redis), for CPU time.
    #[must_use]
    pub fn pids(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.nodes.iter().map(RelayProcess::pid).collect();
        p.push(self.redis.pid());
        p
    }

    /// Redis's command counters now (`None` when it does not answer).
    #[must_use]
    pub fn commands(&self) -> Option<Commands> {
        self.redis.commands().ok()
    }

    /// The end of every node's log, for failure reports.
    #[must_use]
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{}:\n{}", node_id(i + 1), n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The id of node `i` (from 1).
#[must_use]
pub fn node_id(i: usize) -> String {
    format!("n{i}")
}

/// The arguments that put a relay on `redis_url` as node `id`.
#[must_use]
pub fn node_args(redis_url: &str, id: &str) -> Vec<String> {
    ["--store", "redis", "--redis-url", redis_url, "--node-id", id]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_the_store_their_redis_and_an_id() {
        assert_eq!(
            node_args("redis://127.0.0.1:7/", &node_id(2)),
            ["--store", "redis", "--redis-url", "redis://127.0.0.1:7/", "--node-id", "n2"]
        );
    }
}
