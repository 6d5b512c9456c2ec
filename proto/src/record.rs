//! The record layer: a session's two directions of ChaCha20-Poly1305 keys,
//! explicit counters, a sliding replay window and rekeying. State is plain
//! data ([`serde`]), so a device can persist it and keep sending and
//! receiving across restarts and while its peer is offline (see
//! "Offline delivery" in `docs/PROTOCOL.md`).
//!
//! * The nonce is the record's explicit 64-bit counter, never reused: a
//!   resent message gets a new counter.
//! * The header (version, kind, session id, counter) is the AEAD's associated data.
//! * Keys ratchet forward every [`REKEY_INTERVAL`] counters with Noise's
//!   `REKEY` (`k' = ENCRYPT(k, 2^64-1, "", 0^32)[..32]`); the epoch of a
//!   counter is `counter / REKEY_INTERVAL`. [`Session::rekey_now`] jumps the
//!   sending counter to the next epoch (time-based rekeying). Old keys are
//!   erased, which gives forward secrecy inside a session.
//! * Opening never changes state unless the record authenticates.
//! * **Counters survive crashes.** A counter must never be used twice under
//!   one key, even if a device crashes after sending and restores older
//!   state. The sending state reserves counters in blocks of
//!   [`COUNTER_RESERVATION`]: a persisted session resumes at the end of the
//!   reservation it was saved with, never at a counter it may already have
//!   used. When [`Session::seal`] extends the reservation,
//!   [`Session::must_persist`] turns true and the caller persists the
//!   session before sending that record (then calls
//!   [`Session::mark_persisted`]). Between extensions, records can be sent
//!   without touching storage.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Tag};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::noise_nonce;
use crate::envelope::{Envelope, TAG_LEN, record_header};
use crate::replay::{ReplayError, ReplayWindow, WINDOW_BITS};

/// Counters per key epoch: 2^20 records, then the key ratchets.
pub const REKEY_INTERVAL: u64 = 1 << 20;

/// The first counter a session refuses to use or accept; renew before it.
/// (Noise reserves 2^64-1 for `REKEY`; this stays far below.)
pub const MAX_COUNTER: u64 = 1 << 62;

/// How many epochs a received counter may jump ahead of the last one seen.
/// Bounds the work a forged counter can cost before authentication: one
/// `REKEY` (a ChaCha20-Poly1305 encryption of 32 bytes, about 1.4 µs in an
/// optimised build here) per epoch, so about 6 ms per forged record at the
/// limit (fuzzing measured 90 ms at 2^16). Idle sessions do not burn epochs
/// ([`Session::rekey_now`] only ratchets a used key), so 4096 epochs is 170
/// days of hourly rekeying with traffic while the peer reads nothing; past
/// that, the peer's records are refused until a session renewal.
pub const MAX_EPOCH_SKIP: u64 = 1 << 12;

/// Counters reserved per persisted block (see the module docs).
pub const COUNTER_RESERVATION: u64 = 1 << 12;

/// The largest plaintext one record carries: what fits in a relay frame's
/// payload after the record header and tag.
pub const MAX_PLAINTEXT_LEN: usize =
    crate::frame::MAX_PAYLOAD_LEN - crate::envelope::RECORD_HEADER_LEN - TAG_LEN;

/// Why a record could not be sealed or opened. None of these change state.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The session's counters are used up; run a new session handshake.
    #[error("the session's counters are exhausted; renew the session")]
    Exhausted,
    /// The record is for another session.
    #[error("record for another session")]
    WrongSession,
    /// A replayed or too-old counter.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The counter is too far ahead of anything seen.
    #[error("counter is too far ahead")]
    TooFarAhead,
    /// The record did not authenticate (tampered, truncated or wrong key).
    #[error("record did not authenticate")]
    Decrypt,
    /// The plaintext is over [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {0} bytes does not fit in one record")]
    PlaintextTooLarge(usize),
    /// Not a record envelope.
    #[error("not a record envelope")]
    NotARecord,
}

#[derive(Clone, Serialize, Zeroize, ZeroizeOnDrop)]
struct TxState {
    key: [u8; 32],
    epoch: u64,
    next_counter: u64,
    /// Counters at or above this one have never been used.
    reserved: u64,
    /// The reservation grew since the caller last persisted.
    #[serde(skip)]
    dirty: bool,
}

/// What a stored `TxState` looks like; loading resumes at the reservation.
#[derive(Deserialize)]
struct StoredTx {
    key: [u8; 32],
    epoch: u64,
    next_counter: u64,
    reserved: u64,
}

impl<'de> Deserialize<'de> for TxState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = StoredTx::deserialize(d)?;
        // Counters between next_counter and reserved may have been used after
        // this state was saved: resume past all of them.
        let next = s.next_counter.max(s.reserved);
        let mut tx = TxState {
            key: s.key,
            epoch: s.epoch,
            next_counter: next,
            reserved: next,
            dirty: false,
        };
        // The key must match the epoch of the counter we resume at.
        while tx.epoch < next / REKEY_INTERVAL {
            tx.key = rekey(&tx.key);
            tx.epoch += 1;
        }
        Ok(tx)
    }
}

#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct RxState {
    key: [u8; 32],
    epoch: u64,
    prev_key: Option<[u8; 32]>,
    #[zeroize(skip)]
    window: ReplayWindow,
}

/// One session: keys and counters for both directions.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    id: [u8; 8],
    tx: TxState,
    rx: RxState,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &data_encoding::HEXLOWER.encode(&self.id))
            .field("tx_next", &self.tx.next_counter)
            .field("rx_highest", &self.rx.window.highest())
            .finish_non_exhaustive()
    }
}

/// Noise's `REKEY`: the first 32 bytes of encrypting 32 zero bytes under the
/// old key with nonce 2^64-1 and empty associated data.
#[must_use]
pub fn rekey(key: &[u8; 32]) -> [u8; 32] {
    let mut block = [0u8; 32];
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    // ChaCha20-Poly1305 only fails for inputs over 256 GiB; 32 bytes cannot.
    let _tag = cipher.encrypt_inout_detached(&noise_nonce(u64::MAX), &[], (&mut block[..]).into());
    block
}

impl Session {
    /// A session from a handshake's split: `tx` encrypts what this side sends.
    #[must_use]
    pub fn new(id: [u8; 8], tx: [u8; 32], rx: [u8; 32]) -> Self {
        Self {
            id,
            tx: TxState { key: tx, epoch: 0, next_counter: 0, reserved: 0, dirty: false },
            rx: RxState { key: rx, epoch: 0, prev_key: None, window: ReplayWindow::new() },
        }
    }

    /// The session id (from the handshake hash).
    #[must_use]
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    /// The counter the next sealed record will carry.
    #[must_use]
    pub fn next_counter(&self) -> u64 {
        self.tx.next_counter
    }

    /// The sending key's epoch: `next_counter / REKEY_INTERVAL` once a record
    /// was sealed in it (every rekey advances it).
    #[must_use]
    pub fn send_epoch(&self) -> u64 {
        self.tx.epoch
    }

    /// True once fewer than `margin` counters are left: time to renew.
    #[must_use]
    pub fn needs_renewal(&self, margin: u64) -> bool {
        self.tx.next_counter.saturating_add(margin) >= MAX_COUNTER
    }

    /// True when the session must be persisted before the last sealed
    /// record is sent: the counter reservation grew.
    #[must_use]
    pub fn must_persist(&self) -> bool {
        self.tx.dirty
    }

    /// The caller persisted this session.
    pub fn mark_persisted(&mut self) {
        self.tx.dirty = false;
    }

    /// Encrypt `plaintext` into a record envelope (encoded bytes). Check
    /// [`Self::must_persist`] before sending it.
    ///
    /// # Errors
    /// [`RecordError::Exhausted`] when the counters are used up;
    /// [`RecordError::PlaintextTooLarge`] over [`MAX_PLAINTEXT_LEN`].
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, RecordError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(RecordError::PlaintextTooLarge(plaintext.len()));
        }
        let counter = self.tx.next_counter;
        if counter >= MAX_COUNTER {
            return Err(RecordError::Exhausted);
        }
        self.ratchet_tx_to(counter / REKEY_INTERVAL);
        if counter >= self.tx.reserved {
            self.tx.reserved = counter.saturating_add(COUNTER_RESERVATION).min(MAX_COUNTER);
            self.tx.dirty = true;
        }
        let header = record_header(&self.id, counter);
        let mut buf = Vec::with_capacity(header.len() + plaintext.len() + TAG_LEN);
        buf.extend_from_slice(&header);
        buf.extend_from_slice(plaintext);
        let cipher = ChaCha20Poly1305::new(&Key::from(self.tx.key));
        let body = buf.get_mut(header.len()..).ok_or(RecordError::Exhausted)?;
        let tag = cipher
            .encrypt_inout_detached(&noise_nonce(counter), &header, body.into())
            .map_err(|_| RecordError::Exhausted)?;
        buf.extend_from_slice(&tag);
        self.tx.next_counter = counter + 1;
        Ok(buf)
    }

    fn ratchet_tx_to(&mut self, epoch: u64) {
        while self.tx.epoch < epoch {
            self.tx.key = rekey(&self.tx.key);
            self.tx.epoch += 1;
        }
    }

    /// Time-based rekeying (call hourly): if the current sending key has
    /// been used, ratchet it now — the old key is overwritten at once — and
    /// continue at the start of the next epoch. An unused key is left alone,
    /// so an idle session does not run ahead of its peer.
    pub fn rekey_now(&mut self) {
        let epoch_start = self.tx.epoch.saturating_mul(REKEY_INTERVAL);
        if self.tx.next_counter <= epoch_start {
            return;
        }
        let next = (self.tx.epoch + 1).saturating_mul(REKEY_INTERVAL).min(MAX_COUNTER);
        self.tx.next_counter = next;
        self.ratchet_tx_to(next / REKEY_INTERVAL);
        if next >= self.tx.reserved {
            self.tx.reserved = next;
            self.tx.dirty = true;
        }
    }

    /// Decrypt a record envelope. On any error the session is unchanged.
    ///
    /// # Errors
    /// [`RecordError`] for another session's record, a replay, an
    /// implausible counter, or a record that does not authenticate.
    pub fn open(&mut self, envelope: &Envelope) -> Result<Vec<u8>, RecordError> {
        let Envelope::Record { session_id, counter, ciphertext } = envelope else {
            return Err(RecordError::NotARecord);
        };
        if *session_id != self.id {
            return Err(RecordError::WrongSession);
        }
        let counter = *counter;
        if counter >= MAX_COUNTER {
            return Err(RecordError::TooFarAhead);
        }
        self.rx.window.check(counter)?;
        let epoch = counter / REKEY_INTERVAL;
        // Pick (or derive, tentatively) the key for the record's epoch.
        let (key, ratchet) = if epoch == self.rx.epoch {
            (self.rx.key, None)
        } else if epoch + 1 == self.rx.epoch {
            (self.rx.prev_key.ok_or(ReplayError::TooOld(counter))?, None)
        } else if epoch > self.rx.epoch {
            if epoch - self.rx.epoch > MAX_EPOCH_SKIP {
                return Err(RecordError::TooFarAhead);
            }
            let mut prev = self.rx.key;
            let mut k = self.rx.key;
            for _ in self.rx.epoch..epoch {
                prev = k;
                k = rekey(&k);
            }
            (k, Some(prev))
        } else {
            return Err(ReplayError::TooOld(counter).into());
        };
        let plaintext = decrypt(&key, &self.id, counter, ciphertext)?;
        // Authenticated: commit.
        self.rx.window.accept(counter);
        if let Some(prev) = ratchet {
            self.rx.prev_key = Some(prev);
            self.rx.key = key;
            self.rx.epoch = epoch;
        }
        self.prune_prev_key();
        Ok(plaintext)
    }

    /// Erase the previous epoch's key once every counter it covers has fallen
    /// out of the replay window.
    fn prune_prev_key(&mut self) {
        let Some(high) = self.rx.window.highest() else {
            return;
        };
        let epoch_start = self.rx.epoch.saturating_mul(REKEY_INTERVAL);
        if high.saturating_sub(WINDOW_BITS) >= epoch_start
            && let Some(mut k) = self.rx.prev_key.take()
        {
            k.zeroize();
        }
    }
}

fn decrypt(key: &[u8; 32], id: &[u8; 8], counter: u64, ct: &[u8]) -> Result<Vec<u8>, RecordError> {
    let len = ct.len().checked_sub(TAG_LEN).ok_or(RecordError::Decrypt)?;
    let (body, tag) = ct.split_at(len);
    let tag = Tag::try_from(tag).map_err(|_| RecordError::Decrypt)?;
    let mut out = body.to_vec();
    let cipher = ChaCha20Poly1305::new(&Key::from(*key));
    let header = record_header(id, counter);
    if cipher
        .decrypt_inout_detached(&noise_nonce(counter), &header, (&mut out[..]).into(), &tag)
        .is_err()
    {
        out.zeroize();
        return Err(RecordError::Decrypt);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Session, Session) {
        (Session::new([1; 8], [2; 32], [3; 32]), Session::new([1; 8], [3; 32], [2; 32]))
    }

    fn env(b: &[u8]) -> Envelope {
        Envelope::decode(b).unwrap()
    }

    #[test]
    fn seal_open_and_replay() {
        let (mut a, mut b) = pair();
        let r = a.seal(b"hello").unwrap();
        assert_eq!(b.open(&env(&r)).unwrap(), b"hello");
        assert_eq!(b.open(&env(&r)), Err(RecordError::Replay(ReplayError::Duplicate(0))));
    }

    #[test]
    fn tampering_anywhere_fails_and_changes_nothing() {
        let (mut a, mut b) = pair();
        let r = a.seal(b"hello world").unwrap();
        for i in 0..r.len() {
            let mut t = r.clone();
            t[i] ^= 0x01;
            let before = serde_json::to_string(&b).unwrap();
            if let Ok(e) = Envelope::decode(&t) {
                assert!(b.open(&e).is_err(), "byte {i}");
            }
            assert_eq!(serde_json::to_string(&b).unwrap(), before);
        }
        assert_eq!(b.open(&env(&r)).unwrap(), b"hello world");
    }

    #[test]
    fn rekeying_by_count_and_by_time() {
        let (mut a, mut b) = pair();
        a.tx.next_counter = REKEY_INTERVAL - 1;
        let r1 = a.seal(b"last of epoch 0").unwrap();
        let r2 = a.seal(b"first of epoch 1").unwrap();
        assert_eq!(a.tx.epoch, 1);
        // Out of order across the boundary: epoch 1 first, then epoch 0 via prev_key.
        assert_eq!(b.open(&env(&r2)).unwrap(), b"first of epoch 1");
        assert_eq!(b.open(&env(&r1)).unwrap(), b"last of epoch 0");
        a.rekey_now();
        assert_eq!(a.next_counter(), 2 * REKEY_INTERVAL);
        assert_eq!(a.tx.epoch, 2, "the key ratchets at once, not at the next seal");
        let r3 = a.seal(b"epoch 2").unwrap();
        assert_eq!(b.open(&env(&r3)).unwrap(), b"epoch 2");
        // Epoch 0 is now unreachable: its key is gone.
        assert!(b.rx.prev_key.is_none() || b.rx.epoch == 2);
    }

    #[test]
    fn counters_far_ahead_are_refused_before_any_work() {
        let (_, mut b) = pair();
        let e = Envelope::Record {
            session_id: [1; 8],
            counter: (MAX_EPOCH_SKIP + 1) * REKEY_INTERVAL,
            ciphertext: vec![0; 32],
        };
        assert_eq!(b.open(&e), Err(RecordError::TooFarAhead));
        let e =
            Envelope::Record { session_id: [1; 8], counter: MAX_COUNTER, ciphertext: vec![0; 32] };
        assert_eq!(b.open(&e), Err(RecordError::TooFarAhead));
        let e = Envelope::Record { session_id: [2; 8], counter: 0, ciphertext: vec![0; 32] };
        assert_eq!(b.open(&e), Err(RecordError::WrongSession));
    }

    #[test]
    fn exhausted_sessions_refuse_to_seal() {
        let (mut a, _) = pair();
        a.tx.next_counter = MAX_COUNTER;
        assert_eq!(a.seal(b"x"), Err(RecordError::Exhausted));
        assert!(a.needs_renewal(0));
    }

    #[test]
    fn an_idle_key_is_not_ratcheted_again() {
        let (mut a, _) = pair();
        a.rekey_now();
        assert_eq!((a.next_counter(), a.tx.epoch), (0, 0));
        a.seal(b"x").unwrap();
        a.rekey_now();
        a.rekey_now();
        assert_eq!((a.next_counter(), a.tx.epoch), (REKEY_INTERVAL, 1));
    }

    #[test]
    fn a_restored_session_never_reuses_a_counter() {
        let (mut a, mut b) = pair();
        a.seal(b"0").unwrap();
        assert!(a.must_persist());
        let saved = serde_json::to_string(&a).unwrap();
        a.mark_persisted();
        // Sent after the save, then the device crashed.
        let lost = a.seal(b"sent, then crash").unwrap();
        assert!(!a.must_persist());
        let mut restored: Session = serde_json::from_str(&saved).unwrap();
        let again = restored.seal(b"after restart").unwrap();
        let c_lost = Envelope::decode(&lost).unwrap();
        let c_again = Envelope::decode(&again).unwrap();
        let (Envelope::Record { counter: x, .. }, Envelope::Record { counter: y, .. }) =
            (&c_lost, &c_again)
        else {
            panic!()
        };
        assert!(y > x, "counter {y} reused or went back (lost record had {x})");
        assert_eq!(*y, COUNTER_RESERVATION);
        assert_eq!(b.open(&c_lost).unwrap(), b"sent, then crash");
        assert_eq!(b.open(&c_again).unwrap(), b"after restart");
    }

    #[test]
    fn oversized_plaintexts_are_refused() {
        let (mut a, _) = pair();
        assert_eq!(
            a.seal(&vec![0; MAX_PLAINTEXT_LEN + 1]),
            Err(RecordError::PlaintextTooLarge(MAX_PLAINTEXT_LEN + 1))
        );
        assert!(a.seal(&vec![0; MAX_PLAINTEXT_LEN]).is_ok());
    }

    #[test]
    fn survives_a_round_trip_through_storage() {
        let (mut a, mut b) = pair();
        let r = a.seal(b"one").unwrap();
        b.open(&env(&r)).unwrap();
        let mut a2: Session = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let mut b2: Session = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert!(b2.open(&env(&r)).is_err(), "the replay window survived");
        let r2 = a2.seal(b"two").unwrap();
        assert_eq!(b2.open(&env(&r2)).unwrap(), b"two");
    }
}
