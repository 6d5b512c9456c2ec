//! The bare forwarder as a target: `tandem-bench forwarder` in a process of
//! its own (so its CPU time and memory are measured like the relay's), and
//! pairs as two plain WebSockets through it.

use std::io::Read;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::plain::{self, Side};
use super::{Health, PairIo, Target, channels};
use crate::error::Result;
use crate::wire::WireSizes;

/// Pairs set up at once.
const SETUP_CONCURRENCY: usize = 32;

/// A forwarder process; killed when dropped.
#[derive(Debug)]
pub struct ForwarderProcess {
    child: Child,
    url: String,
}

impl ForwarderProcess {
    /// Run `exe forwarder` on a free loopback port. The child exits when
    /// its standard input closes, so it never outlives the bench.
    ///
    /// # Errors
    /// [`BenchError::Process`] when it does not start.
    pub fn start(exe: &Path) -> Result<Self> {
        let (child, url) =
            crate::relay::spawn_baseline(exe, "forwarder", "tandem-bench forwarder listening on ")?;
        Ok(Self { child, url })
    }

    /// Its URL (`ws://127.0.0.1:PORT/`).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ForwarderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait in a thread for a parent's pipe to close, then exit: children of
/// the bench end with it.
pub fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// The bare forwarder.
#[derive(Debug)]
pub struct ForwarderTarget {
    process: ForwarderProcess,
    sizes: WireSizes,
    health: Arc<Health>,
}

impl ForwarderTarget {
    /// Start the forwarder process from this binary.
    ///
    /// # Errors
    /// [`BenchError::Process`] when it does not start.
    pub fn start(exe: &Path, sizes: WireSizes) -> Result<Self> {
        Ok(Self { process: ForwarderProcess::start(exe)?, sizes, health: Arc::default() })
    }

    async fn open_one(&self) -> Result<PairIo> {
        let id = plain::pair_id()?;
        let url = self.process.url();
        let desktop = plain::connect(url, plain::hello(id, Side::Desktop)).await?;
        let phone = plain::connect(url, plain::hello(id, Side::Phone)).await?;
        let (mut io, ends) = channels();
        io.tasks = plain::spawn_ends(desktop, phone, ends, self.sizes, &self.health);
        Ok(io)
    }
}

impl Target for ForwarderTarget {
    fn name(&self) -> &'static str {
        "forwarder"
    }

    fn pid(&self) -> Option<u32> {
        Some(self.process.pid())
    }

    fn open(&self, pairs: usize) -> BoxFuture<'_, Result<Vec<PairIo>>> {
        super::open_pairs(pairs, SETUP_CONCURRENCY, || self.open_one()).boxed()
    }

    fn health(&self) -> &Health {
        &self.health
    }
}
