//! Where the store finds its Redis server: one address (`redis://`,
//! `unix://`), or the primary that Sentinel names
//! (`redis+sentinel://[:password@]host:port[,host:port...]/<primary>[/<db>]`:
//! the sentinels' addresses, the name they monitor, and the password and
//! database of the data nodes; the sentinels themselves without a password).
//! With Sentinel, every new connection asks the sentinels for the primary
//! first, so after a failover the store reconnects to the new one (whose
//! `run_id`, and so the store epoch, is another). Every connection holder
//! also hears Sentinel announce a failover ([`Target::switches`],
//! [`super::switches`]) and leaves the old primary at once, rather than
//! writing there until Sentinel demotes it.
//!
//! A Redis Cluster (`redis+cluster://[user:password@]host:port[,host:port...]`:
//! a few of its nodes, as seeds) works the same way: every key Tandem
//! keeps holds the namespace's hash tag (`{tandem}:`), so it all lives in
//! one hash slot, and every new connection asks a seed which primary serves
//! that slot now (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`) and talks to it alone.
//! A primary that lost the slot answers `MOVED` (after a failover or a
//! resharding), and the connection is made again to the new one. So a
//! Redis Cluster gives Tandem its failover, not more capacity: one shard
//! carries it all.

use std::sync::OnceLock;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, RedisConnectionInfo};
use tokio::sync::watch;

use super::switches::{Announced, Switches};

use super::driver::RESPONSE_TIMEOUT;
use crate::store::StoreError;

/// The URL scheme of a Sentinel-managed primary.
pub(super) const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// The URL scheme of a Redis Cluster, by some of its nodes.
pub(super) const CLUSTER_SCHEME: &str = "redis+cluster://";

/// A Redis server, or the way to find the current one.
pub(crate) enum Target {
    /// One server.
    Direct(Client),
    /// The primary that Sentinel names now.
    Sentinel(Box<SentinelTarget>),
    /// The primary of a Redis Cluster that serves the namespace's slot now.
    Cluster(Box<ClusterSeeds>),
}

/// How to ask Sentinel for the primary, and hear it change.
pub(crate) struct SentinelTarget {
    client: SentinelClient,
    /// The sentinels' `redis://host:port` URLs.
    sentinels: Vec<String>,
    /// The name they monitor.
    name: String,
    /// Started by the first [`Target::switches`].
    switches: OnceLock<Switches>,
}

/// How to find the primary of the namespace's slot in a Redis Cluster.
pub(crate) struct ClusterSeeds {
    /// The nodes the URL names.
    seeds: Vec<(String, Client)>,
    /// `user:password@` as the URL gave it (empty: none), for the primary.
    auth: String,
    /// A key in the namespace (its hash tag decides the slot).
    key: String,
}

fn bad(url: &str, why: &str) -> StoreError {
    // The URL may hold a password: not repeated.
    let scheme = url.split("://").next().unwrap_or_default();
    StoreError::Backend(format!("redis: bad {scheme}:// URL: {why}"))
}

impl Target {
    /// Parse `url`, for keys under `namespace` (the store's, with its hash
    /// tag: a Redis Cluster is asked for the primary of its slot).
    pub(crate) fn parse(url: &str, namespace: &str) -> Result<Self, StoreError> {
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return Self::parse_cluster(url, rest, namespace);
        }
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            return Client::open(url)
                .map(Target::Direct)
                .map_err(|e| StoreError::Backend(format!("redis: {e}")));
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| bad(url, "no primary name"))?;
        let mut path = path.split('/');
        let name = path.next().filter(|n| !n.is_empty()).ok_or_else(|| bad(url, "no name"))?;
        let db = match path.next() {
            Some(db) if !db.is_empty() => db.parse::<i64>().map_err(|_| bad(url, "bad db"))?,
            _ => 0,
        };
        let sentinels: Vec<String> =
            hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("redis://{h}")).collect();
        if sentinels.is_empty() {
            return Err(bad(url, "no sentinel address"));
        }
        let mut info = RedisConnectionInfo::default().set_db(db);
        if let Some(auth) = auth {
            let (user, password) = auth.split_once(':').unwrap_or(("", auth));
            if !user.is_empty() {
                info = info.set_username(user);
            }
            if !password.is_empty() {
                info = info.set_password(password);
            }
        }
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
        let client = SentinelClient::build(
            sentinels.clone(),
            name.to_owned(),
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(|e| bad(url, &e.to_string()))?;
        Ok(Target::Sentinel(Box::new(SentinelTarget {
            client,
            sentinels,
            name: name.to_owned(),
            switches: OnceLock::new(),
        })))
    }

    fn parse_cluster(url: &str, rest: &str, namespace: &str) -> Result<Self, StoreError> {
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
        if hosts.contains('/') {
            return Err(bad(url, "a Redis Cluster has no database number or name"));
        }
        let mut seeds = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let client = Client::open(format!("redis://{auth}{h}"))
                .map_err(|e| bad(url, &format!("seed {h}: {:?}", e.kind())))?;
            seeds.push((h.to_owned(), client));
        }
        if seeds.is_empty() {
            return Err(bad(url, "no cluster node address"));
        }
        let key = format!("{namespace}slot");
        Ok(Target::Cluster(Box::new(ClusterSeeds { seeds, auth, key })))
    }

    /// The client of the server to connect to now.
    pub(crate) async fn client(&mut self) -> Result<Client, StoreError> {
        match self {
            Target::Direct(c) => Ok(c.clone()),
            Target::Sentinel(s) => {
                tokio::time::timeout(RESPONSE_TIMEOUT, s.client.async_get_client())
                    .await
                    .map_err(|_| StoreError::Unavailable("redis: no sentinel answered".into()))?
                    .map_err(|e| StoreError::Unavailable(format!("redis sentinel: {e}")))
            }
            Target::Cluster(c) => c.primary().await,
        }
    }

    /// With Sentinel, the primary it announced last (`None` until a
    /// failover is heard): a connection to another address is to be made
    /// again. The first call starts listening (on the current tokio
    /// runtime; none outside one). Other targets: `None`.
    pub(crate) fn switches(&self) -> Option<watch::Receiver<Option<Announced>>> {
        let Target::Sentinel(s) = self else { return None };
        tokio::runtime::Handle::try_current().ok()?;
        Some(s.switches.get_or_init(|| Switches::start(&s.sentinels, &s.name)).watch())
    }
}

impl ClusterSeeds {
    /// The primary that serves the namespace's slot, as the first seed
    /// that answers says.
    async fn primary(&self) -> Result<Client, StoreError> {
        let mut why = String::new();
        for (host, seed) in &self.seeds {
            let asked = tokio::time::timeout(RESPONSE_TIMEOUT, async {
                let mut c = seed.get_multiplexed_async_connection().await?;
                let slot: i64 =
                    redis::cmd("CLUSTER").arg("KEYSLOT").arg(&self.key).query_async(&mut c).await?;
                let slots: Vec<Vec<redis::Value>> =
                    redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await?;
                Ok::<_, redis::RedisError>((slot, slots))
            })
            .await;
            let (slot, slots) = match asked {
                Ok(Ok(got)) => got,
                Ok(Err(e)) => {
                    why = format!("{host}: {e}");
                    continue;
                }
                Err(_) => {
                    why = format!("{host}: no answer");
                    continue;
                }
            };
            let Some((ip, port)) = serving(&slots, slot) else {
                why = format!("{host}: no primary serves slot {slot}");
                continue;
            };
            // An empty address is the node that answered.
            let ip = if ip.is_empty() {
                host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h).to_owned()
            } else if ip.contains(':') && !ip.starts_with('[') {
                format!("[{ip}]")
            } else {
                ip
            };
            return Client::open(format!("redis://{}{ip}:{port}", self.auth))
                .map_err(|e| StoreError::Unavailable(format!("redis cluster: {:?}", e.kind())));
        }
        Err(StoreError::Unavailable(format!("redis cluster: no seed named a primary ({why})")))
    }
}

/// The primary's address in a `CLUSTER SLOTS` answer for `slot`.
fn serving(slots: &[Vec<redis::Value>], slot: i64) -> Option<(String, i64)> {
    slots.iter().find_map(|range| {
        let start: i64 = redis::from_redis_value(range.first()?.clone()).ok()?;
        let end: i64 = redis::from_redis_value(range.get(1)?.clone()).ok()?;
        if !(start..=end).contains(&slot) {
            return None;
        }
        let node: Vec<redis::Value> = redis::from_redis_value(range.get(2)?.clone()).ok()?;
        let ip: String = redis::from_redis_value(node.first()?.clone()).ok()?;
        let port: i64 = redis::from_redis_value(node.get(1)?.clone()).ok()?;
        Some((ip, port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_bad_ones_refused() {
        let parse = |url| Target::parse(url, "{t}:");
        assert!(matches!(parse("redis://127.0.0.1:1"), Ok(Target::Direct(_))));
        let ok = ["redis+sentinel://a:1,b:2/main", "redis+sentinel://:pw@a:1/main/3"];
        for url in ok {
            assert!(matches!(parse(url), Ok(Target::Sentinel(_))), "{url}");
        }
        for url in ["redis+cluster://a:1,b:2", "redis+cluster://u:pw@a:1/"] {
            assert!(matches!(parse(url), Ok(Target::Cluster(_))), "{url}");
        }
        let refused = [
            "redis+sentinel://a:1",
            "redis+sentinel:///main",
            "redis+sentinel://a:1/m/x",
            "redis+cluster://",
            "redis+cluster://a:1/3",
        ];
        for url in refused {
            assert!(matches!(parse(url), Err(StoreError::Backend(_))), "{url}");
        }
        for url in ["redis+sentinel://:secret@a:1/m/x", "redis+cluster://:secret@a:1/2"] {
            let Err(StoreError::Backend(e)) = parse(url) else { panic!("accepted") };
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
