//! The writer thread: it opens the database, then batches, applies,
//! commits and answers; when the database fails (a full disk: redb marks it
//! failed after an I/O error and refuses every later transaction) it drops
//! it, refuses what comes meanwhile with [`StoreError::Unavailable`], and
//! opens it again, retrying with a backoff ([`RETRY_MIN`] doubling to
//! [`RETRY_MAX`]) until it works. Nothing answered `Ok` is lost: an answer
//! is sent only after its commit succeeded, and a failed commit's
//! operations are all refused (their senders keep them and send again).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use redb::{Database, Durability};
use tracing::{error, info};

use super::accounts::{Depths, Pending, Usage};
use super::layout::{self, take_counter};
use super::tables::{Accounts, Changes, Context, apply_batch, apply_pending};
use super::{LazyCommits, MAX_BATCH, NextIds, Op, SKIP, backend, lock};
use crate::store::{QueueLimits, RouteLimits, StoreError};

/// The first wait before the store is opened again after a failure.
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(1000);
/// The longest wait between two attempts to open the store.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// An open database and what the writer keeps beside it.
pub(super) struct Opened {
    pub(super) db: Database,
    /// The first delivery id to hand out.
    pub(super) next: u64,
    accounts: (Depths, Usage, Pending),
}

/// Open (or create) `dir/relay.redb` (a new directory 0700, the file 0600),
/// upgrade an older layout, take the id counter past what may have been
/// handed out before a commit that never happened, in one durable commit,
/// and load the accounts.
pub(super) fn open_db(dir: &Path, now_unix: u64) -> Result<Opened, StoreError> {
    crate::failpoints::check("relay.open").map_err(failpoint)?;
    crate::fsmode::create_private_dir(dir).map_err(backend)?;
    // Created 0600 whatever the umask (redb would leave it to the umask).
    let path = dir.join("relay.redb");
    // A new store whose creation fails (a full disk) is removed again: a
    // half-written header would stop every later attempt.
    // Only a file that is not there (or empty) is new: any other error
    // reading its metadata must never get an existing store removed.
    let new = match std::fs::metadata(&path) {
        Ok(m) => m.len() == 0,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    drop(crate::fsmode::private_file(&path, &mut options).map_err(backend)?);
    let opened = (|| {
        let db = Database::create(&path).map_err(backend)?;
        let mut txn = db.begin_write().map_err(backend)?;
        let _ = txn.set_durability(Durability::Immediate);
        layout::upgrade(&txn, now_unix)?;
        let next = take_counter(&txn, SKIP)?;
        txn.commit().map_err(backend)?;
        Ok((db, next))
    })();
    let (db, next) = match opened {
        Ok(o) => o,
        Err(e) => {
            if new {
                let _ = std::fs::remove_file(&path);
            }
            return Err(e);
        }
    };
    let accounts = (Depths::load(&db)?, Usage::load(&db)?, Pending::load(&db)?);
    Ok(Opened { db, next, accounts })
}

pub(super) fn failpoint(name: &'static str) -> StoreError {
    StoreError::Backend(format!("failpoint {name}"))
}

/// What the writer thread owns.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) rx: mpsc::Receiver<Op>,
    pub(super) limits: (QueueLimits, RouteLimits),
    pub(super) ids: Arc<Mutex<NextIds>>,
    pub(super) stats: Arc<super::Stats>,
}

/// Why [`Writer::serve`] returned.
enum Exit {
    /// Every [`super::RedbStore`] is gone.
    Closed,
    /// The database failed; `wrote` says whether a commit that wrote
    /// succeeded first (the backoff starts again from [`RETRY_MIN`]).
    Failed { error: StoreError, wrote: bool },
}

impl Writer {
    /// Serve until every store handle is gone, reopening the database
    /// after each failure. `first` is the first attempt to open it.
    pub(super) fn run(self, first: Result<Opened, StoreError>) {
        let mut opened = first;
        let mut backoff = RETRY_MIN;
        loop {
            match opened {
                Ok(o) => {
                    self.up(o.next);
                    match self.serve(o.db, o.accounts) {
                        Exit::Closed => return,
                        Exit::Failed { error, wrote } => {
                            error!(%error, "the store failed; reopening it");
                            if wrote {
                                backoff = RETRY_MIN;
                            }
                        }
                    }
                }
                Err(e) => {
                    error!(
                        error = %e,
                        dir = %self.dir.display(),
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot open the store: not ready; sends are refused (store_unavailable) until it opens"
                    );
                    self.down(&e);
                }
            }
            if !self.refuse_for(backoff) {
                return;
            }
            backoff = (backoff * 2).min(RETRY_MAX);
            opened = open_db(&self.dir, crate::state::unix_now());
        }
    }

    /// The store can write again: ids are told early again, past every id
    /// the counter was saved past.
    fn up(&self, next: u64) {
        let mut ids = lock(&self.ids);
        if ids.down.take().is_some() {
            info!("the store is open and writing again");
        }
        ids.next = ids.next.max(next);
        ids.save_from = ids.next;
        ids.full.clear();
    }

    /// The store cannot write: say why (readiness, the gauge), tell no id early.
    fn down(&self, e: &StoreError) {
        lock(&self.ids).down = Some(e.to_string());
    }

    /// Refuse every operation that arrives for `wait`. False once every
    /// store handle is gone.
    fn refuse_for(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        let reason = lock(&self.ids).down.clone().unwrap_or_default();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            match self.rx.recv_timeout(left) {
                Ok(op) => op.fail(StoreError::Unavailable(reason.clone())),
                Err(mpsc::RecvTimeoutError::Timeout) => return true,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Batch, apply, commit, answer, until the database fails or every
    /// store handle is gone.
    fn serve(
        &self,
        db: Database,
        (mut depths, mut usage, mut pending): (Depths, Usage, Pending),
    ) -> Exit {
        let (limits, routes) = &self.limits;
        let mut lazy = LazyCommits::default();
        let mut wrote = false;
        loop {
            let first = match lazy.pending() {
                // Idle with lazy commits waiting: make them durable when they
                // are due, not only when the next operation comes.
                Some(due) => match self.rx.recv_timeout(due) {
                    Ok(op) => op,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        match durable_empty_commit(&db) {
                            Ok(()) => lazy.committed(true),
                            Err(error) => return self.failed(error, wrote),
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Exit::Closed,
                },
                None => match self.rx.recv() {
                    Ok(op) => op,
                    Err(_) => return Exit::Closed,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut txn = match db.begin_write() {
                Ok(t) => t,
                Err(e) => {
                    let e = backend(e);
                    let exit = self.failed(e.clone(), wrote);
                    batch.into_iter().for_each(|op| op.fail(e.clone()));
                    return exit;
                }
            };
            let durable = lazy.durable(&batch);
            let writes = batch.iter().any(Op::writes);
            // The commit points: batches whose answers say "on disk".
            let answered = batch.iter().any(Op::answers_durably);
            let _ =
                txn.set_durability(if durable { Durability::Immediate } else { Durability::None });
            // Apply every op, keeping its answer until the commit is durable.
            let accounts = Accounts { depths: &depths, usage: &usage, pending: &pending };
            let cx = Context { limits, routes, accounts };
            let (answers, changed, failed) = apply_batch(&txn, &batch, &cx);
            let failed = failed.or_else(|| {
                if answered {
                    crate::failpoints::check("relay.commit.before").err().map(failpoint)
                } else {
                    None
                }
            });
            let result = match failed {
                Some(e) => {
                    let _ = txn.abort();
                    Err(e)
                }
                None => txn.commit().map_err(backend),
            };
            if let Err(e) = result {
                // Refused, all of it: nothing of the batch is on disk.
                let exit = self.failed(e.clone(), wrote);
                batch.into_iter().for_each(|op| op.fail(e.clone()));
                return exit;
            }
            if answered {
                let _ = crate::failpoints::check("relay.commit.after");
            }
            wrote |= writes;
            lazy.committed(durable);
            self.stats.committed(&batch);
            let Changes { queues, usage: addrs, pending: delta } = changed;
            depths.update(queues);
            usage.update(addrs);
            apply_pending(&mut pending, delta);
            super::note_fullness(&self.ids, &batch, &answers);
            for (op, answer) in batch.into_iter().zip(answers) {
                answer.send(op);
            }
        }
    }

    /// The database failed with `error`: down until it is open again.
    fn failed(&self, error: StoreError, wrote: bool) -> Exit {
        self.down(&error);
        Exit::Failed { error, wrote }
    }
}

/// An empty commit with an fsync, which makes earlier lazy commits durable.
fn durable_empty_commit(db: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    let _ = txn.set_durability(Durability::Immediate);
    txn.commit().map_err(backend)
}
