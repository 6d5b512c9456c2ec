//! [`PeerStore`]: the paired devices in memory, loaded from and saved to
//! `<data_dir>/peers/` one file per device, and looked up by id, id prefix
//! or name.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tandem_proto::DeviceId;

use super::file::{file_name, load_peer, persist, read_peer_file, set_aside_peer};
use super::{MIN_PREFIX_LEN, PEERS_DIR_NAME, Peer, PeerError, STALE_TMP_AGE, Scope, io_err};
use crate::damage::SetAside;
use crate::keystore::{create_private_dir, owner_of, sync_dir};

/// The paired devices, in memory and in `<data_dir>/peers/`.
#[derive(Debug)]
pub struct PeerStore {
    dir: PathBuf,
    peers: BTreeMap<DeviceId, Peer>,
    /// Damaged files set aside by [`Self::open`], not reported yet.
    set_aside: Vec<SetAside>,
}

impl PeerStore {
    /// Load every paired device from `<data_dir>/peers/` (created with
    /// mode 0700 if missing). Leftover temporary files from an interrupted
    /// write are deleted; other files not named `*.json` are ignored.
    ///
    /// # Errors
    /// [`PeerError::Io`] when the directory cannot be read; for any
    /// `*.json` file that cannot be loaded, [`PeerError::Corrupt`],
    /// [`PeerError::InsecurePermissions`] or [`PeerError::WrongOwner`],
    /// naming it.
    pub fn open(data_dir: &Path) -> Result<Self, PeerError> {
        let dir = data_dir.join(PEERS_DIR_NAME);
        create_private_dir(&dir).map_err(io_err("create the directory", &dir))?;
        let expected_owner = owner_of(data_dir).map_err(io_err("inspect", data_dir))?;
        let mut paths = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            paths.push(entry.map_err(io_err("list", &dir))?.path());
        }
        paths.sort();
        let mut peers = BTreeMap::new();
        let mut set_aside = Vec::new();
        for path in paths {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                // An interrupted write: it may hold session keys. A recent one
                // may be another process's write in progress: leave it.
                let age = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                if age < STALE_TMP_AGE {
                    continue;
                }
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "could not delete a leftover temporary file"
                    );
                }
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else {
                tracing::debug!(path = %path.display(), "ignoring a file that is not a peer file");
                continue;
            };
            match load_peer(&path, stem, expected_owner) {
                Ok((id, peer)) => {
                    peers.insert(id, peer);
                }
                Err(PeerError::Corrupt { path, reason }) => {
                    set_aside.push(set_aside_peer(&path, name, reason)?);
                }
                Err(e) => return Err(e),
            }
        }
        tracing::debug!(dir = %dir.display(), peers = peers.len(), "loaded the paired devices");
        Ok(Self { dir, peers, set_aside })
    }

    /// The damaged peer files [`Self::open`] set aside (once: later calls
    /// return nothing).
    pub fn take_set_aside(&mut self) -> Vec<SetAside> {
        std::mem::take(&mut self.set_aside)
    }

    /// The peers directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many devices are paired.
    #[must_use]
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no device is paired.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Store a newly paired device (and persist it).
    ///
    /// Check [`Self::get`] before accepting a pairing to ask the user about
    /// a device that is already paired: on error, `peer` is dropped.
    ///
    /// # Errors
    /// [`PeerError::AlreadyPaired`] when a device with the same id is stored
    /// (use [`Self::replace`] to replace it); [`PeerError::Io`] or
    /// [`PeerError::Encode`] when it cannot be persisted (then it is not
    /// stored).
    pub fn add(&mut self, mut peer: Peer) -> Result<(), PeerError> {
        let id = peer.device_id();
        if let Some(existing) = self.peers.get(&id) {
            return Err(PeerError::AlreadyPaired {
                id,
                name: crate::text::escaped(&existing.info.name),
            });
        }
        persist(&self.dir, &mut peer)?;
        tracing::info!(
            device_id = %id,
            name = %peer.info.name,
            scope = %peer.scope,
            "paired a device"
        );
        self.peers.insert(id, peer);
        Ok(())
    }

    /// Store a device, replacing one with the same id if there is one
    /// (pairing a device again). Returns the replaced one.
    ///
    /// # Errors
    /// [`PeerError::Io`] or [`PeerError::Encode`] when it cannot be persisted
    /// (then nothing changed).
    pub fn replace(&mut self, mut peer: Peer) -> Result<Option<Peer>, PeerError> {
        let id = peer.device_id();
        persist(&self.dir, &mut peer)?;
        let old = self.peers.insert(id, peer);
        tracing::info!(device_id = %id, replaced = old.is_some(), "paired a device");
        Ok(old)
    }

    /// A paired device.
    #[must_use]
    pub fn get(&self, id: &DeviceId) -> Option<&Peer> {
        self.peers.get(id)
    }

    /// A paired device, to use its link. Persist changes with [`Self::save`].
    pub fn get_mut(&mut self, id: &DeviceId) -> Option<&mut Peer> {
        self.peers.get_mut(id)
    }

    /// Persist one device (after [`Link::send`], [`Link::receive`] or any
    /// other change through [`Self::get_mut`]), then mark its link persisted
    /// ([`Link::mark_persisted`]).
    ///
    /// [`Link::send`]: tandem_proto::link::Link::send
    /// [`Link::receive`]: tandem_proto::link::Link::receive
    /// [`Link::mark_persisted`]: tandem_proto::link::Link::mark_persisted
    ///
    /// # Errors
    /// [`PeerError::UnknownPeer`]; [`PeerError::Io`] or [`PeerError::Encode`]
    /// when it cannot be persisted (the link is then not marked persisted).
    pub fn save(&mut self, id: &DeviceId) -> Result<(), PeerError> {
        // A file deleted meanwhile means the device was revoked by another
        // process: never bring it back.
        if !self.dir.join(file_name(id)).exists() {
            self.peers.remove(id);
            return Err(PeerError::UnknownPeer(*id));
        }
        let peer = self.peers.get_mut(id).ok_or(PeerError::UnknownPeer(*id))?;
        persist(&self.dir, peer)
    }

    /// Take in changes another process (`tandem revoke`, `tandem scope`)
    /// made to one device's file while this store was open: a deleted file
    /// means the device was revoked (it is dropped here too, and `false` is
    /// returned); a changed scope is adopted. This store's own state (the
    /// link) is kept: it is the newer one.
    ///
    /// # Errors
    /// [`PeerError`] when the file exists but cannot be read.
    pub fn sync_from_disk(&mut self, id: &DeviceId) -> Result<bool, PeerError> {
        let path = self.dir.join(file_name(id));
        if !path.exists() {
            if self.peers.remove(id).is_some() {
                tracing::info!(device_id = %id, "device revoked by another process");
            }
            return Ok(false);
        }
        let owner = owner_of(&self.dir).map_err(io_err("inspect", &self.dir))?;
        let on_disk = read_peer_file(&path, owner)?;
        match self.peers.get_mut(id) {
            Some(peer) => peer.scope = on_disk.scope,
            // Paired by another process (`tandem pair`) while this one runs.
            None => {
                self.peers.insert(*id, on_disk);
            }
        }
        Ok(true)
    }

    /// The paired devices, oldest pairing first.
    #[must_use]
    pub fn list(&self) -> Vec<&Peer> {
        let mut peers: Vec<&Peer> = self.peers.values().collect();
        peers.sort_by_key(|p| (p.paired_at_unix, p.device_id()));
        peers
    }

    /// Change what a device may do, and persist it.
    ///
    /// # Errors
    /// [`PeerError::UnknownPeer`]; [`PeerError::Io`] or [`PeerError::Encode`]
    /// when it cannot be persisted (then the scope is unchanged).
    pub fn set_scope(&mut self, id: &DeviceId, scope: Scope) -> Result<(), PeerError> {
        let peer = self.peers.get_mut(id).ok_or(PeerError::UnknownPeer(*id))?;
        let old = std::mem::replace(&mut peer.scope, scope);
        persist(&self.dir, peer).inspect_err(|_| peer.scope = old)?;
        tracing::info!(device_id = %id, from = %old, to = %scope, "changed a device's scope");
        Ok(())
    }

    /// Record that a device was seen at `now_unix`, and persist it. See
    /// [`Peer::mark_seen`] to skip the write when a save follows anyway.
    ///
    /// # Errors
    /// As [`Self::set_scope`].
    pub fn touch(&mut self, id: &DeviceId, now_unix: u64) -> Result<(), PeerError> {
        let peer = self.peers.get_mut(id).ok_or(PeerError::UnknownPeer(*id))?;
        let old = peer.last_seen_unix.replace(now_unix);
        persist(&self.dir, peer).inspect_err(|_| peer.last_seen_unix = old)
    }

    /// Forget a device (revocation): delete its file, drop it from the
    /// store and return it. Its session keys are gone with it; revoking its
    /// route at the relay is the caller's part.
    ///
    /// # Errors
    /// [`PeerError::UnknownPeer`]; [`PeerError::Io`] when the file cannot be
    /// deleted (then the device stays).
    pub fn remove(&mut self, id: &DeviceId) -> Result<Peer, PeerError> {
        if !self.peers.contains_key(id) {
            return Err(PeerError::UnknownPeer(*id));
        }
        let path = self.dir.join(file_name(id));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(PeerError::Io { action: "delete", path, source }),
        }
        sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?;
        let peer = self.peers.remove(id).ok_or(PeerError::UnknownPeer(*id))?;
        tracing::info!(device_id = %id, name = %peer.info.name, "removed a paired device");
        Ok(peer)
    }

    /// Find a paired device from what a user typed: its full device id, a
    /// prefix of one (at least [`MIN_PREFIX_LEN`] characters, any case), or
    /// its name (exact, case-insensitive). A query that matches several
    /// devices, by name or prefix or both, is ambiguous.
    ///
    /// # Errors
    /// [`PeerError::UnknownPeer`] for a full id that is not paired;
    /// [`PeerError::NoMatch`]; [`PeerError::Ambiguous`] listing the
    /// candidates.
    pub fn resolve(&self, query: &str) -> Result<DeviceId, PeerError> {
        let q = query.trim();
        if let Ok(id) = q.parse::<DeviceId>() {
            return if self.peers.contains_key(&id) {
                Ok(id)
            } else {
                Err(PeerError::UnknownPeer(id))
            };
        }
        if q.is_empty() {
            return Err(PeerError::NoMatch { query: query.to_owned() });
        }
        let name = q.to_lowercase();
        let prefix = (q.chars().count() >= MIN_PREFIX_LEN).then(|| q.to_ascii_lowercase());
        let mut matches: Vec<&Peer> = self
            .peers
            .values()
            .filter(|p| {
                p.info.name.trim().to_lowercase() == name
                    || prefix.as_ref().is_some_and(|pre| p.device_id().to_string().starts_with(pre))
            })
            .collect();
        matches.sort_by_key(|p| (p.paired_at_unix, p.device_id()));
        match matches.as_slice() {
            [] => Err(PeerError::NoMatch { query: q.to_owned() }),
            [one] => Ok(one.device_id()),
            many => Err(PeerError::Ambiguous {
                query: q.to_owned(),
                candidates: many
                    .iter()
                    .map(|p| format!("{} ({})", p.device_id(), crate::text::escaped(&p.info.name)))
                    .collect(),
            }),
        }
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use tandem_proto::DeviceKey;
    use tandem_proto::delivery::OutboxLimits;
    use tandem_proto::entropy::Entropy;
    use tandem_proto::envelope::Envelope;
    use tandem_proto::link::{Link, LinkEvent};
    use tandem_proto::message::DeviceInfo;
    use tandem_proto::pairing::{DesktopPairing, PairedPeer, PhonePairing};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn info(name: &str) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            platform: "ios".into(),
            app_version: "1.0".into(),
            ephemeral: false,
        }
    }

    fn env(bytes: &[u8]) -> Envelope {
        Envelope::decode(bytes).unwrap()
    }

    /// Pair `phone` with `desktop` through the real handshake. Returns the
    /// desktop's view of the phone and the phone's view of the desktop.
    fn pair(
        desktop: &DeviceKey,
        phone: &DeviceKey,
        phone_name: &str,
        e: &mut Entropy,
    ) -> (PairedPeer, PairedPeer) {
        let offer = DesktopPairing::new(desktop.clone(), NOW, 120, None, e).unwrap();
        let (p, hello) = PhonePairing::start(phone, offer.payload(), &info(phone_name), e).unwrap();
        let (d, welcome) = offer.on_hello(&env(&hello), &info("build-box"), NOW, e).unwrap();
        let (p, confirm) = p.on_welcome(&env(&welcome)).unwrap();
        let (desk_view, result) = d.on_confirm(&env(&confirm)).unwrap().accept(e).unwrap();
        let phone_view = p.on_result(&env(&result)).unwrap();
        (desk_view, phone_view)
    }

    struct Setup {
        dir: tempfile::TempDir,
        e: Entropy,
        desktop: DeviceKey,
    }

    impl Setup {
        fn new() -> Self {
            let mut e = Entropy::deterministic([5; 32]);
            let desktop = DeviceKey::generate(&mut e).unwrap();
            Self { dir: tempfile::tempdir().unwrap(), e, desktop }
        }

        fn open(&self) -> PeerStore {
            PeerStore::open(self.dir.path()).unwrap()
        }

        /// A new phone paired with the desktop: the desktop's `Peer` and the
        /// phone's key and `Link`.
        fn phone(&mut self, name: &str, paired_at: u64) -> (Peer, DeviceKey, Link) {
            let key = DeviceKey::generate(&mut self.e).unwrap();
            self.phone_with_key(key, name, paired_at)
        }

        fn phone_with_key(
            &mut self,
            key: DeviceKey,
            name: &str,
            paired_at: u64,
        ) -> (Peer, DeviceKey, Link) {
            let (desk_view, phone_view) = pair(&self.desktop, &key, name, &mut self.e);
            let link = Link::from_paired(desk_view, OutboxLimits::default());
            let peer = Peer::new(info(name), Scope::Submit, paired_at, link);
            (peer, key, Link::from_paired(phone_view, OutboxLimits::default()))
        }

        fn file(&self, id: &DeviceId) -> PathBuf {
            self.dir.path().join(PEERS_DIR_NAME).join(format!("{id}.json"))
        }
    }

    fn messages(events: &[LinkEvent]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|ev| match ev {
                LinkEvent::Message { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// Issue 17, fuzzing the loaders of persisted files: a peer file with
        /// bytes changed, inserted or cut never panics the store's loader;
        /// it loads (the peer intact), is set aside, or is a typed error.
        #[test]
        fn a_damaged_peer_file_loads_is_set_aside_or_is_refused(
            edits in proptest::collection::vec((0usize..1 << 16, 0u8..=255, 0u8..3), 1..6)
        ) {
            let mut s = Setup::new();
            let (peer, _, _) = s.phone("Ana's iPhone", NOW);
            let id = peer.device_id();
            let mut store = s.open();
            store.add(peer).unwrap();
            drop(store);
            let mut b = fs::read(s.file(&id)).unwrap();
            tandem_e2e::damage::apply(&mut b, &edits);
            fs::write(s.file(&id), &b).unwrap();
            if let Ok(mut store) = PeerStore::open(s.dir.path()) {
                let aside = store.take_set_aside();
                // Loaded, or set aside: exactly one.
                proptest::prop_assert!(store.get(&id).is_some() == aside.is_empty());
            }
        }
    }

    #[test]
    fn peers_add_reopen_and_the_link_still_decrypts() {
        let mut s = Setup::new();
        let (peer, phone_key, mut phone_link) = s.phone("Ana's iPhone", NOW);
        let id = peer.device_id();
        assert_eq!(id, phone_key.public().device_id());
        let mut store = s.open();
        assert!(store.is_empty());
        store.add(peer).unwrap();
        drop(store);

        let mut store = s.open();
        assert_eq!(store.len(), 1);
        let peer = store.get(&id).unwrap();
        assert_eq!(peer.public_key(), phone_key.public());
        assert_eq!(peer.info(), &info("Ana's iPhone"));
        assert_eq!(peer.name(), "Ana's iPhone");
        assert_eq!(peer.scope(), Scope::Submit);
        assert_eq!(peer.paired_at_unix(), NOW);
        assert_eq!(peer.last_seen_unix(), None);
        assert_eq!(peer.link().peer(), phone_key.public());

        // The phone seals with its side; the reloaded desktop opens it.
        let (_, record) = phone_link.send(b"hello".to_vec()).unwrap();
        let peer = store.get_mut(&id).unwrap();
        let events = peer.link_mut().receive(&s.desktop, &record, &mut s.e).unwrap();
        assert_eq!(messages(&events), vec![b"hello".to_vec()]);
        peer.mark_seen(NOW + 5);
        store.save(&id).unwrap();
        drop(store);

        // The receive state survived: the next record opens, a replay does not.
        let mut store = s.open();
        assert_eq!(store.get(&id).unwrap().last_seen_unix(), Some(NOW + 5));
        let (_, second) = phone_link.send(b"again".to_vec()).unwrap();
        let link = store.get_mut(&id).unwrap().link_mut();
        let events = link.receive(&s.desktop, &second, &mut s.e).unwrap();
        assert_eq!(messages(&events), vec![b"again".to_vec()]);
        let replay = link.receive(&s.desktop, &record, &mut s.e);
        assert!(replay.map(|ev| messages(&ev).is_empty()).unwrap_or(true));
    }

    #[test]
    fn peers_sent_message_survives_a_reload() {
        let mut s = Setup::new();
        let (peer, phone_key, mut phone_link) = s.phone("Pixel", NOW);
        let id = peer.device_id();
        let mut store = s.open();
        store.add(peer).unwrap();

        let link = store.get_mut(&id).unwrap().link_mut();
        let (seq, _record_lost_in_a_crash) = link.send(b"task event".to_vec()).unwrap();
        assert_eq!(seq, 1);
        store.save(&id).unwrap();
        assert!(!store.get(&id).unwrap().link().must_persist());
        drop(store);

        let mut store = s.open();
        let link = store.get_mut(&id).unwrap().link_mut();
        assert_eq!(link.outbound().len(), 1);
        // After the restart the message goes out again and the phone reads it.
        let resent = link.resend(0).unwrap();
        assert_eq!(resent.len(), 1);
        let events = phone_link.receive(&phone_key, &resent[0], &mut s.e).unwrap();
        assert_eq!(messages(&events), vec![b"task event".to_vec()]);
    }

    #[test]
    fn peers_files_are_private() {
        let mut s = Setup::new();
        let (peer, _, _) = s.phone("Pixel", NOW);
        let id = peer.device_id();
        let mut store = s.open();
        store.add(peer).unwrap();
        assert_eq!(mode(&s.file(&id)), 0o600);
        assert_eq!(mode(store.dir()), 0o700);
        store.touch(&id, NOW + 1).unwrap();
        assert_eq!(mode(&s.file(&id)), 0o600);
        // Only the peer file: no temporary files left behind.
        assert_eq!(fs::read_dir(store.dir()).unwrap().count(), 1);

        fs::set_permissions(s.file(&id), fs::Permissions::from_mode(0o644)).unwrap();
        let err = PeerStore::open(s.dir.path()).unwrap_err();
        assert!(matches!(err, PeerError::InsecurePermissions { mode: 0o644, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("chmod 600") && msg.contains(&s.file(&id).display().to_string()));
    }

    #[test]
    fn peers_adding_twice_needs_replace() {
        let mut s = Setup::new();
        let (first, phone_key, _) = s.phone("Pixel", NOW);
        let id = first.device_id();
        let mut store = s.open();
        store.add(first).unwrap();
        let first_session = store.get(&id).unwrap().link().session_id();

        let (again, _, _) = s.phone_with_key(phone_key.clone(), "Pixel 2", NOW + 10);
        let err = store.add(again).unwrap_err();
        assert!(
            matches!(&err, PeerError::AlreadyPaired { id: i, name } if *i == id && name == "Pixel")
        );
        assert_eq!(store.get(&id).unwrap().link().session_id(), first_session);

        let (again, _, _) = s.phone_with_key(phone_key, "Pixel 2", NOW + 10);
        let old = store.replace(again).unwrap().unwrap();
        assert_eq!(old.name(), "Pixel");
        let store = s.open();
        assert_eq!(store.len(), 1);
        assert_eq!(store.get(&id).unwrap().name(), "Pixel 2");
        assert_ne!(store.get(&id).unwrap().link().session_id(), first_session);
    }

    #[test]
    fn peers_remove_deletes_the_file() {
        let mut s = Setup::new();
        let (a, _, _) = s.phone("A", NOW);
        let (b, _, _) = s.phone("B", NOW + 1);
        let (a_id, b_id) = (a.device_id(), b.device_id());
        let mut store = s.open();
        store.add(a).unwrap();
        store.add(b).unwrap();

        let removed = store.remove(&a_id).unwrap();
        assert_eq!(removed.device_id(), a_id);
        assert_eq!(removed.name(), "A");
        assert!(!s.file(&a_id).exists());
        assert!(store.get(&a_id).is_none());
        assert!(matches!(store.remove(&a_id), Err(PeerError::UnknownPeer(i)) if i == a_id));

        let store = s.open();
        assert!(store.get(&a_id).is_none());
        assert!(store.get(&b_id).is_some());
    }

    #[test]
    fn peers_set_scope_and_touch_persist() {
        let mut s = Setup::new();
        let (peer, _, _) = s.phone("Pixel", NOW);
        let id = peer.device_id();
        let mut store = s.open();
        store.add(peer).unwrap();
        store.set_scope(&id, Scope::Approve).unwrap();
        store.touch(&id, NOW + 60).unwrap();
        let unknown = DeviceKey::from_bytes([1; 32]).public().device_id();
        assert!(matches!(store.set_scope(&unknown, Scope::View), Err(PeerError::UnknownPeer(_))));
        assert!(matches!(store.save(&unknown), Err(PeerError::UnknownPeer(_))));
        drop(store);

        let mut store = s.open();
        assert_eq!(store.get(&id).unwrap().scope(), Scope::Approve);
        assert_eq!(store.get(&id).unwrap().last_seen_unix(), Some(NOW + 60));
        store.set_scope(&id, Scope::View).unwrap();
        assert_eq!(s.open().get(&id).unwrap().scope(), Scope::View);
        let json = fs::read_to_string(s.file(&id)).unwrap();
        assert!(json.starts_with(r#"{"v":1,"peer":{"#), "{json}");
        assert!(json.contains(r#""scope":"view""#), "{json}");
    }

    #[test]
    fn peers_list_is_sorted_by_pairing_time() {
        let mut s = Setup::new();
        let mut store = s.open();
        for (name, at) in [("late", NOW + 20), ("early", NOW), ("middle", NOW + 10)] {
            store.add(s.phone(name, at).0).unwrap();
        }
        let names: Vec<&str> = store.list().iter().map(|p| p.name()).collect();
        assert_eq!(names, ["early", "middle", "late"]);
    }

    #[test]
    fn peers_resolve_by_id_prefix_and_name() {
        let mut s = Setup::new();
        let mut store = s.open();
        let (ana, _, _) = s.phone("Ana's iPhone", NOW);
        let (p1, _, _) = s.phone("Pixel", NOW + 1);
        let (p2, _, _) = s.phone("pixel", NOW + 2);
        let (ana_id, p1_id, p2_id) = (ana.device_id(), p1.device_id(), p2.device_id());
        for p in [ana, p1, p2] {
            store.add(p).unwrap();
        }
        let ana_str = ana_id.to_string();

        // Full id, any surrounding space.
        assert_eq!(store.resolve(&ana_str).unwrap(), ana_id);
        assert_eq!(store.resolve(&format!(" {ana_str}\n")).unwrap(), ana_id);
        // A prefix, in any case.
        assert_eq!(store.resolve(&ana_str[..8]).unwrap(), ana_id);
        assert_eq!(store.resolve(&ana_str[..8].to_uppercase()).unwrap(), ana_id);
        // A name, case-insensitively.
        assert_eq!(store.resolve("ANA'S IPHONE").unwrap(), ana_id);
        // Two devices with the same name.
        match store.resolve("Pixel").unwrap_err() {
            PeerError::Ambiguous { candidates, .. } => {
                assert_eq!(
                    candidates,
                    vec![format!("{p1_id} (Pixel)"), format!("{p2_id} (pixel)")]
                );
            }
            other => panic!("expected Ambiguous, got {other:?}"),
        }
        let msg = store.resolve("pixel").unwrap_err().to_string();
        assert!(msg.contains(&p1_id.to_string()) && msg.contains(&p2_id.to_string()), "{msg}");
        // Too short to be a prefix; not a name; a valid id that is not paired.
        assert!(matches!(store.resolve(&ana_str[..3]), Err(PeerError::NoMatch { .. })));
        assert!(matches!(store.resolve("nobody"), Err(PeerError::NoMatch { .. })));
        assert!(matches!(store.resolve(""), Err(PeerError::NoMatch { .. })));
        let stranger = DeviceKey::from_bytes([1; 32]).public().device_id();
        let unknown = store.resolve(&stranger.to_string());
        assert!(matches!(unknown, Err(PeerError::UnknownPeer(i)) if i == stranger));
    }

    #[test]
    fn peers_resolve_refuses_an_ambiguous_prefix() {
        // Two phone keys whose device ids share their first 4 characters.
        let mut seen: HashMap<String, DeviceKey> = HashMap::new();
        let (a, b) = (0u32..200_000)
            .find_map(|i| {
                let mut secret = [9u8; 32];
                secret[4..8].copy_from_slice(&i.to_le_bytes());
                let key = DeviceKey::from_bytes(secret);
                let prefix = key.public().device_id().to_string()[..4].to_owned();
                match seen.remove(&prefix) {
                    Some(other) => Some((other, key)),
                    None => {
                        seen.insert(prefix, key);
                        None
                    }
                }
            })
            .unwrap();
        let mut s = Setup::new();
        let mut store = s.open();
        let (a_id, b_id) = (a.public().device_id().to_string(), b.public().device_id().to_string());
        store.add(s.phone_with_key(a, "one", NOW).0).unwrap();
        store.add(s.phone_with_key(b, "two", NOW + 1).0).unwrap();

        let err = store.resolve(&a_id[..4]).unwrap_err();
        assert!(matches!(&err, PeerError::Ambiguous { candidates, .. } if candidates.len() == 2));
        let common = a_id.chars().zip(b_id.chars()).take_while(|(x, y)| x == y).count();
        assert_eq!(store.resolve(&a_id[..=common]).unwrap().to_string(), a_id);
        assert_eq!(store.resolve(&b_id[..=common]).unwrap().to_string(), b_id);
    }

    #[test]
    fn peers_corrupt_files_are_set_aside_and_reported() {
        let mut s = Setup::new();
        let (peer, _, _) = s.phone("Pixel", NOW);
        let id = peer.device_id();
        let mut store = s.open();
        store.add(peer).unwrap();
        let good = fs::read(s.file(&id)).unwrap();
        let other_id = DeviceKey::from_bytes([1; 32]).public().device_id();
        let dir = s.dir.path().join(PEERS_DIR_NAME);

        let write = |name: &str, contents: &[u8]| {
            let path = dir.join(name);
            fs::write(&path, contents).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            path
        };
        let own = format!("{id}.json");
        let bad_scope = good.replacen_bytes(br#""scope":"submit""#, br#""scope":"admin""#);
        let cases: Vec<(String, &[u8], &str)> = vec![
            (own.clone(), b"{not json", "not a peer file"),
            (own.clone(), br#"{"v":1,"peer":{"scope":"view"}}"#, "missing field"),
            (own.clone(), &bad_scope, "unknown variant"),
            ("notes.json".into(), &good, "not `<device id>.json`"),
            (format!("{other_id}.json"), &good, "not the one its name says"),
        ];
        for (name, contents, reason) in cases {
            let path = write(&name, contents);
            let mut opened = PeerStore::open(s.dir.path()).unwrap();
            let aside = opened.take_set_aside();
            assert_eq!(aside.len(), 1, "{name}");
            assert_eq!(aside[0].file, format!("peers/{name}"));
            assert!(aside[0].reason.contains(reason), "{reason}: {:?}", aside[0]);
            assert!(aside[0].describe().contains("pair it again"), "{:?}", aside[0]);
            assert!(opened.take_set_aside().is_empty(), "reported once");
            // Moved, byte for byte, out of the way of the next open.
            assert!(!path.exists());
            assert_eq!(fs::read(&aside[0].moved_to).unwrap(), contents);
            fs::remove_file(&aside[0].moved_to).unwrap();
            assert_eq!(opened.len(), usize::from(name != own));
            if name == own {
                write(&own, &good);
            }
        }
        // A newer format is not damage: refused, left as it is.
        let path = write(&own, br#"{"v":2,"peer":{}}"#);
        let err = PeerStore::open(s.dir.path()).unwrap_err();
        assert!(matches!(err, PeerError::NewerFormat { version: 2, .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        write(&own, &good);
        // Restored: loads again. Other files are ignored; leftovers are cleaned up.
        write("README", b"hello");
        write(&format!(".{id}.json.123-0.tmp"), b"partial");
        // A fresh temporary file may be another process's write: kept.
        assert_eq!(s.open().len(), 1);
        assert!(dir.join(format!(".{id}.json.123-0.tmp")).exists());
        // A stale one is an interrupted write: removed.
        std::fs::File::options()
            .write(true)
            .open(dir.join(format!(".{id}.json.123-0.tmp")))
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(120))
            .unwrap();
        let store = s.open();
        assert_eq!(store.len(), 1);
        assert!(!dir.join(format!(".{id}.json.123-0.tmp")).exists());
        assert!(dir.join("README").exists());
    }

    trait ReplaceBytes {
        fn replacen_bytes(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
    }

    impl ReplaceBytes for Vec<u8> {
        fn replacen_bytes(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
            let i = self.windows(from.len()).position(|w| w == from).unwrap();
            [&self[..i], to, &self[i + from.len()..]].concat()
        }
    }

    #[test]
    fn peers_debug_shows_no_session_secrets() {
        let mut s = Setup::new();
        let (peer, _, _) = s.phone("Pixel", NOW);
        let id = peer.device_id();
        let mut store = s.open();
        store.add(peer).unwrap();
        let shown = format!("{store:?}");
        assert!(shown.contains(&id.to_string()));
        assert!(!shown.contains("psk"), "{shown}");
        assert!(fs::read_to_string(s.file(&id)).unwrap().contains("psk"));
    }
}
