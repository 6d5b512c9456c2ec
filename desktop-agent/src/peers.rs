//! The paired devices and their end-to-end state ([`Link`]), persisted.
//!
//! One JSON file per peer, `<data_dir>/peers/<device id>.json`:
//!
//! ```text
//! {"v":1,"peer":{"public_key":…,"info":{…},"scope":"submit","paired_at_unix":…,
//!                "last_seen_unix":…,"link":{…}}}
//! ```
//!
//! Optional members, written only when set: `"pairing_pending":true` (the
//! desktop saved the device before answering it, and has no sign yet that
//! the answer arrived: see [`Peer::pairing_pending`]) and
//! `"last_online_unix":…` (when the relay last said the device went offline:
//! the clock of an ephemeral device's expiry).
//!
//! A file holds the peer's session keys, so it gets the device key's
//! treatment ([`crate::keystore`]): mode 0600 in a 0700 directory, written
//! atomically (temporary file, fsync, rename, fsync of the directory), and a
//! file that group or others can access or that another user owns is refused
//! when loading. One file per peer keeps the write that must follow every
//! [`Link::send`] and [`Link::receive`] small: see [`PeerStore::save`] and
//! the persistence rules in [`tandem_proto::link`].
//!
//! A file that cannot be read is an error naming it, never skipped: a
//! skipped peer would look unpaired, and pairing it again would throw away
//! its queued messages.
//!
//! One agent process owns the directory; the store does no locking. Writes
//! are synchronous and fsync; async callers run them where blocking is fine.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::link::Link;
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::PairedPeer;
use tandem_proto::{DeviceId, PublicKey};
use thiserror::Error;

mod file;
mod store;

pub use store::PeerStore;

/// The peers directory's name inside the data directory.
pub const PEERS_DIR_NAME: &str = "peers";

/// The shortest device id prefix [`PeerStore::resolve`] accepts.
pub const MIN_PREFIX_LEN: usize = 4;

/// Temporary files younger than this may be another process's write in
/// progress, and are not cleaned up.
const STALE_TMP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The peer file format version this build writes and reads.
const FORMAT_VERSION: u32 = 1;

/// What went wrong with the peer store.
#[derive(Debug, Error)]
pub enum PeerError {
    /// A filesystem operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", …).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A peer file in a format version this build does not know (written
    /// by a newer Tandem). It is left as it is.
    #[error(
        "the peer file {} has format version {version}, which this version of Tandem does not \
         know (written by a newer one?): update Tandem",
        path.display()
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// A file in the peers directory cannot be understood. [`PeerStore::open`]
    /// sets it aside ([`crate::damage`]); other callers report it.
    #[error(
        "the peer file {} is damaged ({reason}); move it out of the directory to forget that \
         device (it will have to pair again)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A peer file may be read or written by group or others.
    #[error(
        "the peer file {} can be read or written by other users (mode {mode:o}); \
         run `chmod 600 {}` and start again",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A peer file belongs to another user than the data directory.
    #[error(
        "the peer file {} is owned by uid {owner}, not by uid {expected} (the owner of the \
         data directory); check where it came from, then `chown` it or move it away",
        path.display()
    )]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// The file's owner.
        owner: u32,
        /// The data directory's owner.
        expected: u32,
    },
    /// [`PeerStore::add`] for a device that is already paired.
    #[error(
        "device {id} (\"{name}\") is already paired; replacing it discards its session and \
         queued messages, so it must be asked for explicitly"
    )]
    AlreadyPaired {
        /// The device.
        id: DeviceId,
        /// Its name as stored.
        name: String,
    },
    /// No paired device has this id.
    #[error("no paired device has the id {0}")]
    UnknownPeer(DeviceId),
    /// [`PeerStore::resolve`] found nothing.
    #[error(
        "no paired device matches `{query}` (give a device id, a unique prefix of at least {} \
         characters of one, or a device name)",
        MIN_PREFIX_LEN
    )]
    NoMatch {
        /// What was asked for.
        query: String,
    },
    /// [`PeerStore::resolve`] found several devices.
    #[error(
        "`{query}` matches {} paired devices: {}; give more of the device id",
        candidates.len(),
        candidates.join(", ")
    )]
    Ambiguous {
        /// What was asked for.
        query: String,
        /// The devices it matches, as `<device id> (<name>)`.
        candidates: Vec<String>,
    },
    /// Not one of `view`, `submit`, `approve`.
    #[error("unknown scope `{0}` (expected view, submit or approve)")]
    UnknownScope(String),
    /// A peer could not be serialised.
    #[error("could not serialise the state of device {id}: {reason}")]
    Encode {
        /// The device.
        id: DeviceId,
        /// What serde said.
        reason: String,
    },
}

/// What a paired device may do. Each scope includes the ones before it:
/// `Rules` ⊃ `Approve` ⊃ `Submit` ⊃ `View`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Watch tasks and their events.
    View,
    /// Also submit tasks, follow-ups and cancellations.
    Submit,
    /// Also answer approval requests.
    Approve,
    /// Also add allow rules from an approval ("always allow this in this
    /// project"). Never given by default: the desktop user grants it.
    Rules,
}

impl Scope {
    /// Every scope, narrowest first.
    pub const ALL: [Scope; 4] = [Scope::View, Scope::Submit, Scope::Approve, Scope::Rules];

    /// `view`, `submit`, `approve` or `rules`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::View => "view",
            Scope::Submit => "submit",
            Scope::Approve => "approve",
            Scope::Rules => "rules",
        }
    }

    /// Whether the device may submit tasks (`Submit` and `Approve`).
    #[must_use]
    pub fn allows_submit(self) -> bool {
        self >= Scope::Submit
    }

    /// Whether the device may answer approval requests (`Approve` and
    /// `Rules`).
    #[must_use]
    pub fn allows_approve(self) -> bool {
        self >= Scope::Approve
    }

    /// Whether the device may add allow rules from an approval (`Rules`
    /// only).
    #[must_use]
    pub fn allows_rules(self) -> bool {
        self >= Scope::Rules
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = PeerError;

    /// `view`, `submit`, `approve` or `rules`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| PeerError::UnknownScope(s.to_owned()))
    }
}

/// One paired device: who it is, what it may do, and the end-to-end state.
#[derive(Debug, Serialize, Deserialize)]
pub struct Peer {
    public_key: PublicKey,
    info: DeviceInfo,
    scope: Scope,
    paired_at_unix: u64,
    #[serde(default)]
    last_seen_unix: Option<u64>,
    link: Link,
    /// Per task, the offset after the last event sealed for this device.
    /// Saved with the link, so after a crash the daemon knows which task
    /// events never reached this device's outbox.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    task_cursors: std::collections::BTreeMap<String, u64>,
    /// Saved before the phone was answered, and not heard from since.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pairing_pending: bool,
    /// When the relay last reported the device going offline (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_online_unix: Option<u64>,
    /// Session renewals completed with this device (for `tandem status`).
    #[serde(default, skip_serializing_if = "Renewals::is_none")]
    renewals: Renewals,
    /// The device's push key and what it wants pushed (its `push_setup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    push: Option<PushPrefs>,
}

/// What a phone asked to be woken for, and the key to seal it with
/// (docs/PUSH.md). Kept with the link in the peer file (as secret).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPrefs {
    /// The push key's id (16 lowercase hex digits).
    pub key_id: String,
    /// The push key (64 lowercase hex digits).
    pub key: tandem_proto::message::Secret,
    /// Push approval requests.
    pub approvals: bool,
    /// Push finished tasks.
    pub finished: bool,
    /// Push notices of messages that never arrived.
    pub missing: bool,
}

impl std::fmt::Debug for PushPrefs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushPrefs")
            .field("key_id", &self.key_id)
            .field("approvals", &self.approvals)
            .field("finished", &self.finished)
            .field("missing", &self.missing)
            .finish_non_exhaustive()
    }
}

impl PushPrefs {
    /// The key, checked.
    ///
    /// # Errors
    /// When the stored key is not well formed.
    pub fn key(&self) -> Result<tandem_proto::push::PushKey, tandem_proto::push::PushError> {
        tandem_proto::push::PushKey::from_hex(&self.key_id, &self.key.0)
    }
}

/// How often, and when last, a device's session was renewed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewals {
    /// Renewals completed since pairing.
    pub count: u64,
    /// When the last one completed (Unix seconds).
    pub last_unix: Option<u64>,
}

impl Renewals {
    fn is_none(&self) -> bool {
        self.count == 0
    }
}

impl Peer {
    /// A newly paired device. Its key is the one `link` pinned.
    #[must_use]
    pub fn new(info: DeviceInfo, scope: Scope, paired_at_unix: u64, link: Link) -> Self {
        Self {
            public_key: link.peer(),
            info,
            scope,
            paired_at_unix,
            last_seen_unix: None,
            link,
            task_cursors: std::collections::BTreeMap::new(),
            pairing_pending: false,
            last_online_unix: None,
            renewals: Renewals::default(),
            push: None,
        }
    }

    /// The same device, marked as saved before its phone was answered
    /// ([`Self::pairing_pending`]).
    #[must_use]
    pub fn pending(mut self) -> Self {
        self.pairing_pending = true;
        self
    }

    /// Whether the pairing may not have finished: the desktop saved this
    /// device before sending the accepting `PairResult` (PROTOCOL §9.4), and
    /// has seen no sign since that the phone got it (the relay taking the
    /// answer, a record from the device, or the device's half of the route,
    /// which a phone sends only once paired). A crash between the two leaves
    /// it set; the daemon forgets such a device after a while.
    #[must_use]
    pub fn pairing_pending(&self) -> bool {
        self.pairing_pending
    }

    /// Note that the phone got its answer (in memory; persist with
    /// [`PeerStore::save`]). Returns whether anything changed.
    pub fn finish_pairing(&mut self) -> bool {
        std::mem::replace(&mut self.pairing_pending, false)
    }

    /// Whether the device keeps its keys only while it runs (a web page on
    /// an origin that is not a secure context, PROTOCOL §15.4).
    #[must_use]
    pub fn ephemeral(&self) -> bool {
        self.info.ephemeral
    }

    /// When the relay last reported the device going offline (Unix seconds).
    #[must_use]
    pub fn last_online_unix(&self) -> Option<u64> {
        self.last_online_unix
    }

    /// The last sign of life: something authentic from it, the relay
    /// reporting it offline, or its pairing (Unix seconds).
    #[must_use]
    pub fn last_heard_unix(&self) -> u64 {
        self.paired_at_unix
            .max(self.last_seen_unix.unwrap_or(0))
            .max(self.last_online_unix.unwrap_or(0))
    }

    /// Record that the relay reported it going offline at `now_unix` (in
    /// memory; persist with [`PeerStore::save`]).
    pub fn mark_offline(&mut self, now_unix: u64) {
        self.last_online_unix = Some(now_unix);
    }

    /// A newly paired device straight from the pairing handshake.
    #[must_use]
    pub fn from_paired(
        paired: PairedPeer,
        scope: Scope,
        paired_at_unix: u64,
        limits: OutboxLimits,
    ) -> Self {
        let info = paired.info.clone();
        Self::new(info, scope, paired_at_unix, Link::from_paired(paired, limits))
    }

    /// Per task, the offset after the last event sealed for this device.
    #[must_use]
    pub fn task_cursors(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.task_cursors
    }

    /// Note that events of `task_id` before `next` were sealed for (or
    /// deliberately not sent to) this device. Never moves backwards.
    pub fn advance_task_cursor(&mut self, task_id: &str, next: u64) {
        match self.task_cursors.get_mut(task_id) {
            Some(c) => *c = (*c).max(next),
            None => {
                self.task_cursors.insert(task_id.to_owned(), next);
            }
        }
    }

    /// Forget the cursor of a task that needs no catching up.
    pub fn drop_task_cursor(&mut self, task_id: &str) {
        self.task_cursors.remove(task_id);
    }

    /// The device's pinned public key.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// The device's id (from its public key).
    #[must_use]
    pub fn device_id(&self) -> DeviceId {
        self.public_key.device_id()
    }

    /// What the device said about itself.
    #[must_use]
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The device's name (from its [`DeviceInfo`]).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// What the device may do.
    #[must_use]
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// When it was paired (Unix seconds).
    #[must_use]
    pub fn paired_at_unix(&self) -> u64 {
        self.paired_at_unix
    }

    /// When something authentic last arrived from it (Unix seconds).
    #[must_use]
    pub fn last_seen_unix(&self) -> Option<u64> {
        self.last_seen_unix
    }

    /// The end-to-end state.
    #[must_use]
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The end-to-end state, to send or receive. Persist with
    /// [`PeerStore::save`] afterwards.
    pub fn link_mut(&mut self) -> &mut Link {
        &mut self.link
    }

    /// The device's push settings, when it asked for pushes.
    #[must_use]
    pub fn push(&self) -> Option<&PushPrefs> {
        self.push.as_ref()
    }

    /// Set (or clear) the device's push settings, in memory only: saved
    /// with the device's link.
    pub fn set_push(&mut self, push: Option<PushPrefs>) {
        self.push = push;
    }

    /// Session renewals completed with this device.
    #[must_use]
    pub fn renewals(&self) -> Renewals {
        self.renewals
    }

    /// Count a completed session renewal at `now_unix`, in memory only: the
    /// next [`PeerStore::save`] persists it.
    pub fn note_renewal(&mut self, now_unix: u64) {
        self.renewals.count = self.renewals.count.saturating_add(1);
        self.renewals.last_unix = Some(now_unix);
    }

    /// Record that the device was seen at `now_unix`, in memory only: the
    /// next [`PeerStore::save`] persists it (cheaper than [`PeerStore::touch`]
    /// when a save follows anyway, as after [`Link::receive`]).
    ///
    /// Something authentic from the device also means it got its pairing
    /// answer ([`Self::finish_pairing`]).
    pub fn mark_seen(&mut self, now_unix: u64) {
        self.last_seen_unix = Some(now_unix);
        self.pairing_pending = false;
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PeerError + use<> {
    let path = path.to_path_buf();
    move |source| PeerError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_scope_strings_order_and_serde() {
        for (scope, s) in
            [(Scope::View, "view"), (Scope::Submit, "submit"), (Scope::Approve, "approve")]
        {
            assert_eq!(scope.to_string(), s);
            assert_eq!(format!("{scope:<8}|"), format!("{s:<8}|"));
            assert_eq!(s.parse::<Scope>().unwrap(), scope);
            assert_eq!(s.to_uppercase().parse::<Scope>().unwrap(), scope);
            assert_eq!(serde_json::to_string(&scope).unwrap(), format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Scope>(&format!("\"{s}\"")).unwrap(), scope);
        }
        assert!(matches!("admin".parse::<Scope>(), Err(PeerError::UnknownScope(_))));
        assert!(!Scope::View.allows_submit() && !Scope::View.allows_approve());
        assert!(Scope::Submit.allows_submit() && !Scope::Submit.allows_approve());
        assert!(Scope::Approve.allows_submit() && Scope::Approve.allows_approve());
    }
}
