//! Connection admission: how many connections may be open before they
//! authenticate (in all, and per client address) and after (per client
//! address), and the slots that hold each count until the connection is
//! gone or moves on.
//!
//! A connection takes an [`Unauthenticated`] slot when it is accepted (or,
//! behind a proxy that names the client in `X-Forwarded-For`, its per-address
//! part when the request arrives) and keeps it through TLS, HTTP and the
//! WebSocket handshake; at `AuthOk` it trades it for a per-address [`Slot`]
//! of authenticated connections. So connections that never authenticate
//! cannot take the places of devices that do, and no single address (IPv6:
//! prefix) holds more than its share of either kind.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::OwnedSemaphorePermit;

use crate::config::Config;
use crate::net::IpKey;
use crate::registry::lock;

/// Open connections per key, each held by a [`Slot`].
#[derive(Debug)]
pub(crate) struct Counts<K> {
    map: Arc<Mutex<HashMap<K, usize>>>,
    cap: usize,
}

/// One counted connection; the count goes down when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot<K: Hash + Eq + Copy> {
    map: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Copy> Counts<K> {
    pub(crate) fn new(cap: usize) -> Self {
        Self { map: Arc::new(Mutex::new(HashMap::new())), cap }
    }

    /// A slot for `key`, unless it already holds `cap`.
    pub(crate) fn try_take(&self, key: K) -> Option<Slot<K>> {
        let mut map = lock(&self.map);
        let n = map.entry(key).or_insert(0);
        if *n >= self.cap {
            if *n == 0 {
                map.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Slot { map: Arc::clone(&self.map), key })
    }

    /// How many `key` holds.
    #[cfg(test)]
    pub(crate) fn count(&self, key: K) -> usize {
        lock(&self.map).get(&key).copied().unwrap_or(0)
    }

    /// Keys holding at least one slot (bounded memory: empty keys are removed).
    #[cfg(test)]
    pub(crate) fn keys(&self) -> usize {
        lock(&self.map).len()
    }
}

impl<K: Hash + Eq + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Which admission limit refused a connection (the `limit` label of the
/// `limit_refusals` metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_unauthenticated`.
    Unauthenticated,
    /// `max_unauthenticated_per_ip`.
    UnauthenticatedPerIp,
    /// `max_connections_per_ip`.
    ConnectionsPerIp,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::UnauthenticatedPerIp => "unauthenticated_per_ip",
            Refusal::ConnectionsPerIp => "connections_per_ip",
        }
    }
}

/// A connection that has not authenticated yet: it counts against
/// `max_unauthenticated` and (once its address is known) against
/// `max_unauthenticated_per_ip` until it is dropped.
#[derive(Debug)]
pub(crate) struct Unauthenticated {
    _total: Slot<()>,
    ip: Option<Slot<IpKey>>,
    gauge: Gauge,
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The relay's connection counts.
#[derive(Debug)]
pub(crate) struct Admission {
    total: Counts<()>,
    per_ip: Counts<IpKey>,
    live_per_ip: Counts<IpKey>,
    /// Connections not authenticated yet (exported as a gauge).
    pub(crate) gauge: Gauge,
}

impl Admission {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            total: Counts::new(config.max_unauthenticated),
            per_ip: Counts::new(config.max_unauthenticated_per_ip),
            live_per_ip: Counts::new(config.max_connections_per_ip),
            gauge: Gauge::default(),
        }
    }

    /// Admit a new connection from `ip` (`None`: not known until the
    /// request arrives; then [`Self::add_ip`]).
    pub(crate) fn unauthenticated(&self, ip: Option<IpKey>) -> Result<Unauthenticated, Refusal> {
        let total = self.total.try_take(()).ok_or(Refusal::Unauthenticated)?;
        let ip = match ip {
            Some(key) => Some(self.per_ip.try_take(key).ok_or(Refusal::UnauthenticatedPerIp)?),
            None => None,
        };
        self.gauge.inc();
        Ok(Unauthenticated { _total: total, ip, gauge: self.gauge.clone() })
    }

    /// Count `u` against `ip` too (it had no address yet); a no-op if it has one.
    pub(crate) fn add_ip(&self, u: &mut Unauthenticated, ip: IpKey) -> Result<(), Refusal> {
        if u.ip.is_none() {
            u.ip = Some(self.per_ip.try_take(ip).ok_or(Refusal::UnauthenticatedPerIp)?);
        }
        Ok(())
    }

    /// A slot for an authenticated connection from `ip`, unless it holds
    /// `max_connections_per_ip` (a connection that replaces the same
    /// device's from the same address takes over that one's [`Places`]
    /// instead).
    pub(crate) fn authenticated(&self, ip: IpKey) -> Result<Slot<IpKey>, Refusal> {
        self.live_per_ip.try_take(ip).ok_or(Refusal::ConnectionsPerIp)
    }
}

/// What an authenticated connection holds until it is gone: its place among
/// all connections (`max_connections`) and among those from its address
/// (`max_connections_per_ip`). A newer connection of the same device from
/// the same address takes them over from the one it replaces, which may
/// take `write_timeout` to go (a device that does not read): so a device
/// that reconnects again and again still holds one place, not one per
/// connection on its way out.
#[derive(Debug)]
pub(crate) struct Places {
    pub(crate) _all: OwnedSemaphorePermit,
    pub(crate) _address: Slot<IpKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_per_key_up_to_the_cap_and_free_on_drop() {
        let c = Counts::new(2);
        let a1 = c.try_take(1u8).unwrap();
        let a2 = c.try_take(1u8).unwrap();
        assert!(c.try_take(1u8).is_none(), "a third slot for one key");
        let b = c.try_take(2u8).unwrap();
        assert_eq!((c.count(1), c.count(2)), (2, 1));
        drop(a1);
        let a3 = c.try_take(1u8).unwrap();
        assert_eq!(c.count(1), 2);
        drop((a2, a3, b));
        assert_eq!(c.keys(), 0, "empty keys are forgotten");
        let zero = Counts::new(0);
        assert!(zero.try_take(1u8).is_none());
        assert_eq!(zero.keys(), 0);
    }

    #[test]
    fn unauthenticated_connections_count_in_all_and_per_address() {
        let mut config = Config::new("unused".into());
        config.max_unauthenticated = 3;
        config.max_unauthenticated_per_ip = 2;
        let a = Admission::new(&config);
        let ip = |n: u8| IpKey::new(std::net::IpAddr::from([127, 0, 0, n]), 64);
        let x1 = a.unauthenticated(Some(ip(1))).unwrap();
        let x2 = a.unauthenticated(Some(ip(1))).unwrap();
        assert_eq!(a.unauthenticated(Some(ip(1))).unwrap_err(), Refusal::UnauthenticatedPerIp);
        let mut y = a.unauthenticated(None).unwrap();
        assert_eq!(a.unauthenticated(Some(ip(2))).unwrap_err(), Refusal::Unauthenticated);
        assert_eq!(a.add_ip(&mut y, ip(1)).unwrap_err(), Refusal::UnauthenticatedPerIp);
        a.add_ip(&mut y, ip(2)).unwrap();
        assert_eq!(a.gauge.get(), 3);
        drop((x1, x2, y));
        assert_eq!(a.gauge.get(), 0);
        assert!(a.unauthenticated(Some(ip(1))).is_ok());
    }
}
