//! A tamper-evident, append-only log of every remote instruction and every
//! decision the agent takes: pairings, revocations, scope changes, tasks and
//! their follow-ups, cancellations, approvals and task results.
//!
//! # What is (not) recorded
//!
//! Events carry ids, names, codes and statuses, never the text of a task, a
//! follow-up or an approval summary: those appear only as [`text_hash`]
//! (and, for a task, the text's length in bytes), so the log never becomes a
//! second copy of sensitive prompts. The hash is unkeyed, so whoever holds
//! the log can confirm a *guessed* text; short or predictable texts are
//! therefore not secret from a reader of the log (they are still not in it).
//!
//! # File format
//!
//! `<data_dir>/audit.log` ([`FILE_NAME`]), mode 0600, one JSON object per
//! line, each line ending in `\n` (including the last). A line is the compact
//! `serde_json` encoding of an [`AuditEntry`], with its members in this
//! fixed order:
//!
//! ```text
//! {"seq":3,"at_ms":1700000000000,"event":"task_submitted","device":"…","task_id":"…",
//!  "executor":null,"text_hash":"…","text_len":42,"prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! (shown wrapped; a real line has no whitespace outside strings). `event`
//! names the [`AuditEvent`] variant in snake case and is followed by that
//! variant's fields in declaration order. Strings are escaped the way
//! `serde_json` escapes them (`"`, `\` and control characters only; other
//! characters as raw UTF-8). Hashes are lowercase hex.
//!
//! # The chain
//!
//! * `seq` counts from 1 with no gaps; `at_ms` (Unix milliseconds) never
//!   decreases.
//! * `prev` is the previous line's `hash`; the first line's `prev` is
//!   [`GENESIS_PREV`] (64 zeros).
//! * `hash` is BLAKE2s-256 over
//!   `CHAIN_LABEL ‖ 0x00 ‖ prev (32 raw bytes) ‖ canonical bytes`
//!   ([`CHAIN_LABEL`] is `tandem audit v1`; this is
//!   [`tandem_proto::kdf::hash`]), where the **canonical bytes** are the line
//!   itself without its trailing `\n` and without its last member
//!   `,"hash":"<64 hex>"`: i.e. the line with its final 75 bytes
//!   (`,"hash":"`, 64 hex digits, `"}`) replaced by `}`.
//!
//! To re-verify with another tool: for each line, check it ends in `\n`,
//! strip the final `,"hash":"…"` member as above, check that the line's
//! `prev` equals the previous line's `hash` (genesis for the first), hash
//! as above and compare with the line's `hash`, then check `seq` and
//! `at_ms`. This module also requires every line to be exactly the encoding
//! it would write for the entry it parses to, so that an extra member,
//! reordered members or re-escaped characters are reported too.
//!
//! [`verify`] reports the *first* bad line and why ([`BrokenReason`]): an
//! edited line fails its own hash ([`BrokenReason::HashMismatch`]) or does
//! not parse; a deleted, duplicated or reordered line breaks the link to
//! its predecessor ([`BrokenReason::PrevMismatch`]).
//!
//! What the chain does and does not prove: it detects any change to part
//! of the log, but it is not keyed, so someone able to write the file can
//! rewrite it from some line to the end (recomputing every later hash), or
//! cut lines off its end. To detect that, note the `last_hash` that
//! [`verify`] reports somewhere else (a second machine, a ticket) and
//! check later that an entry with that hash is still in the log.
//!
//! # Interrupted writes
//!
//! Each append is a single `write` of the whole line followed by an fsync. A
//! crash can still leave a partial last line (no `\n`). [`verify`] reports
//! it as [`AuditError::Truncated`], distinct from tampering, and
//! [`AuditLog::open`] refuses to append after it (appending would bury the
//! partial line mid-file, where it would look like tampering). The partial
//! line is an event whose append never completed; [`discard_partial_line`]
//! removes it (and nothing else, and only when everything before it
//! verifies). Any other damage makes [`AuditLog::open`] refuse with
//! [`AuditError::Broken`].
//!
//! # Damage
//!
//! The agent does not stop on a damaged log: it opens it with
//! [`AuditLog::open_or_set_aside`], which copies everything from the first
//! bad line (partial or failing verification) to the end into
//! `audit.log.damaged-<unix ms>` next to it, cuts the log back to its last
//! good entry, and appends a `set_aside` entry naming that file. The bad
//! lines are evidence: they are kept, byte for byte, never edited in place.
//!
//! # Rotation
//!
//! When an append finds `audit.log` at or over its rotation size (default
//! [`DEFAULT_MAX_SEGMENT_BYTES`], `[agent] audit_max_bytes`), the file is
//! kept as `audit.log.<n>` (`n` from 1, one more each time) and a new
//! `audit.log` continues the chain: its first entry's `prev` is the last
//! hash of the segment before and `seq` goes on. Segments are never
//! deleted. [`verify_all`] (`tandem audit verify`) checks every segment in
//! order and then `audit.log`; [`verify`] checks one file that starts at
//! genesis.
//!
//! `audit.checkpoint` ([`CHECKPOINT_NAME`]) records the chain's state where
//! `audit.log` starts and after a verified prefix of it (offset, entry
//! count, last hash). [`AuditLog::open`] trusts it when the file's first
//! line continues from that start and the line ending at the offset is the
//! recorded entry, and verifies only what follows; otherwise it verifies
//! every segment from the first. So an edit inside the verified prefix is
//! found by `tandem audit verify`, not by every open.
//!
//! # Concurrency
//!
//! Several [`AuditLog`]s (in one process or several) may append to the same
//! file: each append takes an exclusive advisory lock on the file, first
//! reads and verifies any lines others appended since, then writes. [`open`]
//! and [`verify`] read under a shared lock, so they never see a line that
//! is being written. Appends are synchronous and fsync; async callers run
//! them where blocking is fine (they are rare).
//!
//! [`open`]: AuditLog::open

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_proto::kdf;
use thiserror::Error;

use crate::keystore::{create_private_dir, sync_dir};

mod recover;
mod segments;

pub use segments::{CHECKPOINT_NAME, DEFAULT_MAX_SEGMENT_BYTES, segments, verify_all};

/// The audit log's file name inside the data directory.
pub const FILE_NAME: &str = "audit.log";

/// Domain-separation label of the chain hash (see the module docs).
pub const CHAIN_LABEL: &str = "tandem audit v1";

/// Domain-separation label of [`text_hash`] (`tandem audit text v1`).
pub const TEXT_LABEL: &str = "tandem audit text v1";

/// The first entry's `prev`: 32 zero bytes in hex.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest excerpt of a file's contents quoted in a [`BrokenReason`].
const MAX_QUOTE: usize = 80;

/// One recorded instruction or decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A pairing was confirmed.
    Paired {
        /// The new peer's device id.
        device: String,
        /// The name it presented.
        name: String,
        /// The scope the desktop user gave it (absent in entries written
        /// before the scope was chosen at pairing: those got `approve`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// Whether it keeps its keys only while it runs (written when true).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
    },
    /// A pairing was refused (SAS mismatch, user said no, timeout).
    PairingRefused {
        /// The would-be peer's device id.
        device: String,
    },
    /// A paired device was revoked.
    Revoked {
        /// The revoked device id.
        device: String,
    },
    /// The agent decided on its own to forget a device, and revoked it (the
    /// `revoked` entry comes first): an ephemeral device gone too long, or a
    /// pairing that never finished.
    Forgotten {
        /// The device id.
        device: String,
        /// Why, for a person: `ephemeral device gone for 43200 s`, …
        reason: String,
    },
    /// A device's scope was changed.
    ScopeChanged {
        /// The device id.
        device: String,
        /// Its new scope.
        scope: String,
    },
    /// A device submitted a task and it was accepted.
    TaskSubmitted {
        /// The submitting device id.
        device: String,
        /// The task id.
        task_id: String,
        /// The executor requested, if any.
        executor: Option<String>,
        /// [`text_hash`] of the task text (never the text itself).
        text_hash: String,
        /// The task text's length in bytes.
        text_len: usize,
        /// The phone's message it came from, `<device>@<pairing tag>#<seq>`
        /// (absent for the desktop's own, and in older lines): a message
        /// delivered again after a crash is not audited twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instruction: Option<String>,
    },
    /// A device submitted a task and it was refused.
    TaskRefused {
        /// The submitting device id.
        device: String,
        /// The task id.
        task_id: String,
        /// Why (an error code).
        code: String,
    },
    /// A device sent a follow-up to a running task.
    FollowUp {
        /// The sending device id.
        device: String,
        /// The task id.
        task_id: String,
        /// [`text_hash`] of the follow-up text.
        text_hash: String,
        /// The phone's message it came from, `<device>@<pairing tag>#<seq>`
        /// (absent for the desktop's own, and in older lines): a message
        /// delivered again after a crash is not audited twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instruction: Option<String>,
    },
    /// A task was cancelled.
    Cancelled {
        /// Who cancelled: a device id or `desktop`.
        by: String,
        /// The task id.
        task_id: String,
        /// The phone's message it came from, `<device>@<pairing tag>#<seq>`
        /// (absent for the desktop's own, and in older lines): a message
        /// delivered again after a crash is not audited twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instruction: Option<String>,
    },
    /// A task asked for approval of an action.
    ApprovalRequested {
        /// The task id.
        task_id: String,
        /// The approval id.
        approval_id: String,
        /// [`text_hash`] of the summary shown to the approver.
        summary_hash: String,
    },
    /// An approval was decided.
    ApprovalDecided {
        /// The task id.
        task_id: String,
        /// The approval id.
        approval_id: String,
        /// Whether the action was allowed.
        allow: bool,
        /// Who decided: a device id, `desktop` or `timeout`.
        by: String,
    },
    /// A task ended.
    TaskFinished {
        /// The task id.
        task_id: String,
        /// How it ended.
        status: String,
    },
    /// The desktop stopped a task because the device it runs for lost the
    /// right to run tasks: cancelled while running, or dropped from the
    /// queue before it started (its `task_finished` follows).
    TaskStopped {
        /// The task id.
        task_id: String,
        /// The device it ran for.
        device: String,
        /// `revoked` (no longer paired) or `scope:<scope>` (lowered below
        /// `submit`).
        reason: String,
        /// `running` (cancelled) or `queued` (dropped, never started).
        was: String,
    },
    /// Damaged local state was set aside at start ([`crate::damage`]):
    /// the agent started without it.
    SetAside {
        /// The damaged file (`audit.log`, `peers/<device id>.json`,
        /// `tasks.redb`).
        file: String,
        /// The name it (or its damaged tail) has now, in the same directory.
        moved_to: String,
        /// What was wrong.
        reason: String,
    },
    /// A phone's messages were lost before they reached this desktop (its
    /// link reported a gap it cannot fill: `ResyncNeeded`).
    MessagesLost {
        /// The phone.
        device: String,
        /// The first lost sequence number.
        from: u64,
        /// The last lost sequence number.
        to: u64,
    },
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When, in Unix milliseconds (never less than the previous entry's).
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// The previous entry's `hash` (hex), or [`GENESIS_PREV`].
    pub prev: String,
    /// This entry's chain hash (hex); see the module docs.
    pub hash: String,
}

/// An entry without its hash: serialized, these are the canonical bytes.
/// Same members in the same order as [`AuditEntry`], minus `hash`.
#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    at_ms: u64,
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: &'a str,
}

/// A successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of entries (lines).
    pub entries: u64,
    /// The last entry's hash ([`GENESIS_PREV`] for an empty log): note it
    /// elsewhere to detect a later rewrite of the log's end.
    pub last_hash: String,
    /// The first entry's timestamp, if any.
    pub first_at_ms: Option<u64>,
    /// The last entry's timestamp, if any.
    pub last_at_ms: Option<u64>,
}

/// Why a line fails verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokenReason {
    /// Not an entry: not JSON, an unknown event, a missing member…
    Unparsable(String),
    /// An entry, but not encoded exactly as this module writes it (extra or
    /// reordered members, whitespace, different escaping).
    NotCanonical,
    /// `prev` is not the previous line's hash: a line before it was
    /// deleted, duplicated or moved, or `prev` itself was edited.
    PrevMismatch {
        /// The previous line's hash (or genesis).
        expected: String,
        /// This line's `prev` (an excerpt).
        found: String,
    },
    /// `hash` does not match the line's contents: the line was edited.
    HashMismatch {
        /// The hash of the line as it is.
        computed: String,
        /// This line's `hash` (an excerpt).
        stored: String,
    },
    /// `seq` is not one more than the previous line's.
    SeqGap {
        /// The previous `seq` plus one.
        expected: u64,
        /// This line's `seq`.
        found: u64,
    },
    /// `at_ms` is less than the previous line's.
    TimeWentBackwards {
        /// The previous line's `at_ms`.
        previous: u64,
        /// This line's `at_ms`.
        found: u64,
    },
    /// The file is shorter than when this [`AuditLog`] last read or wrote it.
    Shrank {
        /// Its length then, in bytes.
        was: u64,
        /// Its length now.
        now: u64,
    },
}

impl fmt::Display for BrokenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unparsable(why) => write!(f, "not a valid entry ({why})"),
            Self::NotCanonical => f.write_str("entry is not in canonical form (edited)"),
            Self::PrevMismatch { expected, found } => write!(
                f,
                "prev {found} is not the previous entry's hash {expected} \
                 (an entry before it was deleted, duplicated or moved, or this one was edited)"
            ),
            Self::HashMismatch { computed, stored } => write!(
                f,
                "hash {stored} does not match the entry's contents, which hash to {computed} \
                 (the entry was edited)"
            ),
            Self::SeqGap { expected, found } => {
                write!(f, "sequence number {found}, expected {expected}")
            }
            Self::TimeWentBackwards { previous, found } => {
                write!(f, "timestamp {found} ms is before the previous entry's {previous} ms")
            }
            Self::Shrank { was, now } => {
                write!(f, "the file shrank from {was} to {now} bytes since it was last read")
            }
        }
    }
}

/// What went wrong with the audit log.
#[derive(Debug, Error)]
pub enum AuditError {
    /// A filesystem operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("open", "read", …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The log fails verification at `line` (1-based); nothing is appended
    /// to it until that is dealt with.
    #[error(
        "audit log broken at line {line}: {reason}; nothing more is appended to it until this \
         is dealt with (`tandem audit verify` checks it)"
    )]
    Broken {
        /// The first bad line, from 1.
        line: u64,
        /// What is wrong with it.
        reason: BrokenReason,
    },
    /// The last line, `line`, is incomplete (a write was interrupted); the
    /// lines before it verify.
    #[error(
        "audit log ends with an incomplete line {line} (a write was interrupted, e.g. by a \
         crash); the entries before it are intact; nothing more is appended until the partial \
         line is removed"
    )]
    Truncated {
        /// The partial line, from 1.
        line: u64,
    },
    /// An entry could not be encoded (not expected to happen).
    #[error("could not encode an audit entry: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Hex of the domain-separated BLAKE2s-256 of `text` ([`TEXT_LABEL`]): what
/// the log records instead of a task, follow-up or summary text.
#[must_use]
pub fn text_hash(text: &str) -> String {
    hex(&kdf::hash(TEXT_LABEL, &[text.as_bytes()]))
}

/// The append-only audit log of one data directory.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    chain: Chain,
    /// Rotate `audit.log` once it holds this many bytes.
    max_bytes: u64,
}

impl AuditLog {
    /// Open (creating it, mode 0600, and `data_dir`, mode 0700, if needed)
    /// `data_dir/audit.log`, verify it (from the checkpoint, see "Rotation")
    /// and continue from its last entry. A log that fails verification is refused
    /// ([`AuditError::Broken`], [`AuditError::Truncated`]) and left as it is.
    /// An existing file that group or others could access is made 0600.
    pub fn open(data_dir: &Path) -> Result<Self, AuditError> {
        create_private_dir(data_dir).map_err(io_err("create", data_dir))?;
        let path = data_dir.join(FILE_NAME);
        let mut options = OpenOptions::new();
        options.read(true).append(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = match options.open(&path) {
            Ok(file) => {
                sync_dir(data_dir).map_err(io_err("sync", data_dir))?;
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err("open", &path))?;
                make_private(&file, &path)?;
                file
            }
            Err(e) => return Err(io_err("create", &path)(e)),
        };
        let mut chain = Chain::default();
        {
            let _lock = Lock::shared(&file, &path)?;
            segments::load(&file, &path, &mut chain)?;
        }
        Ok(Self { path, file, chain, max_bytes: DEFAULT_MAX_SEGMENT_BYTES })
    }

    /// Rotate `audit.log` once it holds `max_bytes` bytes (default
    /// [`DEFAULT_MAX_SEGMENT_BYTES`]; at least 1).
    #[must_use]
    pub fn with_rotation(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// Append `event` at `at_unix_ms` and fsync. The timestamp is raised to
    /// the previous entry's if the clock went backwards, so timestamps never
    /// decrease. Lines appended by other [`AuditLog`]s on the same file since
    /// this one last looked are verified first (an error if they are bad).
    ///
    /// After an error the entry may or may not be in the log (for example
    /// when the write succeeded but the fsync failed); a later append picks
    /// up whatever is there.
    pub fn append(&mut self, at_unix_ms: u64, event: AuditEvent) -> Result<AuditEntry, AuditError> {
        let mut lock = Lock::exclusive(&self.file, &self.path)?;
        catch_up(&self.file, &self.path, &mut self.chain)?;
        // Another log rotated the file: this one is complete; go on in the
        // new one.
        while segments::moved(&self.file, &self.path)? {
            drop(lock);
            self.file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&self.path)
                .map_err(io_err("open", &self.path))?;
            self.chain.bytes = 0;
            lock = Lock::exclusive(&self.file, &self.path)?;
            catch_up(&self.file, &self.path, &mut self.chain)?;
        }
        if self.chain.bytes >= self.max_bytes {
            let fresh = segments::rotate(&self.path, &self.chain)?;
            drop(lock);
            self.file = fresh;
            self.chain.bytes = 0;
            lock = Lock::exclusive(&self.file, &self.path)?;
            catch_up(&self.file, &self.path, &mut self.chain)?;
        }
        let _lock = lock;
        let at_ms = self.chain.last_at_ms.map_or(at_unix_ms, |last| last.max(at_unix_ms));
        let entry = seal(&self.chain.last_hash, self.chain.next_seq(), at_ms, event)?;
        let mut line = serde_json::to_vec(&entry).map_err(AuditError::Encode)?;
        line.push(b'\n');
        if let Err(e) = (&self.file).write_all(&line) {
            // Take back a partial line, so that the log stays appendable.
            let _ = self.file.set_len(self.chain.bytes);
            return Err(io_err("write", &self.path)(e));
        }
        self.file.sync_data().map_err(io_err("sync", &self.path))?;
        self.chain.advance(&entry, line.len());
        Ok(entry)
    }

    /// Hex of the domain-separated hash of `text`; see [`text_hash`].
    #[must_use]
    pub fn text_hash(text: &str) -> String {
        text_hash(text)
    }

    /// The highest sequence number of the instructions of `link` in the
    /// current file (`instruction` members `<link>#<seq>`), if any. Lines
    /// rotated into older segments are not read.
    ///
    /// # Errors
    /// [`AuditError`] if the file cannot be read.
    pub fn last_instruction(&self, link: &str) -> Result<Option<u64>, AuditError> {
        let text = std::fs::read_to_string(&self.path).map_err(io_err("read", &self.path))?;
        let prefix = format!("{link}#");
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                let tag = v.get("instruction")?.as_str()?;
                tag.strip_prefix(&prefix)?.parse::<u64>().ok()
            })
            .max())
    }

    /// The log file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of entries, as of this log's last read or append.
    #[must_use]
    pub fn entries(&self) -> u64 {
        self.chain.entries
    }

    /// The last entry's hash in hex (or [`GENESIS_PREV`]), as of this log's
    /// last read or append.
    #[must_use]
    pub fn last_hash(&self) -> String {
        hex(&self.chain.last_hash)
    }
}

/// Verify lines others appended since `chain` was last brought up to date.
fn catch_up(file: &File, path: &Path, chain: &mut Chain) -> Result<(), AuditError> {
    let len = file.metadata().map_err(io_err("inspect", path))?.len();
    if len == chain.bytes {
        return Ok(());
    }
    if len < chain.bytes {
        return Err(AuditError::Broken {
            line: chain.entries,
            reason: BrokenReason::Shrank { was: chain.bytes, now: len },
        });
    }
    (&*file).seek(SeekFrom::Start(chain.bytes)).map_err(io_err("read", path))?;
    scan(file, path, chain)
}

/// Verify the log at `path` (the file itself, e.g. `data_dir/audit.log`)
/// and report its length and last hash, or the first bad line.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let _lock = Lock::shared(&file, path)?;
    let mut chain = Chain::default();
    scan(&file, path, &mut chain)?;
    Ok(chain.report())
}

/// Remove the log's last line if, and only if, it is incomplete
/// ([`AuditError::Truncated`]) and every line before it verifies; then
/// report as [`verify`] does. A log that verifies is left as it is; any
/// other error is returned and nothing is changed.
pub fn discard_partial_line(path: &Path) -> Result<VerifyReport, AuditError> {
    let file =
        OpenOptions::new().read(true).write(true).open(path).map_err(io_err("open", path))?;
    let _lock = Lock::exclusive(&file, path)?;
    let mut chain = Chain::default();
    match scan(&file, path, &mut chain) {
        Ok(()) => {}
        Err(AuditError::Truncated { line }) => {
            tracing::warn!(path = %path.display(), line, "discarding a partial audit log line");
            file.set_len(chain.bytes).map_err(io_err("truncate", path))?;
            file.sync_all().map_err(io_err("sync", path))?;
        }
        Err(e) => return Err(e),
    }
    Ok(chain.report())
}

/// The verified state after some number of complete lines.
#[derive(Debug, Clone, Default)]
struct Chain {
    entries: u64,
    last_hash: [u8; 32],
    first_at_ms: Option<u64>,
    last_at_ms: Option<u64>,
    /// Bytes of complete, verified lines.
    bytes: u64,
}

impl Chain {
    fn next_seq(&self) -> u64 {
        self.entries.saturating_add(1)
    }

    /// Verify one line (without its `\n`) against the chain so far and, if
    /// it is good, take it in.
    fn feed(&mut self, line: &[u8]) -> Result<(), AuditError> {
        let broken = |reason| AuditError::Broken { line: self.next_seq(), reason };
        let entry: AuditEntry = serde_json::from_slice(line)
            .map_err(|e| broken(BrokenReason::Unparsable(quote(&e.to_string()))))?;
        let canonical = canonical_bytes(&entry)?;
        if serde_json::to_vec(&entry).map_err(AuditError::Encode)? != line {
            return Err(broken(BrokenReason::NotCanonical));
        }
        let expected_prev = hex(&self.last_hash);
        if entry.prev != expected_prev {
            return Err(broken(BrokenReason::PrevMismatch {
                expected: expected_prev,
                found: quote(&entry.prev),
            }));
        }
        let computed = hex(&chain_hash(&self.last_hash, &canonical));
        if entry.hash != computed {
            return Err(broken(BrokenReason::HashMismatch {
                computed,
                stored: quote(&entry.hash),
            }));
        }
        if entry.seq != self.next_seq() {
            return Err(broken(BrokenReason::SeqGap {
                expected: self.next_seq(),
                found: entry.seq,
            }));
        }
        if let Some(previous) = self.last_at_ms
            && entry.at_ms < previous
        {
            return Err(broken(BrokenReason::TimeWentBackwards { previous, found: entry.at_ms }));
        }
        self.advance(&entry, line.len().saturating_add(1));
        Ok(())
    }

    /// Take in an entry known to be good, whose line is `line_len` bytes
    /// including its `\n`.
    fn advance(&mut self, entry: &AuditEntry, line_len: usize) {
        self.entries = entry.seq;
        self.last_hash = unhex(&entry.hash).unwrap_or_default();
        self.first_at_ms.get_or_insert(entry.at_ms);
        self.last_at_ms = Some(entry.at_ms);
        self.bytes = self.bytes.saturating_add(line_len as u64);
    }

    fn report(&self) -> VerifyReport {
        VerifyReport {
            entries: self.entries,
            last_hash: hex(&self.last_hash),
            first_at_ms: self.first_at_ms,
            last_at_ms: self.last_at_ms,
        }
    }
}

/// Read lines from `file`'s current position to its end into `chain`.
fn scan(file: &File, path: &Path, chain: &mut Chain) -> Result<(), AuditError> {
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            return Ok(());
        }
        match buf.strip_suffix(b"\n") {
            Some(line) => chain.feed(line)?,
            None => return Err(AuditError::Truncated { line: chain.next_seq() }),
        }
    }
}

/// Build the entry for `event` following an entry whose hash is `prev`.
fn seal(
    prev: &[u8; 32],
    seq: u64,
    at_ms: u64,
    event: AuditEvent,
) -> Result<AuditEntry, AuditError> {
    let mut entry = AuditEntry { seq, at_ms, event, prev: hex(prev), hash: String::new() };
    entry.hash = hex(&chain_hash(prev, &canonical_bytes(&entry)?));
    Ok(entry)
}

/// The entry's canonical bytes: its line without `\n` and the `hash` member.
fn canonical_bytes(entry: &AuditEntry) -> Result<Vec<u8>, AuditError> {
    serde_json::to_vec(&Unhashed {
        seq: entry.seq,
        at_ms: entry.at_ms,
        event: &entry.event,
        prev: &entry.prev,
    })
    .map_err(AuditError::Encode)
}

fn chain_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    kdf::hash(CHAIN_LABEL, &[prev, canonical])
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            s.push(char::from(DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0')));
        }
    }
    s
}

/// Lowercase hex of exactly 32 bytes.
fn unhex(s: &str) -> Option<[u8; 32]> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let mut out = [0u8; 32];
    let mut pairs = s.as_bytes().chunks_exact(2);
    for byte in &mut out {
        let [hi, lo] = pairs.next()? else { return None };
        *byte = (digit(*hi)? << 4) | digit(*lo)?;
    }
    if pairs.next().is_some() || !pairs.remainder().is_empty() {
        return None;
    }
    Some(out)
}

/// An excerpt of untrusted text for an error message: at most
/// [`MAX_QUOTE`] characters, control characters replaced, so that a
/// doctored log cannot play tricks on the terminal showing the error.
/// An excerpt of a log line for a message: on one line, without controls,
/// bidi overrides or invisible characters ([`crate::text::one_line`]).
fn quote(s: &str) -> String {
    let clean = crate::text::one_line(s);
    let mut out: String = clean.chars().take(MAX_QUOTE).collect();
    if clean.chars().nth(MAX_QUOTE).is_some() {
        out.push('…');
    }
    out
}

/// Make an existing log file 0600 if group or others could access it.
fn make_private(file: &File, path: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io_err("inspect", path))?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "audit log was not private; making it 0600");
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err("set permissions on", path))?;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
    }
    Ok(())
}

/// An advisory lock on a file, released on drop. Filesystems without
/// locking get no lock (and no error).
struct Lock<'a>(Option<&'a File>);

impl<'a> Lock<'a> {
    fn shared(file: &'a File, path: &Path) -> Result<Self, AuditError> {
        Self::take(file, path, File::lock_shared(file))
    }

    fn exclusive(file: &'a File, path: &Path) -> Result<Self, AuditError> {
        Self::take(file, path, File::lock(file))
    }

    fn take(file: &'a File, path: &Path, locked: io::Result<()>) -> Result<Self, AuditError> {
        match locked {
            Ok(()) => Ok(Self(Some(file))),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(Self(None)),
            Err(e) => Err(io_err("lock", path)(e)),
        }
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.0 {
            let _ = file.unlock();
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn events() -> Vec<AuditEvent> {
        let s = String::from;
        vec![
            // As written before the scope was chosen at pairing: still canonical.
            AuditEvent::Paired {
                device: s("dev-a"),
                name: s("Pixel \"8\" \u{e9}"),
                scope: None,
                ephemeral: false,
            },
            AuditEvent::PairingRefused { device: s("dev-b") },
            AuditEvent::ScopeChanged { device: s("dev-a"), scope: s("submit") },
            AuditEvent::TaskSubmitted {
                device: s("dev-a"),
                task_id: s("t1"),
                executor: Some(s("shell")),
                text_hash: text_hash("ls"),
                text_len: 2,
                instruction: None,
            },
            AuditEvent::TaskRefused { device: s("dev-a"), task_id: s("t2"), code: s("scope") },
            AuditEvent::FollowUp {
                device: s("dev-a"),
                task_id: s("t1"),
                text_hash: text_hash("y"),
                instruction: Some(s("dev-a@00ff#7")),
            },
            AuditEvent::ApprovalRequested {
                task_id: s("t1"),
                approval_id: s("a1"),
                summary_hash: text_hash("rm x"),
            },
            AuditEvent::ApprovalDecided {
                task_id: s("t1"),
                approval_id: s("a1"),
                allow: false,
                by: s("timeout"),
            },
            AuditEvent::Cancelled { by: s("desktop"), task_id: s("t1"), instruction: None },
            AuditEvent::TaskFinished { task_id: s("t1"), status: s("cancelled") },
            AuditEvent::Paired {
                device: s("dev-c"),
                name: s("web"),
                scope: Some(s("view")),
                ephemeral: true,
            },
            AuditEvent::Forgotten { device: s("dev-c"), reason: s("ephemeral device gone") },
            AuditEvent::Revoked { device: s("dev-a") },
            AuditEvent::TaskStopped {
                task_id: s("t2"),
                device: s("dev-a"),
                reason: s("revoked"),
                was: s("queued"),
            },
        ]
    }

    /// A log in a fresh directory holding [`events`], at times 1000, 1001, ….
    fn filled() -> (tempfile::TempDir, PathBuf, Vec<AuditEntry>) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path()).unwrap();
        let entries: Vec<AuditEntry> =
            (1000..).zip(events()).map(|(t, e)| log.append(t, e).unwrap()).collect();
        let path = log.path().to_path_buf();
        (dir, path, entries)
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path).unwrap().lines().map(|l| format!("{l}\n")).collect()
    }

    fn broken_at(path: &Path) -> (u64, Option<BrokenReason>) {
        match verify(path) {
            Err(AuditError::Broken { line, reason }) => (line, Some(reason)),
            Err(AuditError::Truncated { line }) => (line, None),
            other => panic!("expected a broken log, got {other:?}"),
        }
    }

    #[test]
    fn appended_entries_verify() {
        let (_dir, path, entries) = filled();
        let n = events().len() as u64;
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
        assert_eq!(entries[0].prev, GENESIS_PREV);
        for pair in entries.windows(2) {
            assert_eq!(pair[1].prev, pair[0].hash);
        }
        let report = verify(&path).unwrap();
        assert_eq!(
            report,
            VerifyReport {
                entries: n,
                last_hash: entries.last().unwrap().hash.clone(),
                first_at_ms: Some(1000),
                last_at_ms: Some(1000 + n - 1),
            }
        );
        // The lines are the entries, in order.
        let parsed: Vec<AuditEntry> =
            lines(&path).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(parsed, entries);
    }

    #[test]
    fn empty_log_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("nested")).unwrap();
        assert_eq!(log.entries(), 0);
        assert_eq!(
            verify(log.path()).unwrap(),
            VerifyReport {
                entries: 0,
                last_hash: GENESIS_PREV.into(),
                first_at_ms: None,
                last_at_ms: None
            }
        );
    }

    #[test]
    fn reopening_continues_the_chain() {
        let (dir, path, entries) = filled();
        let mut log = AuditLog::open(dir.path()).unwrap();
        assert_eq!(log.entries(), entries.len() as u64);
        assert_eq!(log.last_hash(), entries.last().unwrap().hash);
        let next = log.append(5, AuditEvent::Revoked { device: "dev-c".into() }).unwrap();
        assert_eq!(next.seq, entries.len() as u64 + 1);
        assert_eq!(next.prev, entries.last().unwrap().hash);
        // The clock went backwards: the previous timestamp is kept.
        assert_eq!(next.at_ms, entries.last().unwrap().at_ms);
        let report = verify(&path).unwrap();
        assert_eq!(report.entries, next.seq);
        assert_eq!(report.last_hash, next.hash);
    }

    #[test]
    fn two_writers_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = AuditLog::open(dir.path()).unwrap();
        let mut b = AuditLog::open(dir.path()).unwrap();
        for i in 0..4 {
            let log = if i % 2 == 0 { &mut a } else { &mut b };
            let e = log.append(i, AuditEvent::Revoked { device: format!("d{i}") }).unwrap();
            assert_eq!(e.seq, i + 1);
        }
        assert_eq!(verify(a.path()).unwrap().entries, 4);
    }

    #[test]
    fn canonical_bytes_are_the_line_minus_its_hash_member() {
        // The auditor's procedure from the module docs, done by hand.
        let (_dir, path, entries) = filled();
        let mut prev = [0u8; 32];
        for (line, entry) in lines(&path).iter().zip(&entries) {
            let line = line.strip_suffix('\n').unwrap().as_bytes();
            let (body, tail) = line.split_at(line.len() - 75);
            assert_eq!(tail, format!(",\"hash\":\"{}\"}}", entry.hash).as_bytes());
            let canonical = [body, b"}"].concat();
            assert_eq!(canonical, canonical_bytes(entry).unwrap());
            let hash = tandem_proto::kdf::hash("tandem audit v1", &[&prev, &canonical]);
            assert_eq!(hex(&hash), entry.hash);
            prev = unhex(&entry.hash).unwrap();
        }
        let first = &lines(&path)[3];
        assert!(first.starts_with("{\"seq\":4,\"at_ms\":1003,\"event\":\"task_submitted\",\"device\":\"dev-a\",\"task_id\":\"t1\",\"executor\":\"shell\",\"text_hash\":\""), "{first}");
    }

    #[test]
    fn any_single_character_edit_is_detected_at_its_line() {
        let (_dir, path, _) = filled();
        let original = lines(&path);
        for (i, line) in original.iter().enumerate() {
            for (j, c) in line.char_indices() {
                let replacement = if c == '1' {
                    '2'
                } else if c == 'x' {
                    'y'
                } else {
                    'x'
                };
                let mut edited = original.clone();
                edited[i].replace_range(j..j + c.len_utf8(), &replacement.to_string());
                fs::write(&path, edited.concat()).unwrap();
                let (at, reason) = broken_at(&path);
                assert_eq!(at, i as u64 + 1, "edit at line {} byte {j}: {reason:?}", i + 1);
            }
        }
    }

    #[test]
    fn value_and_hash_edits_are_hash_mismatches() {
        let (_dir, path, _) = filled();
        let mut edited = lines(&path);
        edited[2] = edited[2].replace("submit", "admin!");
        fs::write(&path, edited.concat()).unwrap();
        assert!(matches!(broken_at(&path), (3, Some(BrokenReason::HashMismatch { .. }))));

        let mut edited = lines(&path);
        edited[2] = lines(&path)[2].replace("admin!", "submit");
        let hash_at = edited[4].len() - 10;
        edited[4].replace_range(hash_at..hash_at + 1, "g");
        fs::write(&path, edited.concat()).unwrap();
        assert!(matches!(broken_at(&path), (5, Some(BrokenReason::HashMismatch { .. }))));
    }

    #[test]
    fn deleted_swapped_and_duplicated_lines_are_detected() {
        let (_dir, path, _) = filled();
        let original = lines(&path);
        let check = |edited: Vec<String>, line: u64| {
            fs::write(&path, edited.concat()).unwrap();
            let (at, reason) = broken_at(&path);
            assert_eq!(at, line);
            assert!(matches!(reason, Some(BrokenReason::PrevMismatch { .. })), "{reason:?}");
        };
        for i in 0..original.len() - 1 {
            let mut deleted = original.clone();
            deleted.remove(i);
            check(deleted, i as u64 + 1);

            let mut swapped = original.clone();
            swapped.swap(i, i + 1);
            check(swapped, i as u64 + 1);

            let mut duplicated = original.clone();
            duplicated.insert(i, original[i].clone());
            check(duplicated, i as u64 + 2);
        }
        let mut moved = original.clone();
        let last = moved.pop().unwrap();
        moved.insert(0, last);
        check(moved, 1);
        // Deleting the last line is not detectable by the chain alone (see the
        // module docs), but the last hash then differs from the one noted.
        let mut cut = original.clone();
        cut.pop();
        fs::write(&path, cut.concat()).unwrap();
        let report = verify(&path).unwrap();
        assert_eq!(report.entries, original.len() as u64 - 1);
    }

    #[test]
    fn consistent_forgeries_with_bad_seq_or_time_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let write = |entries: &[AuditEntry]| {
            let text: String =
                entries.iter().map(|e| serde_json::to_string(e).unwrap() + "\n").collect();
            fs::write(&path, text).unwrap();
        };
        let ev = || AuditEvent::Revoked { device: "d".into() };
        let first = seal(&[0; 32], 1, 100, ev()).unwrap();
        let prev = unhex(&first.hash).unwrap();

        write(&[first.clone(), seal(&prev, 3, 100, ev()).unwrap()]);
        assert_eq!(broken_at(&path), (2, Some(BrokenReason::SeqGap { expected: 2, found: 3 })));
        write(&[first.clone(), seal(&prev, 2, 99, ev()).unwrap()]);
        assert_eq!(
            broken_at(&path),
            (2, Some(BrokenReason::TimeWentBackwards { previous: 100, found: 99 }))
        );
        write(&[seal(&[0; 32], 0, 100, ev()).unwrap()]);
        assert_eq!(broken_at(&path), (1, Some(BrokenReason::SeqGap { expected: 1, found: 0 })));
        // An extra member, even with a "correct" hash, is not canonical.
        let line = serde_json::to_string(&first).unwrap().replacen("{", "{\"x\":1,", 1);
        fs::write(&path, line + "\n").unwrap();
        assert_eq!(broken_at(&path), (1, Some(BrokenReason::NotCanonical)));
        // Non-canonical escaping of an otherwise identical entry.
        let line = serde_json::to_string(&first).unwrap().replacen("\"d\"", "\"\\u0064\"", 1);
        fs::write(&path, line + "\n").unwrap();
        assert_eq!(broken_at(&path), (1, Some(BrokenReason::NotCanonical)));
        // Blank and garbage lines.
        fs::write(&path, "\n").unwrap();
        assert!(matches!(broken_at(&path), (1, Some(BrokenReason::Unparsable(_)))));
    }

    #[test]
    fn truncated_last_line_is_reported_refused_and_discardable() {
        let (dir, path, entries) = filled();
        let full = fs::read(&path).unwrap();
        let n = entries.len() as u64;
        // Every cut inside the last line (including just its newline).
        let last_len = lines(&path).last().unwrap().len();
        for cut in 1..last_len {
            fs::write(&path, &full[..full.len() - cut]).unwrap();
            assert!(matches!(verify(&path), Err(AuditError::Truncated { line }) if line == n));
        }
        let err = AuditLog::open(dir.path()).unwrap_err();
        assert!(matches!(err, AuditError::Truncated { line } if line == n), "{err}");
        assert!(err.to_string().contains("incomplete line"), "{err}");

        let report = discard_partial_line(&path).unwrap();
        assert_eq!(report.entries, n - 1);
        assert_eq!(report.last_hash, entries[entries.len() - 2].hash);
        assert_eq!(fs::read(&path).unwrap(), full[..full.len() - last_len]);
        // A sound log is left alone; a broken one is not "repaired".
        assert_eq!(discard_partial_line(&path).unwrap(), report);
        let mut log = AuditLog::open(dir.path()).unwrap();
        let e = log.append(1, AuditEvent::Revoked { device: "d".into() }).unwrap();
        assert_eq!(e.seq, n);
        let mut edited = lines(&path);
        edited[0] = edited[0].replace("dev-a", "dev-z");
        fs::write(&path, edited.concat() + "{\"seq\"").unwrap();
        assert!(matches!(discard_partial_line(&path), Err(AuditError::Broken { line: 1, .. })));
        assert!(fs::read_to_string(&path).unwrap().ends_with("{\"seq\""));
    }

    #[test]
    fn open_refuses_a_broken_log_and_append_notices_changes() {
        let (dir, path, _) = filled();
        let mut log = AuditLog::open(dir.path()).unwrap();
        let original = lines(&path);
        // Another writer's edit is noticed before appending after it.
        let mut edited = original.clone();
        edited.push(original[0].clone());
        fs::write(&path, edited.concat()).unwrap();
        let ev = || AuditEvent::Revoked { device: "d".into() };
        assert!(matches!(log.append(1, ev()), Err(AuditError::Broken { .. })));
        let err = AuditLog::open(dir.path()).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line, .. } if line == edited.len() as u64));
        assert!(err.to_string().contains("tandem audit verify"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), edited.concat());
        // A shrunk file too.
        fs::write(&path, original[..3].concat()).unwrap();
        assert!(matches!(
            log.append(1, ev()),
            Err(AuditError::Broken { reason: BrokenReason::Shrank { .. }, .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let (dir, path, _) = filled();
        assert_eq!(mode(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        AuditLog::open(dir.path()).unwrap();
        assert_eq!(mode(&path), 0o600);
        let fresh = dir.path().join("fresh");
        AuditLog::open(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn text_hash_is_stable_and_the_text_is_never_logged() {
        assert_eq!(text_hash("abc"), AuditLog::text_hash("abc"));
        assert_eq!(
            text_hash("abc"),
            hex(&tandem_proto::kdf::hash("tandem audit text v1", &[b"abc"]))
        );
        assert_eq!(
            text_hash("abc"),
            "8c9e4d3676d486dc666cc56a487896ee4f7f74eddad301ec045b34875d4c14f3"
        );
        assert_ne!(text_hash("abc"), text_hash("abd"));
        assert_eq!(text_hash("").len(), 64);

        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path()).unwrap();
        let text = "deploy with password CANARY-5f1d0c7e please";
        log.append(
            1,
            AuditEvent::TaskSubmitted {
                device: "dev-a".into(),
                task_id: "t1".into(),
                executor: None,
                text_hash: AuditLog::text_hash(text),
                text_len: text.len(),
                instruction: None,
            },
        )
        .unwrap();
        let contents = fs::read_to_string(log.path()).unwrap();
        assert!(!contents.contains("CANARY"), "{contents}");
        assert!(contents.contains(&text_hash(text)));
        assert!(contents.contains(&format!("\"text_len\":{}", text.len())));
    }

    #[test]
    fn hex_round_trips_and_quote_is_tame() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(unhex(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex(GENESIS_PREV), Some([0; 32]));
        assert_eq!(unhex(&GENESIS_PREV[1..]), None);
        assert_eq!(unhex(&format!("{GENESIS_PREV}0")), None);
        assert_eq!(unhex(&GENESIS_PREV.replace('0', "A")), None);
        assert_eq!(quote("a\u{1b}[2Jb"), "a\u{241b}[2Jb");
        assert_eq!(quote("a\u{202e}b\u{200b}c\nd"), "abc d");
        assert_eq!(quote(&"x".repeat(200)).chars().count(), MAX_QUOTE + 1);
    }
}
