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

/// Every stored desktop; a damaged file is an error (never silently dropped).
pub(crate) fn load_all(data_dir: &Path) -> io::Result<Vec<DesktopRecord>> {
    let dir = desktops_dir(data_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let bytes = fs::read(&path)?;
        let r: DesktopRecord = serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
        })?;
        out.push(r);
    }
    out.sort_by_key(|r| r.paired_at_unix);
    Ok(out)
}
