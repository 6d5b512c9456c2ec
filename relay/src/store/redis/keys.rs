//! The Redis key layout of [`super::RedisStore`], and the hex text device ids
//! and client addresses take in keys, fields and values.
//!
//! Every key starts with the namespace `{<prefix>}:` (the prefix without a
//! trailing `:`, in braces: a Redis Cluster hash tag, so every key of one
//! store hashes to one slot and the multi-key scripts could run there).
//! Device ids are 32 lowercase hex characters, client addresses
//! ([`AddrKey`]) 34; `<id>` below is a delivery id in decimal.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `epoch` | hash | `base`: the random base of the store epoch (`HSETNX` by the first node that connects); `next`: the last delivery id handed out, store-wide (`HINCRBY`; never deleted). One key, so the counter cannot go without the base (which changes the epoch) |
//! | `q:<to>` | stream | `to`'s queue: entries `<id>-0` with fields `f` (sender), `a` (address), `e` (expiry, unix s), `p` (payload); deleted when empty |
//! | `qb` | hash | `<to>` → payload bytes queued for `to` (present while its queue is) |
//! | `qexp` | sorted set | `<to>` scored by the expiry of its queue's head (the sweep's index) |
//! | `tot` | hash | `n` frames, `b` payload bytes in all queues, `p` one-sided authorisations |
//! | `ua` | hash | `<addr>` → bytes charged to frames from that address |
//! | `up` | hash | `<from><to>` → bytes charged to frames from `from` for `to` |
//! | `r:<by>` | hash | `<peer>` → `<since>:<addr>`: `by` authorised `peer` at `since` from `addr` |
//! | `pend` | sorted set | `<by><peer>` scored by `since`: the one-sided authorisations |
//! | `pa` | hash | `<addr>` → one-sided authorisations made from that address |
//! | `push` | hash | `<device>` → its push subscription (`kind ‖ data` of `PushSubscribe`) |
//!
//! The scripts build the names from the namespace they are given (`ARGV[1]`)
//! rather than declaring every key (a revocation or a sweep touches queues
//! it finds as it goes), so they run on one Redis server (or a primary with
//! replicas); on a Redis Cluster they would need the hash tag's slot to hold
//! every key, which it does, but that is untested.

use tandem_proto::DeviceId;

use crate::store::AddrKey;

/// The namespace of every key and channel for `prefix` (`tandem:` →
/// `{tandem}:`: a hash tag, so that all of them share one slot), the
/// store's and the cluster's alike.
pub(crate) fn namespace(prefix: &str) -> String {
    let bare = prefix.trim_end_matches(':');
    let bare = if bare.is_empty() { "tandem" } else { bare };
    format!("{{{bare}}}:")
}

/// The namespace of one store's keys.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `{prefix}:`.
    pub(super) ns: String,
}

impl Keys {
    /// The namespace for `prefix` (`tandem:` → `{tandem}:`).
    pub(super) fn new(prefix: &str) -> Self {
        Self { ns: namespace(prefix) }
    }

    /// The hash of the epoch base (`base`) and the id counter (`next`).
    pub(super) fn epoch(&self) -> String {
        format!("{}epoch", self.ns)
    }

    /// The push subscriptions (a hash by device).
    pub(super) fn push(&self) -> String {
        format!("{}push", self.ns)
    }

    /// `to`'s queue (a stream).
    pub(super) fn queue(&self, to: &DeviceId) -> String {
        format!("{}q:{}", self.ns, hex(&to.0))
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let digit = |n: u8| char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 });
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(b & 0xf));
    }
    s
}

/// The bytes of lowercase (or uppercase) hex text, if it is `N` bytes' worth.
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = match pair {
            [h, l] => (digit(*h)?, digit(*l)?),
            _ => return None,
        };
        *o = (hi << 4) | lo;
    }
    Some(out)
}

/// A device id as keys and fields hold it.
pub(super) fn dev(d: &DeviceId) -> String {
    hex(&d.0)
}

/// A device id from its hex text (`None`: not one).
pub(super) fn parse_dev(s: &[u8]) -> Option<DeviceId> {
    unhex::<16>(s).map(DeviceId)
}

/// A client address as fields hold it.
pub(super) fn addr(a: &AddrKey) -> String {
    hex(&a.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_garbage_is_refused() {
        let d = DeviceId([0xa5; 16]);
        assert_eq!(dev(&d).len(), 32);
        assert_eq!(parse_dev(dev(&d).as_bytes()), Some(d));
        assert_eq!(parse_dev(b"zz"), None);
        assert_eq!(parse_dev(&[b'g'; 32]), None);
        assert_eq!(addr(&AddrKey::UNKNOWN), "0".repeat(34));
        assert_eq!(Keys::new("tandem:").ns, "{tandem}:");
        assert_eq!(Keys::new("t7").epoch(), "{t7}:epoch");
    }
}
