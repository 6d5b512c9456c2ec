//! The phone's state on disk: one 0600 JSON file per paired desktop with
//! its end-to-end `Link` and, per task, the next event offset expected.
//! Files are written atomically (temporary file, fsync, rename, fsync dir).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_proto::link::Link;
use tandem_proto::message::DeviceInfo;

/// One paired desktop, as stored.
#[derive(Serialize, Deserialize)]
pub(crate) struct DesktopRecord {
    /// Its device id (base32).
    pub(crate) desktop_id: String,
    /// What it calls itself.
    pub(crate) info: DeviceInfo,
    /// The relay it is reached through.
    pub(crate) relay_url: String,
    /// When it was paired (Unix seconds).
    pub(crate) paired_at_unix: u64,
    /// The end-to-end link.
    pub(crate) link: Link,
    /// Per task, the next event offset this phone expects.
    #[serde(default)]
    pub(crate) offsets: BTreeMap<String, u64>,
    /// Tasks seen finishing, oldest first: forgotten first when the offsets
    /// reach their cap ([`crate::offsets::MAX_TASKS`]).
    #[serde(default)]
    pub(crate) finished: Vec<String>,
}

/// A desktop file that could not be read, moved aside so that the others
/// open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetAside {
    /// The desktop it was for (the file's name).
    pub(crate) desktop_id: String,
    /// Where it is now (`<name>.damaged-<unix seconds>`), if the rename
    /// worked.
    pub(crate) moved_to: Option<PathBuf>,
    /// What was wrong with it.
    pub(crate) reason: String,
}

pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    crate::secrets::write_all_sync(&mut f, bytes)?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// The desktops directory.
pub(crate) fn desktops_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("desktops")
}

fn file(data_dir: &Path, id: &str) -> PathBuf {
    desktops_dir(data_dir).join(format!("{id}.json"))
}

pub(crate) fn save(data_dir: &Path, r: &DesktopRecord) -> io::Result<()> {
    fail::fail_point!("phone.save", |_| Err(io::Error::other("phone.save failpoint")));
    create_private_dir(&desktops_dir(data_dir))?;
    let bytes = serde_json::to_vec(r).map_err(io::Error::other)?;
    write_private(&file(data_dir, &r.desktop_id), &bytes)
}

pub(crate) fn remove(data_dir: &Path, id: &str) -> io::Result<()> {
    match fs::remove_file(file(data_dir, id)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// One stored desktop, if its file exists.
pub(crate) fn load_one(data_dir: &Path, id: &str) -> io::Result<Option<DesktopRecord>> {
    match fs::read(file(data_dir, id)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every stored desktop, and the files that could not be read: each of
/// those is renamed `<name>.damaged-<unix seconds>` (kept for a person to
/// look at, never read again) and reported, so that one damaged file does
/// not stop the phone from opening with the others. Only a desktops
/// directory that cannot be listed is an error.
pub(crate) fn load_all(data_dir: &Path) -> io::Result<(Vec<DesktopRecord>, Vec<SetAside>)> {
    let dir = desktops_dir(data_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut set_aside = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        // A file that cannot be read now (permissions, a locked device, an
        // I/O error) is an error, not damage: setting it aside would drop
        // that desktop's messages for a passing failure. Only a file read
        // whole that does not parse, or names another desktop, is damaged.
        let bytes = fs::read(&path)?;
        let read = serde_json::from_slice::<DesktopRecord>(&bytes);
        let reason = match read {
            Ok(r)
                if r.desktop_id == stem
                    && r.desktop_id.parse::<tandem_proto::DeviceId>().is_ok() =>
            {
                out.push(r);
                continue;
            }
            Ok(r) => {
                format!("it names desktop {:?}, not a valid id matching its file", r.desktop_id)
            }
            Err(e) => e.to_string(),
        };
        set_aside.push(move_aside(&path, stem, reason));
    }
    out.sort_by_key(|r| r.paired_at_unix);
    Ok((out, set_aside))
}

/// Rename a damaged file out of the way (`<name>.damaged-<unix seconds>`).
fn move_aside(path: &Path, desktop_id: String, reason: String) -> SetAside {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("desktop");
    let to = path.with_file_name(format!("{name}.damaged-{now}"));
    let moved_to = match fs::rename(path, &to) {
        Ok(()) => Some(to),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot move a damaged desktop file aside");
            None
        }
    };
    SetAside { desktop_id, moved_to, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real record: the phone's side of a link paired through the
    /// public API, stored as `save` stores it.
    fn real_record_bytes() -> (String, Vec<u8>) {
        use tandem_proto::DeviceKey;
        use tandem_proto::delivery::OutboxLimits;
        use tandem_proto::entropy::Entropy;
        use tandem_proto::envelope::Envelope;
        use tandem_proto::link::Link;
        use tandem_proto::pairing::{DesktopPairing, PhonePairing};
        const NOW: u64 = 1_800_000_000;
        let env = |b: &[u8]| Envelope::decode(b).unwrap();
        let info = |name: &str| DeviceInfo {
            name: name.into(),
            platform: "linux".into(),
            app_version: "1.0".into(),
            ephemeral: false,
        };
        let mut e = Entropy::deterministic([8; 32]);
        let desktop = DeviceKey::generate(&mut e).unwrap();
        let phone = DeviceKey::generate(&mut e).unwrap();
        let offer = DesktopPairing::new(desktop.clone(), NOW, 120, None, &mut e).unwrap();
        let (p, hello) =
            PhonePairing::start(&phone, offer.payload(), &info("phone"), &mut e).unwrap();
        let (d, welcome) = offer.on_hello(&env(&hello), &info("desk"), NOW, &mut e).unwrap();
        let (p, confirm) = p.on_welcome(&env(&welcome)).unwrap();
        let (_, result) = d.on_confirm(&env(&confirm)).unwrap().accept(&mut e).unwrap();
        let paired = p.on_result(&env(&result)).unwrap();
        let id = desktop.public().device_id().to_string();
        let r = DesktopRecord {
            desktop_id: id.clone(),
            info: info("desk"),
            relay_url: "wss://relay.example.com/v1/connect".into(),
            paired_at_unix: NOW,
            link: Link::from_paired(paired, OutboxLimits::default()),
            offsets: BTreeMap::new(),
            finished: Vec::new(),
        };
        (id, serde_json::to_vec(&r).unwrap())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        /// Issue 17, fuzzing the loaders of persisted files: a desktop file
        /// with bytes changed, inserted or cut never panics `load_all`; it
        /// loads or is set aside, exactly one.
        #[test]
        fn a_damaged_desktop_file_loads_or_is_set_aside(
            edits in proptest::collection::vec((0usize..1 << 16, 0u8..=255, 0u8..3), 1..6)
        ) {
            let (id, mut b) = real_record_bytes();
            tandem_e2e::damage::apply(&mut b, &edits);
            let dir = tempfile::tempdir().unwrap();
            create_private_dir(&desktops_dir(dir.path())).unwrap();
            write_private(&file(dir.path(), &id), &b).unwrap();
            let (loaded, aside) = load_all(dir.path()).unwrap();
            proptest::prop_assert_eq!(loaded.len() + aside.len(), 1);
        }
    }

    /// A file that cannot be read now is an error, never set aside: only
    /// what was read and does not parse is damage.
    #[test]
    fn a_file_that_cannot_be_read_is_an_error_and_stays_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let desktops = desktops_dir(dir.path());
        create_private_dir(&desktops).unwrap();
        // Reading a directory fails (EISDIR), as a locked or failing file
        // would; root ignores permission bits, so a mode cannot stand in.
        fs::create_dir(desktops.join("BBBB.json")).unwrap();
        assert!(load_all(dir.path()).is_err());
        let names: Vec<_> =
            fs::read_dir(&desktops).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("BBBB.json")], "nothing renamed");
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_the_others_load() {
        let dir = tempfile::tempdir().unwrap();
        let desktops = desktops_dir(dir.path());
        create_private_dir(&desktops).unwrap();
        fs::write(desktops.join("AAAA.json"), b"{ not json").unwrap();
        fs::write(desktops.join("notes.txt"), b"ignored").unwrap();
        let (loaded, aside) = load_all(dir.path()).unwrap();
        assert!(loaded.is_empty());
        assert_eq!(aside.len(), 1);
        assert_eq!(aside[0].desktop_id, "AAAA");
        let moved = aside[0].moved_to.clone().unwrap();
        assert!(moved.file_name().unwrap().to_str().unwrap().starts_with("AAAA.json.damaged-"));
        assert!(moved.exists() && !desktops.join("AAAA.json").exists());
        // Set aside once: the next open finds nothing to report.
        assert_eq!(load_all(dir.path()).unwrap().1, Vec::new());
    }
}
