//! Power loss: what a process wrote but never made durable is dropped when
//! it is killed, as a power cut would drop it (the page cache survives a
//! `kill -9`, so a kill alone proves nothing about fsync).
//!
//! The seam is `powerloss.c`, an `LD_PRELOAD` shim the suite compiles with
//! `cc` ([`shim`]): every change under one watched directory (a write, a
//! size change, a new, renamed or removed name) goes through to the file
//! system, after the shim journals what it is about to change; an fsync of
//! a file makes its bytes and length durable, an fsync of a directory the
//! names in it. [`Watched::roll_back`], run after the kill and before the
//! restart, puts back everything not made durable: bytes, lengths, then
//! names, newest first — the strictest reading of POSIX (a new or renamed
//! name needs its directory fsynced; ext4 is often kinder).
//!
//! The shim can also make the process kill itself right after its `n`-th
//! change from a given moment ([`Watched::crash_after`]): power lost at the
//! worst moment, between a write and the fsync meant to follow it, which an
//! outside `kill -9` at a random time seldom hits.
//!
//! Not modelled: a write that reached the disk in part (torn pages: each
//! change is dropped whole), reordering among durable writes, writes
//! through `mmap` (nothing watched uses it), and an outside kill landing
//! between a rename and its journal record (the record follows the
//! rename, under the shim's lock: that rename is then kept).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The shim, compiled once per test process (into the directory of the
/// test binary, named by its source's hash so that an edit rebuilds it).
pub fn shim() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/powerloss.c");
        let text = std::fs::read(&src).unwrap();
        let hash = text.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        let exe = std::env::current_exe().unwrap();
        let out = exe.parent().unwrap().join(format!("tandem-powerloss-{hash:016x}.so"));
        if !out.exists() {
            let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
            let status = Command::new("cc")
                .args(["-shared", "-fPIC", "-O1", "-o"])
                .arg(&tmp)
                .arg(&src)
                .args(["-ldl", "-lpthread"])
                .status()
                .expect("cc (gcc) is needed to build the power-loss shim");
            assert!(status.success(), "cc failed on {}", src.display());
            std::fs::rename(&tmp, &out).unwrap();
        }
        out
    })
    .clone()
}

/// One process's watched data directory and its journal.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The data directory (canonical).
    pub dir: PathBuf,
    journal: PathBuf,
    grave: PathBuf,
}

/// What a roll-back dropped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Dropped {
    /// Files whose bytes or length went back to their last fsync.
    pub files: u64,
    /// Bytes put back (the old contents of overwritten ranges) plus bytes
    /// cut off (appended, never synced).
    pub bytes: u64,
    /// Names undone (created, renamed or removed, the directory never
    /// synced after).
    pub names: u64,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} files ({} bytes), {} names", self.files, self.bytes, self.names)
    }
}

/// A change the journal announced and no fsync made durable yet.
enum Name {
    Created(PathBuf),
    Renamed { from: PathBuf, to: PathBuf, grave: String },
    Removed { path: PathBuf, grave: String },
}

#[derive(Default)]
struct Pending {
    size: Option<u64>,
    undo: Vec<(u64, Vec<u8>)>,
}

impl Watched {
    /// Watch `data_dir` (created if missing); the journal and the grave
    /// (where replaced names are kept) go in `work/powerloss-<name>`.
    pub fn new(data_dir: &Path, work: &Path, name: &str) -> Watched {
        std::fs::create_dir_all(data_dir).unwrap();
        let base = work.join(format!("powerloss-{name}"));
        let grave = base.join("grave");
        std::fs::create_dir_all(&grave).unwrap();
        Watched { dir: data_dir.canonicalize().unwrap(), journal: base.join("journal"), grave }
    }

    /// The environment that puts a process under the seam.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("LD_PRELOAD".into(), s(&shim())),
            ("TANDEM_POWERLOSS_DIR".into(), s(&self.dir)),
            ("TANDEM_POWERLOSS_JOURNAL".into(), s(&self.journal)),
            ("TANDEM_POWERLOSS_GRAVE".into(), s(&self.grave)),
        ]
    }

    /// Have the process kill itself (SIGKILL) right after its `n`-th
    /// watched change from now on, before any fsync can follow it.
    pub fn crash_after(&self, n: u64) {
        std::fs::write(self.crash_file(), n.to_string()).unwrap();
    }

    /// Take back a [`Watched::crash_after`] the process never reached.
    pub fn disarm(&self) {
        let _ = std::fs::remove_file(self.crash_file());
    }

    fn crash_file(&self) -> PathBuf {
        let mut name = self.journal.as_os_str().to_owned();
        name.push(".crash");
        name.into()
    }

    /// The journal's size so far (to tell that the shim is at work).
    pub fn journal_len(&self) -> u64 {
        std::fs::metadata(&self.journal).map(|m| m.len()).unwrap_or(0)
    }

    /// After the process was killed: drop everything it wrote under the
    /// directory since the last fsync, then start a new journal (what is
    /// on disk now is what a restarted machine finds: all durable).
    pub fn roll_back(&self) -> Dropped {
        let bytes = std::fs::read(&self.journal).unwrap_or_default();
        let (data, names) = parse(&bytes);
        let mut dropped = Dropped::default();
        // Bytes and lengths first, on whatever name holds the inode now.
        let mut where_is = HashMap::new();
        index(&self.dir, &mut where_is);
        index(&self.grave, &mut where_is);
        for (key, p) in data {
            let Some(path) = where_is.get(&key) else { continue };
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let now = f.metadata().unwrap().len();
            for (off, old) in p.undo.iter().rev() {
                std::os::unix::fs::FileExt::write_all_at(&f, old, *off).unwrap();
                dropped.bytes += old.len() as u64;
            }
            if let Some(size) = p.size {
                dropped.bytes += now.saturating_sub(size);
                f.set_len(size).unwrap();
            }
            f.sync_all().unwrap();
            dropped.files += 1;
        }
        // Then names, newest first.
        for n in names.into_iter().rev() {
            dropped.names += 1;
            match n {
                Name::Created(p) => {
                    if p.is_dir() {
                        let _ = std::fs::remove_dir_all(&p);
                    } else {
                        let _ = std::fs::remove_file(&p);
                    }
                }
                Name::Renamed { from, to, grave } => {
                    let _ = std::fs::rename(&to, &from);
                    if grave == "dir" {
                        let _ = std::fs::create_dir(&to);
                    } else if !grave.is_empty() {
                        let _ = std::fs::rename(&grave, &to);
                    }
                }
                Name::Removed { path, grave } => {
                    if grave == "dir" {
                        let _ = std::fs::create_dir(&path);
                    } else if !grave.is_empty() {
                        let _ = std::fs::rename(&grave, &path);
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&self.journal);
        let _ = std::fs::remove_dir_all(&self.grave);
        std::fs::create_dir_all(&self.grave).unwrap();
        dropped
    }
}

/// Every file under `dir` by `(dev, ino)`.
fn index(dir: &Path, out: &mut HashMap<(u64, u64), PathBuf>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
        if m.is_dir() {
            index(&e.path(), out);
        } else if m.is_file() {
            out.entry((m.dev(), m.ino())).or_insert(e.path());
        }
    }
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

/// The journal read in order: per file, what no fsync made durable; the
/// name changes no directory fsync made durable, oldest first. A torn last
/// record (the kill cut the shim's own write) announced a change that was
/// never made, and is ignored.
fn parse(mut b: &[u8]) -> (HashMap<(u64, u64), Pending>, Vec<Name>) {
    let mut data: HashMap<(u64, u64), Pending> = HashMap::new();
    // Each name change with the directories whose fsync it still waits for.
    let mut names: Vec<(Name, Vec<PathBuf>)> = Vec::new();
    let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
    while b.len() >= 5 {
        let kind = b[0];
        let len = u32::from_le_bytes(b[1..5].try_into().unwrap()) as usize;
        if b.len() < 5 + len {
            break;
        }
        let r = &b[5..5 + len];
        b = &b[5 + len..];
        let text = |r: &[u8]| -> Vec<String> {
            r.split(|c| *c == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
        };
        match kind {
            b'D' => {
                let p = data.entry((u64_at(r, 0), u64_at(r, 8))).or_default();
                p.size.get_or_insert(u64_at(r, 16));
            }
            b'U' => {
                let p = data.entry((u64_at(r, 0), u64_at(r, 8))).or_default();
                p.undo.push((u64_at(r, 16), r[24..].to_vec()));
            }
            b'S' => {
                data.remove(&(u64_at(r, 0), u64_at(r, 8)));
            }
            b'C' => {
                let p = PathBuf::from(&text(r)[0]);
                let dirs = vec![parent(&p)];
                names.push((Name::Created(p), dirs));
            }
            b'R' => {
                let t = text(r);
                let (from, to) = (PathBuf::from(&t[0]), PathBuf::from(&t[1]));
                let mut dirs = vec![parent(&from), parent(&to)];
                dirs.dedup();
                let grave = t.get(2).cloned().unwrap_or_default();
                names.push((Name::Renamed { from, to, grave }, dirs));
            }
            b'X' => {
                let t = text(r);
                let path = PathBuf::from(&t[0]);
                let dirs = vec![parent(&path)];
                let grave = t.get(1).cloned().unwrap_or_default();
                names.push((Name::Removed { path, grave }, dirs));
            }
            b'Y' => {
                let d = PathBuf::from(&text(r)[0]);
                for (_, dirs) in &mut names {
                    dirs.retain(|x| *x != d);
                }
                names.retain(|(_, dirs)| !dirs.is_empty());
            }
            _ => break,
        }
    }
    (data, names.into_iter().map(|(n, _)| n).collect())
}

/// The helper process of the seam's own test (`powerloss_writer_process`):
/// with `TANDEM_POWERLOSS_WRITER` set to a directory, it makes each kind
/// of change there, some made durable and some not, prints `written` and
/// waits to be killed.
pub fn writer_if_asked() {
    use std::io::Write;
    let Ok(dir) = std::env::var("TANDEM_POWERLOSS_WRITER") else { return };
    let dir = PathBuf::from(dir);
    let sync_dir = || std::fs::File::open(&dir).unwrap().sync_all().unwrap();
    // New, never synced, but its name made durable by the directory fsync
    // below: there, empty.
    std::fs::write(dir.join("new-unsynced"), b"lost").unwrap();
    // New, synced with its directory: kept.
    let mut f = std::fs::File::create(dir.join("new-synced")).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_all().unwrap();
    sync_dir();
    // Existing, replaced by a synced temporary file renamed over it, the
    // directory synced: the new file.
    let replace = |name: &str| {
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(b"replaced").unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    };
    replace("old-renamed-over-synced");
    sync_dir();
    // No directory fsync from here on.
    // Existing, overwritten without fsync: the old bytes.
    std::fs::write(dir.join("old-overwritten"), b"new!").unwrap();
    // Existing, appended and synced (fdatasync), then appended again: the
    // first append only.
    let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("old-appended")).unwrap();
    f.write_all(b"+synced").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"+unsynced").unwrap();
    // Cut short with set_len, not synced: its old length and bytes.
    let f = std::fs::OpenOptions::new().write(true).open(dir.join("old-cut")).unwrap();
    f.set_len(2).unwrap();
    // Existing, replaced the same way, the directory not synced: the old
    // file (and no temporary).
    replace("old-renamed-over");
    // Existing, removed without a directory fsync: back.
    std::fs::remove_file(dir.join("old-removed")).unwrap();
    // A new directory with a synced file in it, the parent never synced:
    // all gone.
    std::fs::create_dir(dir.join("new-dir")).unwrap();
    let mut f = std::fs::File::create(dir.join("new-dir/file")).unwrap();
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    std::fs::File::open(dir.join("new-dir")).unwrap().sync_all().unwrap();
    // New, never synced, no directory fsync after it: gone.
    std::fs::write(dir.join("new-unsynced-last"), b"lost").unwrap();
    println!("written");
    std::thread::sleep(std::time::Duration::from_secs(120));
}
