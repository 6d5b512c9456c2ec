//! Pairing rendezvous: one-time mailboxes keyed by the pairing id (derived
//! from the QR secret, which the relay never sees). A desktop opens one;
//! the first device to claim it wins; messages then pass only between those
//! two; it expires after its TTL (default 2 minutes, capped by config).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tandem_proto::{DeviceId, ErrorCode};
use tokio::time::Instant;

use crate::registry::lock;

#[derive(Debug, Clone, Copy)]
struct Mailbox {
    desktop: DeviceId,
    expires: Instant,
    claimed_by: Option<DeviceId>,
}

/// Most mailboxes one desktop may have open (it shows one QR code at a time).
const MAX_MAILBOXES_PER_DESKTOP: usize = 8;
/// Most mailboxes the relay keeps.
const MAX_MAILBOXES: usize = 100_000;

/// All open mailboxes.
#[derive(Debug, Default)]
pub(crate) struct Mailboxes {
    map: Mutex<HashMap<[u8; 16], Mailbox>>,
}

/// Where a pairing message goes.
pub(crate) type Route = DeviceId;

impl Mailboxes {
    /// Open a mailbox; an id that is already open is refused (codes are
    /// rotated with fresh secrets, so an id is never legitimately reused).
    pub(crate) fn open(
        &self,
        id: [u8; 16],
        desktop: DeviceId,
        ttl: Duration,
    ) -> Result<(), ErrorCode> {
        let mut map = lock(&self.map);
        let now = Instant::now();
        if map.get(&id).is_some_and(|m| m.expires > now) {
            return Err(ErrorCode::PairingClaimed);
        }
        let open = map.values().filter(|m| m.desktop == desktop && m.expires > now).count();
        if open >= MAX_MAILBOXES_PER_DESKTOP || map.len() >= MAX_MAILBOXES {
            return Err(ErrorCode::RateLimited);
        }
        map.insert(id, Mailbox { desktop, expires: now + ttl, claimed_by: None });
        Ok(())
    }

    /// Claim a mailbox; returns the desktop to forward the claim to.
    pub(crate) fn claim(&self, id: [u8; 16], claimer: DeviceId) -> Result<Route, ErrorCode> {
        let mut map = lock(&self.map);
        let m = map.get_mut(&id).ok_or(ErrorCode::PairingNotFound)?;
        if m.expires <= Instant::now() {
            map.remove(&id);
            return Err(ErrorCode::PairingExpired);
        }
        if m.desktop == claimer {
            return Err(ErrorCode::UnexpectedFrame);
        }
        // First claim wins; every later claim is refused, even from the same device.
        if m.claimed_by.is_some() {
            return Err(ErrorCode::PairingClaimed);
        }
        m.claimed_by = Some(claimer);
        Ok(m.desktop)
    }

    /// Undo a claim that could not be forwarded (the desktop was offline).
    pub(crate) fn unclaim(&self, id: [u8; 16], claimer: DeviceId) {
        if let Some(m) = lock(&self.map).get_mut(&id)
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
        let map = lock(&self.map);
        let m = map.get(&id).ok_or(ErrorCode::PairingNotFound)?;
        if m.expires <= Instant::now() {
            return Err(ErrorCode::PairingExpired);
        }
        let claimer = m.claimed_by.ok_or(ErrorCode::PairingNotFound)?;
        let ok = (from == m.desktop && to == claimer) || (from == claimer && to == m.desktop);
        if ok { Ok(to) } else { Err(ErrorCode::UnexpectedFrame) }
    }

    /// Close a mailbox; only its desktop may.
    pub(crate) fn close(&self, id: [u8; 16], by: DeviceId) -> Result<(), ErrorCode> {
        let mut map = lock(&self.map);
        match map.get(&id) {
            Some(m) if m.desktop == by => {
                map.remove(&id);
                Ok(())
            }
            Some(_) => Err(ErrorCode::UnexpectedFrame),
            None => Err(ErrorCode::PairingNotFound),
        }
    }

    /// Drop expired mailboxes; returns how many.
    pub(crate) fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let before = map.len();
        map.retain(|_, m| m.expires > now);
        before - map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: DeviceId = DeviceId([1; 16]);
    const P: DeviceId = DeviceId([2; 16]);
    const X: DeviceId = DeviceId([3; 16]);

    #[tokio::test(start_paused = true)]
    async fn first_claim_wins_and_mailboxes_expire() {
        let m = Mailboxes::default();
        assert_eq!(m.claim([9; 16], P), Err(ErrorCode::PairingNotFound));
        m.open([9; 16], D, Duration::from_secs(120)).unwrap();
        assert_eq!(m.open([9; 16], X, Duration::from_secs(120)), Err(ErrorCode::PairingClaimed));
        assert_eq!(m.open([9; 16], D, Duration::from_secs(120)), Err(ErrorCode::PairingClaimed));
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
}
