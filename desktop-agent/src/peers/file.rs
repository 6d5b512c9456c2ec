//! One peer's file, `<data_dir>/peers/<device id>.json`: its format
//! (versioned), writing it atomically and privately, reading and checking
//! it, and setting a damaged one aside.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tandem_proto::DeviceId;

use super::{FORMAT_VERSION, PEERS_DIR_NAME, Peer, PeerError, io_err};
use crate::damage::SetAside;
use crate::keystore::{FileProblem, Overwrite, SecretBuf, check_private, write_private};

/// How a peer file starts, to check the version before the rest.
#[derive(Deserialize)]
struct FileVersion {
    v: u32,
}

#[derive(Serialize)]
struct PeerFileOut<'a> {
    v: u32,
    peer: &'a Peer,
}

#[derive(Deserialize)]
struct PeerFileIn {
    peer: Peer,
}

pub(super) fn file_name(id: &DeviceId) -> String {
    format!("{id}.json")
}

/// Write `peer`'s file and mark its link persisted.
pub(super) fn persist(dir: &Path, peer: &mut Peer) -> Result<(), PeerError> {
    let id = peer.device_id();
    let mut buf = SecretBuf(Vec::with_capacity(16 * 1024));
    serde_json::to_writer(&mut buf.0, &PeerFileOut { v: FORMAT_VERSION, peer })
        .map_err(|e| PeerError::Encode { id, reason: e.to_string() })?;
    buf.0.push(b'\n');
    let name = file_name(&id);
    write_private(dir, &name, &buf.0, Overwrite::Replace)
        .map_err(io_err("write", &dir.join(&name)))?;
    peer.link.mark_persisted();
    Ok(())
}

/// One `<device id>.json` file, checked against its name.
pub(super) fn load_peer(
    path: &Path,
    stem: &str,
    expected_owner: Option<u32>,
) -> Result<(DeviceId, Peer), PeerError> {
    let corrupt =
        |reason: &str| PeerError::Corrupt { path: path.to_owned(), reason: reason.into() };
    let id: DeviceId = stem.parse().map_err(|_| corrupt("its name is not `<device id>.json`"))?;
    let peer = read_peer_file(path, expected_owner)?;
    if peer.device_id() != id {
        return Err(corrupt(&format!(
            "it holds device {}, not the one its name says",
            peer.device_id()
        )));
    }
    if peer.public_key != peer.link.peer() {
        return Err(corrupt("its public key and its link's key differ"));
    }
    Ok((id, peer))
}

/// Move a damaged peer file aside ([`crate::damage`]): that device is no
/// longer paired here and must pair again.
pub(super) fn set_aside_peer(
    path: &Path,
    name: &str,
    reason: String,
) -> Result<SetAside, PeerError> {
    let moved_to = crate::damage::move_aside(path, crate::damage::now_ms())
        .map_err(io_err("set aside", path))?;
    tracing::warn!(path = %path.display(), moved_to = %moved_to.display(), %reason, "set aside a damaged peer file");
    let device = name.strip_suffix(".json").unwrap_or(name);
    Ok(SetAside {
        file: format!("{PEERS_DIR_NAME}/{name}"),
        moved_to,
        reason,
        consequence: format!("device {device} is no longer paired here: pair it again"),
    })
}

pub(super) fn read_peer_file(path: &Path, expected_owner: Option<u32>) -> Result<Peer, PeerError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("read", path))?;
    check_private(&meta, expected_owner).map_err(|p| match p {
        FileProblem::NotAFile => {
            PeerError::Corrupt { path: path.to_path_buf(), reason: "not a regular file".into() }
        }
        FileProblem::Permissions(mode) => {
            PeerError::InsecurePermissions { path: path.to_path_buf(), mode }
        }
        FileProblem::Owner { owner, expected } => {
            PeerError::WrongOwner { path: path.to_path_buf(), owner, expected }
        }
    })?;
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut buf = SecretBuf(Vec::with_capacity(capacity));
    file.read_to_end(&mut buf.0).map_err(io_err("read", path))?;
    let corrupt = |reason: String| PeerError::Corrupt { path: path.to_path_buf(), reason };
    let version: FileVersion =
        serde_json::from_slice(&buf.0).map_err(|e| corrupt(format!("not a peer file: {e}")))?;
    if version.v != FORMAT_VERSION {
        return Err(PeerError::NewerFormat { path: path.to_path_buf(), version: version.v });
    }
    let file: PeerFileIn = serde_json::from_slice(&buf.0).map_err(|e| corrupt(e.to_string()))?;
    Ok(file.peer)
}
