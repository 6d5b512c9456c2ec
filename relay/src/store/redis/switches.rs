//! Sentinel's failover announcements, heard as they happen.
//!
//! After a failover the old primary goes on taking writes until Sentinel
//! turns it into a replica (about ten seconds later with Sentinel's
//! defaults), and whatever it took meanwhile is discarded by its resync. A
//! connection that waited for the old primary's `READONLY` would write
//! there all that time. So every sentinel the URL names is subscribed to
//! on `+switch-master` (Sentinel publishes it when the promotion is done:
//! `<name> <old-ip> <old-port> <new-ip> <new-port>`), and the new primary's
//! address for the monitored name is handed to every connection holder
//! ([`Switches::watch`]); a holder whose connection was made before the
//! announcement, to another address, drops it and asks Sentinel again
//! ([`left_behind`]). Several sentinels tell the same switch: only a
//! change of address is passed on.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

/// How long subscribing, then each liveness ping, may take.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How often a subscription is pinged (one cut without a reset shows).
const PING: Duration = Duration::from_secs(2);
/// The longest wait before subscribing again to a sentinel.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A primary's address as Sentinel names it.
pub(crate) type Addr = (String, u16);

/// The latest announcement: the primary it named and its number (every
/// announcement counts, also one naming the address named before: a
/// connection made in between to a stale primary is left at the next one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Announced {
    /// The new primary.
    pub(crate) addr: Addr,
    /// Announcements heard so far (from 1).
    pub(crate) seq: u64,
}

/// The newest primary announced for one monitored name.
pub(crate) struct Switches {
    tx: Arc<watch::Sender<Option<Announced>>>,
}

impl Switches {
    /// Start listening to `sentinels` (`redis://host:port` URLs) for
    /// failovers of `name`, on the current tokio runtime. The listeners end
    /// once [`Switches`] is dropped.
    pub(crate) fn start(sentinels: &[String], name: &str) -> Self {
        let tx = Arc::new(watch::channel(None).0);
        for url in sentinels {
            tokio::spawn(listen(url.clone(), name.to_owned(), Arc::downgrade(&tx)));
        }
        Self { tx }
    }

    /// The newest announcement (`None` until a failover is heard).
    pub(crate) fn watch(&self) -> watch::Receiver<Option<Announced>> {
        self.tx.subscribe()
    }
}

/// The new primary's address in a `+switch-master` payload for `name`.
pub(crate) fn parse(payload: &str, name: &str) -> Option<Addr> {
    let mut words = payload.split_whitespace();
    if words.next()? != name {
        return None;
    }
    let (_old_ip, _old_port, ip, port) =
        (words.next()?, words.next()?, words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    Some((ip.to_owned(), port.parse().ok()?))
}

/// Whether a connection to `addr`, made when `then` was the latest
/// announcement, is to be left now that `now` is: an announcement came
/// since (whichever address it repeats), naming another address than the
/// connection's. An announcement from before the connection is not held
/// against it: the connection asked Sentinel after it, and a failover back
/// that was missed must not drop every new connection to the true primary.
pub(crate) fn left_behind(
    now: Option<&Announced>,
    then: Option<&Announced>,
    addr: &redis::ConnectionAddr,
) -> bool {
    let Some(Announced { addr: (ip, port), seq }) = now else { return false };
    if then.is_some_and(|t| t.seq == *seq) {
        return false;
    }
    match addr {
        redis::ConnectionAddr::Tcp(host, p)
        | redis::ConnectionAddr::TcpTls { host, port: p, .. } => host != ip || p != port,
        // A socket path (or a kind of address added later) is never what
        // Sentinel announces.
        _ => false,
    }
}

/// The next failover announced on `rx` (never when there is none: no
/// Sentinel; an error once its listener is gone).
pub(crate) async fn switched(
    rx: &mut Option<watch::Receiver<Option<Announced>>>,
) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// Subscribe to one sentinel, again and again, until nobody listens.
async fn listen(url: String, name: String, tx: Weak<watch::Sender<Option<Announced>>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.strong_count() == 0 {
            return;
        }
        match subscribe(&url).await {
            Ok((mut sink, mut stream)) => {
                backoff = Duration::from_millis(100);
                tracing::debug!(sentinel = %url, "subscribed to +switch-master");
                let mut ping = tokio::time::interval(PING);
                loop {
                    tokio::select! {
                        msg = stream.next() => {
                            let Some(msg) = msg else { break };
                            let Ok(payload) = msg.get_payload::<String>() else { continue };
                            let Some(addr) = parse(&payload, &name) else { continue };
                            let Some(tx) = tx.upgrade() else { return };
                            // Every announcement counts (several sentinels
                            // repeat one switch: a holder already on the
                            // address named stays).
                            let mut moved = true;
                            tx.send_modify(|now| {
                                moved = now.as_ref().is_none_or(|n| n.addr != addr);
                                let seq = now.as_ref().map_or(1, |n| n.seq + 1);
                                *now = Some(Announced { addr: addr.clone(), seq });
                            });
                            if moved {
                                tracing::warn!(
                                    primary = %format!("{}:{}", addr.0, addr.1),
                                    "sentinel announced a failover; reconnecting to the new primary"
                                );
                            }
                        }
                        _ = ping.tick() => {
                            if tx.strong_count() == 0 {
                                return;
                            }
                            let alive = timeout(TIMEOUT, sink.ping::<redis::Value>()).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                tracing::debug!(sentinel = %url, "lost the +switch-master subscription");
            }
            Err(e) => {
                tracing::debug!(sentinel = %url, error = %e, "cannot subscribe to a sentinel")
            }
        }
        if tx.strong_count() == 0 {
            return;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(
    url: &str,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), redis::RedisError> {
    let connect = async {
        let mut pubsub = redis::Client::open(url)?.get_async_pubsub().await?;
        pubsub.subscribe("+switch-master").await?;
        Ok(pubsub.split())
    };
    match timeout(TIMEOUT, connect).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribing to a sentinel took too long",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_of_the_name_gives_the_new_address() {
        let got = parse("main 127.0.0.1 6379 127.0.0.1 6380", "main");
        assert_eq!(got, Some(("127.0.0.1".into(), 6380)));
        for other in [
            "other 127.0.0.1 6379 127.0.0.1 6380",
            "main 127.0.0.1 6379 127.0.0.1",
            "main 127.0.0.1 6379 127.0.0.1 port",
            "main 127.0.0.1 6379 127.0.0.1 6380 extra",
            "",
        ] {
            assert_eq!(parse(other, "main"), None, "{other:?}");
        }
    }

    #[test]
    fn only_a_connection_made_before_a_switch_elsewhere_is_left_behind() {
        let at = |h: &str, p| redis::ConnectionAddr::Tcp(h.into(), p);
        let told = |h: &str, p, seq| Announced { addr: (h.to_owned(), p), seq };
        let (first, again) = (told("10.0.0.2", 6380, 1), told("10.0.0.2", 6380, 2));
        let left = |now, then, addr| left_behind(now, then, &addr);
        assert!(!left(None, None, at("10.0.0.1", 6379)), "nothing announced yet");
        assert!(left(Some(&first), None, at("10.0.0.1", 6379)));
        assert!(left(Some(&first), None, at("10.0.0.2", 6379)), "another port");
        assert!(!left(Some(&first), None, at("10.0.0.2", 6380)), "already on the new primary");
        assert!(
            !left(Some(&first), Some(&first), at("10.0.0.1", 6379)),
            "made after the announcement (a failover back that was missed): kept"
        );
        assert!(
            left(Some(&again), Some(&first), at("10.0.0.1", 6379)),
            "the same switch announced again (a lagging sentinel) leaves a stale primary"
        );
    }

    /// Review: every announcement made after a connection reaches its
    /// holder, also one naming the address announced last. A sentinel that
    /// had not heard of a failover yet (the first one asked, cut off from
    /// the others) names the old primary, still a primary, to a connection
    /// made just after another sentinel announced the switch; when it
    /// learns of the switch it announces it too, and that announcement must
    /// leave the connection. Here it is swallowed (only a change of address
    /// is passed on), and the store keeps writing to the demoted primary.
    /// A plain `redis-server` stands in for the sentinels (one may PUBLISH
    /// on it).
    #[tokio::test]
    async fn a_late_announcement_of_the_same_switch_leaves_a_connection_made_before_it() {
        use crate::store::tests::redis_server::RedisServer;
        let sentinel = RedisServer::start();
        let switches = Switches::start(&[sentinel.url()], "main");
        let mut rx = switches.watch();
        // Published until the listener hears it (it subscribes meanwhile).
        async fn announce(sentinel: &RedisServer, payload: &str) {
            for _ in 0..100 {
                let said = sentinel.call(&[b"PUBLISH", b"+switch-master", payload.as_bytes()]);
                if said.as_deref().is_some_and(|s| s.starts_with(":1")) {
                    return;
                }
                sleep(Duration::from_millis(50)).await;
            }
            panic!("nobody subscribed to +switch-master");
        }
        announce(&sentinel, "main 10.0.0.1 6379 10.0.0.2 6379").await;
        timeout(Duration::from_secs(2), rx.changed()).await.unwrap().unwrap();
        // A connection made now, to the old primary (a lagging sentinel's
        // answer): kept, as the switch was announced before it.
        let then = rx.borrow_and_update().clone();
        let old = redis::ConnectionAddr::Tcp("10.0.0.1".into(), 6379);
        assert!(!left_behind(rx.borrow().as_ref(), then.as_ref(), &old));
        // The lagging sentinel announces the switch.
        announce(&sentinel, "main 10.0.0.1 6379 10.0.0.2 6379").await;
        let told = timeout(Duration::from_secs(2), rx.changed()).await.is_ok();
        assert!(
            told && left_behind(rx.borrow().as_ref(), then.as_ref(), &old),
            "a switch announced after the connection did not leave the old primary"
        );
    }
}
