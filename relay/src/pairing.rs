//! Pairing rendezvous: one-time mailboxes keyed by the pairing id (derived
//! from the QR secret, which the relay never sees). A desktop opens one;
//! the first device to claim it wins; messages then pass only between those
//! two; it is closed by its desktop, when the connection that opened it
//! goes away, or when its TTL passes (capped by config). Open mailboxes are
//! limited per desktop, per opening address and in all, so one address
//! cannot take every mailbox the relay keeps.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tandem_proto::{DeviceId, ErrorCode};
use tokio::time::Instant;

use crate::net::IpKey;
use crate::registry::lock;

/// Who opened a mailbox: the desktop, on which connection, from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) desktop: DeviceId,
    pub(crate) conn_id: u64,
    pub(crate) ip: IpKey,
}

#[derive(Debug, Clone, Copy)]
struct Mailbox {
    owner: Owner,
    expires: Instant,
    claimed_by: Option<DeviceId>,
}

/// Most mailboxes one desktop may have open (it shows one QR code at a time).
const MAX_MAILBOXES_PER_DESKTOP: usize = 8;

/// Why a mailbox was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenRefused {
    /// The id is open already (`pairing_claimed`).
    InUse,
    /// The desktop has [`MAX_MAILBOXES_PER_DESKTOP`] open.
    PerDesktop,
    /// Its address has `max_mailboxes_per_ip` open.
    PerIp,
    /// The relay has `max_mailboxes` open.
    Total,
}

impl OpenRefused {
    /// The code the `PairOpen` is refused with.
    pub(crate) fn code(self) -> ErrorCode {
        match self {
            OpenRefused::InUse => ErrorCode::PairingClaimed,
            _ => ErrorCode::RateLimited,
        }
    }

    /// The limit that refused it (the metric's label), if one did.
    pub(crate) fn limit(self) -> Option<&'static str> {
        match self {
            OpenRefused::InUse => None,
            OpenRefused::PerDesktop => Some("mailboxes_per_desktop"),
            OpenRefused::PerIp => Some("mailboxes_per_ip"),
            OpenRefused::Total => Some("mailboxes"),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<[u8; 16], Mailbox>,
    per_desktop: HashMap<DeviceId, usize>,
    per_ip: HashMap<IpKey, usize>,
    /// When expired mailboxes were last dropped outside the sweep.
    purged: Option<Instant>,
}

impl Inner {
    fn insert(&mut self, id: [u8; 16], m: Mailbox) {
        *self.per_desktop.entry(m.owner.desktop).or_insert(0) += 1;
        *self.per_ip.entry(m.owner.ip).or_insert(0) += 1;
        if let Some(old) = self.map.insert(id, m) {
            self.uncount(&old);
        }
    }

    fn remove(&mut self, id: &[u8; 16]) -> Option<Mailbox> {
        let m = self.map.remove(id)?;
        self.uncount(&m);
        Some(m)
    }

    fn uncount(&mut self, m: &Mailbox) {
        fn down<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, k: &K) {
            if let Some(n) = map.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
        down(&mut self.per_desktop, &m.owner.desktop);
        down(&mut self.per_ip, &m.owner.ip);
    }

    /// Drop every mailbox `keep` says no to; returns how many.
    fn drop_where(&mut self, mut gone: impl FnMut(&Mailbox) -> bool) -> usize {
        let ids: Vec<[u8; 16]> =
            self.map.iter().filter(|(_, m)| gone(m)).map(|(id, _)| *id).collect();
        for id in &ids {
            self.remove(id);
        }
        ids.len()
    }

    fn refusal(&self, owner: &Owner, max: usize, per_ip: usize) -> Option<OpenRefused> {
        let count = |n: Option<&usize>| n.copied().unwrap_or(0);
        if count(self.per_desktop.get(&owner.desktop)) >= MAX_MAILBOXES_PER_DESKTOP {
            Some(OpenRefused::PerDesktop)
        } else if count(self.per_ip.get(&owner.ip)) >= per_ip {
            Some(OpenRefused::PerIp)
        } else if self.map.len() >= max {
            Some(OpenRefused::Total)
        } else {
            None
        }
    }
}

/// All open mailboxes, counted per desktop and per opening address.
#[derive(Debug)]
pub(crate) struct Mailboxes {
    inner: Mutex<Inner>,
    max: usize,
    max_per_ip: usize,
}

/// Where a pairing message goes.
pub(crate) type Route = DeviceId;

impl Mailboxes {
    /// At most `max` mailboxes, `max_per_ip` of them opened from one address.
    pub(crate) fn new(max: usize, max_per_ip: usize) -> Self {
        Self { inner: Mutex::new(Inner::default()), max, max_per_ip }
    }

    /// Open a mailbox; an id that is already open is refused (codes are
    /// rotated with fresh secrets, so an id is never legitimately reused).
    pub(crate) fn open(
        &self,
        id: [u8; 16],
        owner: Owner,
        ttl: Duration,
    ) -> Result<(), OpenRefused> {
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        if inner.map.get(&id).is_some_and(|m| m.expires > now) {
            return Err(OpenRefused::InUse);
        }
        if inner.refusal(&owner, self.max, self.max_per_ip).is_some()
            && inner.purged.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            // Expired ones the sweep has not reached yet do not count.
            inner.purged = Some(now);
            inner.drop_where(|m| m.expires <= now);
        }
        if let Some(refused) = inner.refusal(&owner, self.max, self.max_per_ip) {
            return Err(refused);
        }
        inner.insert(id, Mailbox { owner, expires: now + ttl, claimed_by: None });
        Ok(())
    }

    /// Claim a mailbox; returns the desktop to forward the claim to.
    pub(crate) fn claim(&self, id: [u8; 16], claimer: DeviceId) -> Result<Route, ErrorCode> {
        let mut inner = lock(&self.inner);
        let m = inner.map.get_mut(&id).ok_or(ErrorCode::PairingNotFound)?;
        if m.expires <= Instant::now() {
            inner.remove(&id);
            return Err(ErrorCode::PairingExpired);
        }
        if m.owner.desktop == claimer {
            return Err(ErrorCode::UnexpectedFrame);
        }
        // First claim wins; every later claim is refused, even from the same device.
        if m.claimed_by.is_some() {
            return Err(ErrorCode::PairingClaimed);
        }
        m.claimed_by = Some(claimer);
        Ok(m.owner.desktop)
    }

    /// Undo a claim that could not be forwarded (the desktop was offline).
    pub(crate) fn unclaim(&self, id: [u8; 16], claimer: DeviceId) {
        if let Some(m) = lock(&self.inner).map.get_mut(&id)
            && m.claimed_by == Some(claimer)
        {
            m.claimed_by = None;
        }
    }

    /// Check a message from `from` to `to` in mailbox `id`.
    pub(crate) fn route(
        &self,
        id: [u8; 16],
        from: DeviceId,
        to: DeviceId,
    ) -> Result<Route, ErrorCode> {
        let inner = lock(&self.inner);
        let m = inner.map.get(&id).ok_or(ErrorCode::PairingNotFound)?;
        if m.expires <= Instant::now() {
            return Err(ErrorCode::PairingExpired);
        }
        let claimer = m.claimed_by.ok_or(ErrorCode::PairingNotFound)?;
        let desktop = m.owner.desktop;
        let ok = (from == desktop && to == claimer) || (from == claimer && to == desktop);
        if ok { Ok(to) } else { Err(ErrorCode::UnexpectedFrame) }
    }

    /// Close a mailbox; only its desktop may.
    pub(crate) fn close(&self, id: [u8; 16], by: DeviceId) -> Result<(), ErrorCode> {
        let mut inner = lock(&self.inner);
        match inner.map.get(&id) {
            Some(m) if m.owner.desktop == by => {
                inner.remove(&id);
                Ok(())
            }
            Some(_) => Err(ErrorCode::UnexpectedFrame),
            None => Err(ErrorCode::PairingNotFound),
        }
    }

    /// Close every mailbox `desktop` opened on connection `conn_id` (it went
    /// away); returns their ids.
    pub(crate) fn close_all(&self, desktop: DeviceId, conn_id: u64) -> Vec<[u8; 16]> {
        let mut inner = lock(&self.inner);
        if !inner.per_desktop.contains_key(&desktop) {
            return Vec::new();
        }
        let ids: Vec<[u8; 16]> = inner
            .map
            .iter()
            .filter(|(_, m)| m.owner.desktop == desktop && m.owner.conn_id == conn_id)
            .map(|(id, _)| *id)
            .collect();
        inner.drop_where(|m| m.owner.desktop == desktop && m.owner.conn_id == conn_id);
        ids
    }

    /// The open mailboxes nobody claimed yet, with their desktops.
    pub(crate) fn unclaimed(&self) -> Vec<([u8; 16], DeviceId)> {
        let inner = lock(&self.inner);
        let now = Instant::now();
        inner
            .map
            .iter()
            .filter(|(_, m)| m.claimed_by.is_none() && m.expires > now)
            .map(|(id, m)| (*id, m.owner.desktop))
            .collect()
    }

    /// Whether `desktop` has a mailbox open on connection `conn_id`.
    pub(crate) fn has_open(&self, desktop: DeviceId, conn_id: u64) -> bool {
        let inner = lock(&self.inner);
        let now = Instant::now();
        inner.per_desktop.contains_key(&desktop)
            && inner.map.values().any(|m| {
                m.owner.desktop == desktop && m.owner.conn_id == conn_id && m.expires > now
            })
    }

    /// Drop expired mailboxes; returns how many.
    pub(crate) fn sweep(&self) -> usize {
        let now = Instant::now();
        lock(&self.inner).drop_where(|m| m.expires <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: DeviceId = DeviceId([1; 16]);
    const P: DeviceId = DeviceId([2; 16]);
    const X: DeviceId = DeviceId([3; 16]);

    fn owner(desktop: DeviceId, conn_id: u64, ip: u8) -> Owner {
        Owner { desktop, conn_id, ip: IpKey::new(std::net::IpAddr::from([127, 0, 0, ip]), 64) }
    }

    const TTL: Duration = Duration::from_secs(120);

    #[tokio::test(start_paused = true)]
    async fn first_claim_wins_and_mailboxes_expire() {
        let m = Mailboxes::new(100, 10);
        let d = owner(D, 1, 1);
        assert_eq!(m.claim([9; 16], P), Err(ErrorCode::PairingNotFound));
        m.open([9; 16], d, TTL).unwrap();
        assert_eq!(m.open([9; 16], owner(X, 2, 2), TTL), Err(OpenRefused::InUse));
        assert_eq!(m.open([9; 16], d, TTL), Err(OpenRefused::InUse));
        assert_eq!(m.route([9; 16], D, P), Err(ErrorCode::PairingNotFound));
        assert_eq!(m.claim([9; 16], P), Ok(D));
        assert_eq!(m.claim([9; 16], X), Err(ErrorCode::PairingClaimed));
        assert_eq!(m.claim([9; 16], P), Err(ErrorCode::PairingClaimed));
        assert_eq!(m.route([9; 16], D, P), Ok(P));
        assert_eq!(m.route([9; 16], P, D), Ok(D));
        assert_eq!(m.route([9; 16], X, D), Err(ErrorCode::UnexpectedFrame));
        assert_eq!(m.close([9; 16], P), Err(ErrorCode::UnexpectedFrame));
        tokio::time::advance(Duration::from_secs(121)).await;
        assert_eq!(m.route([9; 16], D, P), Err(ErrorCode::PairingExpired));
        assert_eq!(m.sweep(), 1);
        assert_eq!(m.claim([9; 16], P), Err(ErrorCode::PairingNotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn mailboxes_are_limited_per_desktop_per_address_and_in_all_and_go_with_their_connection()
    {
        let m = Mailboxes::new(20, 9);
        let ids = |base: u8, n: u8| (0..n).map(move |i| [base.wrapping_add(i); 16]);
        // One desktop: eight at most.
        for id in ids(10, 8) {
            m.open(id, owner(D, 1, 1), TTL).unwrap();
        }
        assert_eq!(m.open([30; 16], owner(D, 1, 1), TTL), Err(OpenRefused::PerDesktop));
        assert!(m.has_open(D, 1));
        assert!(!m.has_open(D, 2), "another connection of the same desktop");
        // Its connection went away: its mailboxes went with it.
        assert_eq!(m.close_all(D, 2).len(), 0);
        assert_eq!(m.close_all(D, 1).len(), 8);
        assert!(!m.has_open(D, 1));
        assert_eq!(m.claim([10; 16], P), Err(ErrorCode::PairingNotFound));
        // One address, many keys: nine at most.
        for (i, id) in ids(40, 9).enumerate() {
            let n = u8::try_from(i).unwrap_or(0);
            m.open(id, owner(DeviceId([100 + n; 16]), 10 + u64::from(n), 2), TTL).unwrap();
        }
        let key = DeviceId([120; 16]);
        assert_eq!(m.open([50; 16], owner(key, 20, 2), TTL), Err(OpenRefused::PerIp));
        // Other addresses share what is left of the total.
        for (i, id) in ids(60, 11).enumerate() {
            let ip = 3 + u8::try_from(i).unwrap_or(0);
            m.open(id, owner(DeviceId([ip; 16]), 30, ip), TTL).unwrap();
        }
        assert_eq!(m.open([80; 16], owner(X, 40, 20), TTL), Err(OpenRefused::Total));
        // Expired ones stop counting at once, before the sweep.
        tokio::time::advance(TTL + Duration::from_secs(1)).await;
        m.open([80; 16], owner(X, 40, 20), TTL).unwrap();
        assert_eq!(m.sweep(), 0, "the open already dropped the expired ones");
    }
}
