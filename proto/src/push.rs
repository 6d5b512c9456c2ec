//! The inner seal of a push notification (PROTOCOL.md §15.6, docs/PUSH.md):
//! what a desktop puts in a push so that neither the relay nor the push
//! service (Apple, Google, a browser vendor) can read it.
//!
//! The phone makes a [`PushKey`] per desktop (32 random bytes and an 8-byte
//! random id) and gives it to the desktop inside the end-to-end link (the
//! `push_setup` message); the desktop seals a [`Notification`] with it;
//! the relay forwards the opaque blob; the phone (its service worker, or an
//! iOS Notification Service Extension / Android data-message handler through
//! the SDK) opens it with the key of that id.
//!
//! ```text
//! blob   = 0x01 ‖ key_id [8] ‖ nonce [24] ‖ XChaCha20-Poly1305(key, nonce, padded, aad)
//! aad    = "tandem push v1" ‖ key_id
//! padded = notification JSON ‖ 0x00 … up to a multiple of 256 bytes (≤ 2048)
//! topic  = BLAKE2s-256-MAC(key, "tandem push topic v1" ‖ 0x00 ‖ task_id)[..16]
//! ```
//!
//! The padding hides a notification's length to within 256 bytes; the topic
//! (the push's collapse key) is stable per task yet says nothing of it to
//! anyone without the key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::entropy::{Entropy, EntropyError};
use crate::kdf;

/// The seal's version byte.
pub const SEAL_VERSION: u8 = 1;
/// Padding unit of the sealed plaintext.
pub const PAD_BLOCK: usize = 256;
/// Largest padded plaintext.
pub const MAX_PADDED_LEN: usize = 2048;
/// Header: version, key id, nonce.
pub const HEADER_LEN: usize = 1 + 8 + 24;
/// Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Largest blob this crate makes (the relay takes up to
/// [`MAX_PUSH_BLOB`]).
pub const MAX_SEALED_LEN: usize = HEADER_LEN + MAX_PADDED_LEN + TAG_LEN;
/// Largest blob a `Notify` frame carries (room for a newer seal).
pub use crate::frame::MAX_PUSH_BLOB;
/// Longest title, in bytes as JSON-escaped (cut at a character boundary).
pub const MAX_TITLE: usize = 120;
/// Longest body, in bytes as JSON-escaped (cut at a character boundary).
pub const MAX_BODY: usize = 600;
/// Longest desktop name, in bytes as JSON-escaped.
pub const MAX_DESKTOP: usize = 64;
/// Longest task or approval id carried, in bytes as JSON-escaped (longer
/// ids are left out).
pub const MAX_ID: usize = 256;

const AAD_LABEL: &[u8] = b"tandem push v1";
const TOPIC_LABEL: &str = "tandem push topic v1";

const _: () = assert!(MAX_SEALED_LEN <= MAX_PUSH_BLOB);

/// Why a notification could not be sealed or opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PushError {
    /// Shorter than a header and a tag, longer than [`MAX_PUSH_BLOB`], or
    /// a padded length that is not a multiple of [`PAD_BLOCK`].
    #[error("not a sealed notification ({0})")]
    Malformed(&'static str),
    /// A seal version this build does not know.
    #[error("unknown push seal version {0}")]
    UnknownVersion(u8),
    /// Sealed under another key id than the key given.
    #[error("sealed under another push key")]
    WrongKey,
    /// The tag did not verify (tampered, or another key with the same id).
    #[error("the notification does not open with this key (tampered or wrong key)")]
    Tampered,
    /// It opened, but the JSON inside is not a notification.
    #[error("the sealed notification is not valid: {0}")]
    BadContent(String),
    /// No randomness for the nonce.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// An approval waits for a decision.
    Approval,
    /// A task finished (or failed, or was cancelled).
    Finished,
    /// The desktop learnt that some of this phone's messages never reached
    /// it.
    Missing,
    /// A kind a newer desktop sends: shown generically.
    #[serde(other)]
    Other,
}

/// The sealed content of a push: what the phone shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// What it is about.
    pub kind: NotificationKind,
    /// The desktop's name.
    pub desktop: String,
    /// One line.
    pub title: String,
    /// A few lines.
    pub body: String,
    /// The task it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The approval it asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// When the approval times out (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// The device's scope lets it decide approvals: a notification may
    /// offer Allow and Deny.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub can_decide: bool,
    /// When the desktop sent it (Unix ms, desktop clock).
    pub at_ms: u64,
}

impl Notification {
    /// Cut the text fields to their limits (at character boundaries) and
    /// drop ids too long to carry, so that the sealed form always fits.
    pub fn fit(&mut self) {
        cut(&mut self.desktop, MAX_DESKTOP);
        cut(&mut self.title, MAX_TITLE);
        cut(&mut self.body, MAX_BODY);
        for id in [&mut self.task_id, &mut self.approval_id] {
            if id.as_ref().is_some_and(|s| json_len(s) > MAX_ID) {
                *id = None;
            }
        }
    }
}

/// Bytes `c` takes inside a JSON string as serde_json writes it: control
/// characters are `\uXXXX` (6 bytes) or a two-byte escape, as are `"` and
/// `\\`.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Bytes `s` takes inside a JSON string.
fn json_len(s: &str) -> usize {
    s.chars().map(json_char_len).sum()
}

/// Cut `s` so that it takes at most `max` bytes in the JSON (so at most
/// `max` bytes itself) at a character boundary, marking the cut with an
/// ellipsis when there is room. Counting the escaped form keeps text full
/// of control characters (terminal colours) or quotes within the seal.
fn cut(s: &mut String, max: usize) {
    if json_len(s) <= max {
        return;
    }
    let room = max.saturating_sub('…'.len_utf8());
    let mut used = 0;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        used += json_char_len(c);
        if used > room {
            break;
        }
        end = i + c.len_utf8();
    }
    s.truncate(end);
    if room > 0 {
        s.push('…');
    }
}

/// A phone's push key for one desktop.
#[derive(Clone)]
pub struct PushKey {
    id: [u8; 8],
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for PushKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushKey").field("id", &self.id_hex()).finish_non_exhaustive()
    }
}

impl PushKey {
    /// A fresh key and id.
    ///
    /// # Errors
    /// [`PushError::Entropy`] when the entropy source fails.
    pub fn generate(entropy: &mut Entropy) -> Result<Self, PushError> {
        Ok(Self { id: entropy.array8()?, key: Zeroizing::new(entropy.array32()?) })
    }

    /// A key from its parts (as stored, or as received in `push_setup`).
    #[must_use]
    pub fn from_parts(id: [u8; 8], key: [u8; 32]) -> Self {
        Self { id, key: Zeroizing::new(key) }
    }

    /// A key from the hex strings of `push_setup` (`key_id`: 16 hex
    /// digits, `key`: 64).
    ///
    /// # Errors
    /// [`PushError::Malformed`] when either is not lowercase hex of the
    /// right length.
    pub fn from_hex(id: &str, key: &str) -> Result<Self, PushError> {
        let id = decode_hex::<8>(id).ok_or(PushError::Malformed("key_id is not 16 hex digits"))?;
        let key = decode_hex::<32>(key).ok_or(PushError::Malformed("key is not 64 hex digits"))?;
        Ok(Self::from_parts(id, key))
    }

    /// Its id.
    #[must_use]
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    /// Its id as lowercase hex (`push_setup.key_id`).
    #[must_use]
    pub fn id_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.id)
    }

    /// The key as lowercase hex (`push_setup.key`). Secret.
    #[must_use]
    pub fn key_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(data_encoding::HEXLOWER.encode(self.key.as_slice()))
    }

    /// The key's bytes. Secret.
    #[must_use]
    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// The collapse topic of pushes about `task_id`.
    #[must_use]
    pub fn topic(&self, task_id: &str) -> [u8; 16] {
        let full = kdf::mac(&self.key, TOPIC_LABEL, &[task_id.as_bytes()]);
        let mut out = [0u8; 16];
        out.copy_from_slice(full.get(..16).unwrap_or(&[0; 16]));
        out
    }

    /// Seal `n` (cut to fit first) for the phone that owns this key.
    ///
    /// # Errors
    /// [`PushError::Entropy`] when no nonce can be drawn;
    /// [`PushError::BadContent`] if it does not encode.
    pub fn seal(&self, n: &Notification, entropy: &mut Entropy) -> Result<Vec<u8>, PushError> {
        let mut n = n.clone();
        n.fit();
        let json = serde_json::to_vec(&n).map_err(|e| PushError::BadContent(e.to_string()))?;
        if json.len() > MAX_PADDED_LEN {
            // Unreachable with the limits of `fit` (their sum, escaped, is
            // far below).
            return Err(PushError::BadContent("too long after cutting".into()));
        }
        let padded_len = json.len().div_ceil(PAD_BLOCK).max(1) * PAD_BLOCK;
        let mut padded = Zeroizing::new(json);
        padded.resize(padded_len, 0);
        let mut nonce = [0u8; 24];
        entropy.fill(&mut nonce)?;
        let aad = self.aad();
        let cipher = XChaCha20Poly1305::new(&Key::from(*self.key));
        let sealed = cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: &padded, aad: &aad })
            .map_err(|_| PushError::BadContent("could not encrypt".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Open `blob`, sealed with this key.
    ///
    /// # Errors
    /// [`PushError`] for anything but a notification sealed with this key.
    pub fn open(&self, blob: &[u8]) -> Result<Notification, PushError> {
        if key_id_of(blob)? != self.id {
            return Err(PushError::WrongKey);
        }
        let nonce = blob.get(9..HEADER_LEN).ok_or(PushError::Malformed("short"))?;
        let sealed = blob.get(HEADER_LEN..).ok_or(PushError::Malformed("short"))?;
        let cipher = XChaCha20Poly1305::new(&Key::from(*self.key));
        let padded = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::try_from(nonce).map_err(|_| PushError::Malformed("short"))?,
                    Payload { msg: sealed, aad: &self.aad() },
                )
                .map_err(|_| PushError::Tampered)?,
        );
        if padded.is_empty() || padded.len() % PAD_BLOCK != 0 || padded.len() > MAX_PADDED_LEN {
            return Err(PushError::Malformed("padded length"));
        }
        let end = padded.iter().position(|&b| b == 0).unwrap_or(padded.len());
        if padded.get(end..).is_some_and(|rest| rest.iter().any(|&b| b != 0)) {
            return Err(PushError::Malformed("padding"));
        }
        let json = padded.get(..end).unwrap_or_default();
        serde_json::from_slice(json).map_err(|e| PushError::BadContent(e.to_string()))
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = AAD_LABEL.to_vec();
        aad.extend_from_slice(&self.id);
        aad
    }
}

/// The key id a blob was sealed under (to pick the key), after checking its
/// version and length.
///
/// # Errors
/// [`PushError::Malformed`] or [`PushError::UnknownVersion`].
pub fn key_id_of(blob: &[u8]) -> Result<[u8; 8], PushError> {
    if blob.len() > MAX_PUSH_BLOB {
        return Err(PushError::Malformed("too long"));
    }
    let Some(&version) = blob.first() else { return Err(PushError::Malformed("empty")) };
    if version != SEAL_VERSION {
        return Err(PushError::UnknownVersion(version));
    }
    if blob.len() < HEADER_LEN + PAD_BLOCK + TAG_LEN {
        return Err(PushError::Malformed("short"));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(blob.get(1..9).ok_or(PushError::Malformed("short"))?);
    Ok(id)
}

/// Open `blob` with whichever of `keys` it names.
///
/// # Errors
/// [`PushError::WrongKey`] when none of them has its id; otherwise what
/// [`PushKey::open`] says.
pub fn open_with<'a>(
    keys: impl IntoIterator<Item = &'a PushKey>,
    blob: &[u8],
) -> Result<Notification, PushError> {
    let id = key_id_of(blob)?;
    keys.into_iter().find(|k| k.id == id).ok_or(PushError::WrongKey)?.open(blob)
}

fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let bytes = data_encoding::HEXLOWER.decode(s.as_bytes()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn note() -> Notification {
        Notification {
            kind: NotificationKind::Approval,
            desktop: "build-box".into(),
            title: "Approve: Bash".into(),
            body: "cargo test --workspace".into(),
            task_id: Some("t-1".into()),
            approval_id: Some("a-1".into()),
            expires_at_ms: Some(1_700_000_300_000),
            can_decide: true,
            at_ms: 1_700_000_000_000,
        }
    }

    fn key(seed: u8) -> PushKey {
        PushKey::generate(&mut Entropy::deterministic([seed; 32])).unwrap()
    }

    #[test]
    fn seals_and_opens() {
        let k = key(1);
        let blob = k.seal(&note(), &mut Entropy::os()).unwrap();
        assert_eq!(blob.len(), HEADER_LEN + PAD_BLOCK + TAG_LEN);
        assert_eq!(k.open(&blob).unwrap(), note());
        assert_eq!(open_with([&key(2), &k], &blob).unwrap(), note());
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let k = key(1);
        let blob = k.seal(&note(), &mut Entropy::os()).unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(k.open(&bad).is_err(), "byte {i}");
        }
        assert_eq!(key(2).open(&blob), Err(PushError::WrongKey));
        let same_id = PushKey::from_parts(k.id(), [9; 32]);
        assert_eq!(same_id.open(&blob), Err(PushError::Tampered));
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let k = key(1);
        for blob in [&[][..], &[1], &[2; 400], &[1; 60], &vec![1; MAX_PUSH_BLOB + 1][..]] {
            assert!(k.open(blob).is_err());
        }
        assert_eq!(key_id_of(&[2; 400]), Err(PushError::UnknownVersion(2)));
    }

    #[test]
    fn long_text_is_cut_to_fit_at_char_boundaries() {
        let k = key(1);
        let mut n = note();
        n.title = "é".repeat(500);
        n.body = "🦀".repeat(2000);
        n.desktop = "d".repeat(300);
        n.task_id = Some("t".repeat(300));
        let blob = k.seal(&n, &mut Entropy::os()).unwrap();
        assert!(blob.len() <= MAX_SEALED_LEN);
        let got = k.open(&blob).unwrap();
        assert!(got.title.len() <= MAX_TITLE && got.title.ends_with('…'));
        assert!(got.body.len() <= MAX_BODY && got.body.starts_with("🦀"));
        assert_eq!(got.desktop.len(), MAX_DESKTOP);
        assert_eq!(got.task_id, None);
    }

    #[test]
    fn text_that_json_escapes_long_still_fits() {
        // Tool output carries control characters (ANSI colours: ESC is
        // `\u001b` in JSON, 6 bytes for 1) and quotes: the cut must count
        // what the JSON takes, or the push is never sealed.
        let k = key(1);
        let mut n = note();
        n.title = "\u{1b}[31m\"".repeat(100);
        n.body = "\u{1b}".repeat(2000);
        n.desktop = "\"".repeat(300);
        n.task_id = Some("\u{1}".repeat(MAX_ID));
        n.approval_id = Some("\\".repeat(MAX_ID / 2));
        let blob = k.seal(&n, &mut Entropy::os()).unwrap();
        assert!(blob.len() <= MAX_SEALED_LEN);
        let got = k.open(&blob).unwrap();
        assert!(got.title.len() <= MAX_TITLE && got.body.len() <= MAX_BODY);
        assert!(got.body.starts_with('\u{1b}'));
        assert!(got.desktop.len() <= MAX_DESKTOP);
    }

    #[test]
    fn topics_are_per_task_and_per_key() {
        let (a, b) = (key(1), key(2));
        assert_eq!(a.topic("t-1"), a.topic("t-1"));
        assert_ne!(a.topic("t-1"), a.topic("t-2"));
        assert_ne!(a.topic("t-1"), b.topic("t-1"));
    }

    #[test]
    fn hex_parts_round_trip_and_refuse_bad_input() {
        let k = key(1);
        let again = PushKey::from_hex(&k.id_hex(), &k.key_hex()).unwrap();
        assert_eq!(again.key_bytes(), k.key_bytes());
        assert!(PushKey::from_hex("00", &k.key_hex()).is_err());
        assert!(PushKey::from_hex(&k.id_hex().to_uppercase(), &k.key_hex()).is_err());
        assert!(PushKey::from_hex(&k.id_hex(), "zz").is_err());
    }

    #[test]
    fn unknown_kinds_and_fields_are_read() {
        let k = key(1);
        let json = br#"{"kind":"reminder","desktop":"d","title":"t","body":"b","at_ms":1,"new":2}"#;
        let mut padded = json.to_vec();
        padded.resize(PAD_BLOCK, 0);
        let nonce = [7u8; 24];
        let cipher = XChaCha20Poly1305::new(&Key::from(*k.key_bytes()));
        let sealed =
            cipher.encrypt(&XNonce::from(nonce), Payload { msg: &padded, aad: &k.aad() }).unwrap();
        let blob = [&[SEAL_VERSION][..], &k.id(), &nonce, &sealed].concat();
        assert_eq!(k.open(&blob).unwrap().kind, NotificationKind::Other);
    }
}
