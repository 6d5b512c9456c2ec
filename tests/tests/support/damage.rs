//! Damage to a file, as a crash, a bad disk or a bad copy leaves it.

use std::path::{Path, PathBuf};

use rand::Rng;

/// Cut `path` to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

/// Overwrite 4 KiB at a random place in the second half of `path` with
/// random bytes.
pub fn scribble(path: &Path, rng: &mut impl Rng) {
    let mut bytes = std::fs::read(path).unwrap();
    let len = bytes.len();
    let at = rng.random_range(len / 2..len.max(len / 2 + 1));
    for b in bytes.iter_mut().skip(at).take(4096) {
        *b = rng.random();
    }
    // And the header: redb checks it first.
    for b in bytes.iter_mut().take(64) {
        *b = rng.random();
    }
    std::fs::write(path, bytes).unwrap();
}

/// Replace `path` with text that is not JSON.
pub fn garbage(path: &Path) {
    std::fs::write(path, "{\"this is not\": a file this program wrote").unwrap();
}

/// The one file in `dir` whose name ends with `suffix`.
pub fn only_file(dir: &Path, suffix: &str) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(files.len(), 1, "one {suffix} file in {}: {files:?}", dir.display());
    files.into_iter().next().unwrap()
}
