//! Where the store finds its Redis server: one address (`redis://`,
//! `unix://`), or the primary that Sentinel names
//! (`redis+sentinel://[:password@]host:port[,host:port...]/<primary>[/<db>]`:
//! the sentinels' addresses, the name they monitor, and the password and
//! database of the data nodes; the sentinels themselves without a password).
//! With Sentinel, every new connection asks the sentinels for the primary
//! first, so after a failover the store reconnects to the new one (whose
//! `run_id`, and so the store epoch, is another).

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, RedisConnectionInfo};

use super::driver::RESPONSE_TIMEOUT;
use crate::store::StoreError;

/// The URL scheme of a Sentinel-managed primary.
pub(super) const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// A Redis server, or the way to find the current one.
pub(crate) enum Target {
    /// One server.
    Direct(Client),
    /// The primary that Sentinel names now.
    Sentinel(Box<SentinelClient>),
}

fn bad(url: &str, why: &str) -> StoreError {
    // The URL may hold a password: not repeated.
    let scheme = url.split("://").next().unwrap_or_default();
    StoreError::Backend(format!("redis: bad {scheme}:// URL: {why}"))
}

impl Target {
    /// Parse `url`.
    pub(crate) fn parse(url: &str) -> Result<Self, StoreError> {
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
        SentinelClient::build(sentinels, name.to_owned(), Some(node), SentinelServerType::Master)
            .map(|c| Target::Sentinel(Box::new(c)))
            .map_err(|e| bad(url, &e.to_string()))
    }

    /// The client of the server to connect to now.
    pub(crate) async fn client(&mut self) -> Result<Client, StoreError> {
        match self {
            Target::Direct(c) => Ok(c.clone()),
            Target::Sentinel(s) => tokio::time::timeout(RESPONSE_TIMEOUT, s.async_get_client())
                .await
                .map_err(|_| StoreError::Unavailable("redis: no sentinel answered".into()))?
                .map_err(|e| StoreError::Unavailable(format!("redis sentinel: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_and_bad_ones_refused() {
        assert!(matches!(Target::parse("redis://127.0.0.1:1"), Ok(Target::Direct(_))));
        let ok = ["redis+sentinel://a:1,b:2/main", "redis+sentinel://:pw@a:1/main/3"];
        for url in ok {
            assert!(matches!(Target::parse(url), Ok(Target::Sentinel(_))), "{url}");
        }
        for url in ["redis+sentinel://a:1", "redis+sentinel:///main", "redis+sentinel://a:1/m/x"] {
            assert!(matches!(Target::parse(url), Err(StoreError::Backend(_))), "{url}");
        }
        let Err(StoreError::Backend(e)) = Target::parse("redis+sentinel://:secret@a:1/m/x") else {
            panic!("accepted");
        };
        assert!(!e.contains("secret"), "{e}");
    }
}
