//! Files mode: the certificate chain and key from PEM files, reloaded when
//! either changes (polled) or on demand.

use super::*;

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: (u64, u64),
}

impl FileStamp {
    /// `None` when the file cannot be inspected (e.g. it is missing).
    pub(super) fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            inode: {
                use std::os::unix::fs::MetadataExt as _;
                (meta.dev(), meta.ino())
            },
        })
    }
}

/// Stamps of the certificate file and the key file.
pub(super) type PairStamp = (Option<FileStamp>, Option<FileStamp>);

pub(super) struct FileSource {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    provider: Arc<CryptoProvider>,
    pub(super) resolver: Arc<CurrentCert>,
    /// The files' stamps as of the last load attempt; the lock also serialises reloads.
    seen: Mutex<PairStamp>,
}

impl FileSource {
    pub(super) fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let stamps = (FileStamp::of(cert), FileStamp::of(key));
        let certified = load_certified_key(cert, key, &provider)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            resolver: Arc::new(CurrentCert::new(certified)),
            seen: Mutex::new(stamps),
        })
    }

    pub(super) fn stamps(&self) -> PairStamp {
        (FileStamp::of(&self.cert), FileStamp::of(&self.key))
    }

    /// Loads the files and, if they are valid, serves them from now on.
    pub(super) fn reload(&self) -> Result<(), TlsError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Stamp before reading: a change made while reading shows up at the next poll.
        *seen = self.stamps();
        let certified = load_certified_key(&self.cert, &self.key, &self.provider)?;
        self.resolver.set(certified);
        Ok(())
    }

    /// One poll of the watcher. A change is acted upon once the files have stayed the same for
    /// one poll interval, so that a certificate and key being rewritten one after the other are
    /// not read half-way. Returns the outcome of a reload, if one was attempted.
    pub(super) fn poll(&self, pending: &mut Option<PairStamp>) -> Option<Result<(), TlsError>> {
        let now = self.stamps();
        let unchanged = *self.seen.lock().unwrap_or_else(PoisonError::into_inner) == now;
        if unchanged {
            *pending = None;
            return None;
        }
        if pending.as_ref() != Some(&now) {
            *pending = Some(now);
            return None;
        }
        *pending = None;
        Some(self.reload())
    }
}

/// Polls the certificate files until `shutdown`, reloading them when they change.
pub(super) async fn watch_files(
    files: Arc<FileSource>,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick completes immediately
    let mut pending = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let source = Arc::clone(&files);
        let polled = tokio::task::spawn_blocking(move || {
            let outcome = source.poll(&mut pending);
            (pending, outcome)
        })
        .await;
        let outcome = match polled {
            Ok((still_pending, outcome)) => {
                pending = still_pending;
                outcome
            }
            Err(err) => {
                tracing::warn!(error = %err, "TLS: certificate file poll did not complete");
                pending = None;
                continue;
            }
        };
        match outcome {
            None => {}
            Some(Ok(())) => tracing::info!(
                cert = %files.cert.display(),
                key = %files.key.display(),
                "TLS: certificate files changed; reloaded"
            ),
            Some(Err(err)) => tracing::warn!(
                error = %err,
                "TLS: certificate files changed but cannot be loaded; still serving the previous \
                 certificate"
            ),
        }
    }
    tracing::debug!("TLS: certificate file watcher stopped");
}
