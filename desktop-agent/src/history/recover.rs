//! Opening the task history when redb cannot read its file: the file is set
//! aside and the agent starts with an empty history ([`crate::damage`]).

use std::path::Path;

use redb::{Database, DatabaseError, StorageError};

use super::{FILE_NAME, History, HistoryError};
use crate::damage::{SetAside, move_aside};

impl History {
    /// As [`History::open`], but a `tasks.redb` that redb reports as
    /// corrupted (or cut short) is renamed `tasks.redb.damaged-<now_ms>` and
    /// a new, empty history is created: the tasks in it are no longer
    /// listed or replayed, and a phone asking for them is told their
    /// history is unavailable. Another process holding the file, or any
    /// other error, is returned as [`History::open`] returns it.
    ///
    /// # Errors
    /// [`HistoryError`] when the history still cannot be opened.
    pub fn open_or_set_aside(
        dir: &Path,
        now_ms: u64,
    ) -> Result<(Self, Option<SetAside>), HistoryError> {
        let path = dir.join(FILE_NAME);
        let damaged = if path.exists() {
            match Database::open(&path) {
                Err(DatabaseError::Storage(StorageError::Corrupted(why))) => Some(why),
                // Not a database at all (redb: "magic number mismatch"), or
                // cut short.
                Err(DatabaseError::Storage(StorageError::Io(e)))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    Some(e.to_string())
                }
                // Opened (closed again on drop), or another problem that
                // `open` reports as it is.
                _ => None,
            }
        } else {
            None
        };
        let aside = match damaged {
            None => None,
            Some(why) => {
                let moved_to = move_aside(&path, now_ms).map_err(|e| HistoryError::Db {
                    path: path.display().to_string(),
                    detail: format!("could not set the damaged file aside: {e}"),
                })?;
                tracing::warn!(moved_to = %moved_to.display(), reason = %why, "set aside a damaged task history");
                Some(SetAside {
                    file: FILE_NAME.to_owned(),
                    moved_to,
                    reason: format!("the database cannot be opened: {why}"),
                    consequence: "the agent starts with an empty task history".to_owned(),
                })
            }
        };
        Ok((Self::open(dir)?, aside))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_garbage_database_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        assert!(History::open(dir.path()).is_err());
        let (history, aside) = History::open_or_set_aside(dir.path(), 9).unwrap();
        let aside = aside.unwrap();
        assert_eq!(aside.moved_to, dir.path().join("tasks.redb.damaged-9"));
        assert_eq!(std::fs::read(&aside.moved_to).unwrap(), vec![0x5a; 8192]);
        assert!(history.unfinished().unwrap().is_empty());
        drop(history);
        let (_, again) = History::open_or_set_aside(dir.path(), 10).unwrap();
        assert_eq!(again, None);
    }
}
