//! Verifying the log: the hash chain ([`Chain`]) checked line by line,
//! sealing a new entry onto it, and the hex and quoting helpers that go
//! with it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Serialize;
use tandem_proto::kdf;

use super::writer::Lock;
use super::{
    AuditEntry, AuditError, AuditEvent, BrokenReason, CHAIN_LABEL, MAX_QUOTE, VerifyReport, hex,
    io_err,
};

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
pub(super) struct Chain {
    pub(super) entries: u64,
    pub(super) last_hash: [u8; 32],
    pub(super) first_at_ms: Option<u64>,
    pub(super) last_at_ms: Option<u64>,
    /// Bytes of complete, verified lines.
    pub(super) bytes: u64,
}

impl Chain {
    pub(super) fn next_seq(&self) -> u64 {
        self.entries.saturating_add(1)
    }

    /// Verify one line (without its `\n`) against the chain so far and, if
    /// it is good, take it in.
    pub(super) fn feed(&mut self, line: &[u8]) -> Result<(), AuditError> {
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
    pub(super) fn advance(&mut self, entry: &AuditEntry, line_len: usize) {
        self.entries = entry.seq;
        self.last_hash = unhex(&entry.hash).unwrap_or_default();
        self.first_at_ms.get_or_insert(entry.at_ms);
        self.last_at_ms = Some(entry.at_ms);
        self.bytes = self.bytes.saturating_add(line_len as u64);
    }

    pub(super) fn report(&self) -> VerifyReport {
        VerifyReport {
            entries: self.entries,
            last_hash: hex(&self.last_hash),
            first_at_ms: self.first_at_ms,
            last_at_ms: self.last_at_ms,
        }
    }
}

/// Read lines from `file`'s current position to its end into `chain`.
pub(super) fn scan(file: &File, path: &Path, chain: &mut Chain) -> Result<(), AuditError> {
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
pub(super) fn seal(
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
pub(super) fn canonical_bytes(entry: &AuditEntry) -> Result<Vec<u8>, AuditError> {
    serde_json::to_vec(&Unhashed {
        seq: entry.seq,
        at_ms: entry.at_ms,
        event: &entry.event,
        prev: &entry.prev,
    })
    .map_err(AuditError::Encode)
}

pub(super) fn chain_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    kdf::hash(CHAIN_LABEL, &[prev, canonical])
}

/// Lowercase hex of exactly 32 bytes.
pub(super) fn unhex(s: &str) -> Option<[u8; 32]> {
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
pub(super) fn quote(s: &str) -> String {
    let clean = crate::text::one_line(s);
    let mut out: String = clean.chars().take(MAX_QUOTE).collect();
    if clean.chars().nth(MAX_QUOTE).is_some() {
        out.push('…');
    }
    out
}
