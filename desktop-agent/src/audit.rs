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
use std::io;
use std::path::{Path, PathBuf};

use tandem_proto::kdf;
use thiserror::Error;

mod chain;
mod event;
mod recover;
mod segments;
mod writer;

use chain::{Chain, scan, unhex};
pub use chain::{discard_partial_line, verify};
pub use event::{AuditEntry, AuditEvent};
pub use segments::{CHECKPOINT_NAME, DEFAULT_MAX_SEGMENT_BYTES, segments, verify_all};
pub use writer::AuditLog;
use writer::Lock;

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

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::chain::{canonical_bytes, quote, seal};
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
                project: None,
                text_hash: text_hash("ls"),
                text_len: 2,
                instruction: None,
                resume: None,
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
                project: None,
                text_hash: AuditLog::text_hash(text),
                text_len: text.len(),
                instruction: None,
                resume: None,
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
