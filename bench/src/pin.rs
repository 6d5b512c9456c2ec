//! `--pin`: the server under test and the load generator on separate CPUs.
//! The bench pins itself (every thread) to [`BENCH_CPU`] before its runtime
//! starts, and every server it starts afterwards (the relay, the forwarder,
//! iroh-relay: each a process of its own) to [`SERVER_CPU`], with
//! `taskset` (util-linux), so that each server has exactly one core and the
//! simulated devices the other. Worker processes of the bench inherit its
//! CPU. Pinning is process-wide: it is set once, in `main`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{BenchError, Result};

/// The CPU the bench (the load generator) runs on with `--pin`.
pub const BENCH_CPU: usize = 0;
/// The CPU servers under test run on with `--pin`.
pub const SERVER_CPU: usize = 1;

static PINNED: AtomicBool = AtomicBool::new(false);

/// Pin this process (all its threads) to [`BENCH_CPU`] and every server
/// started from now on to [`SERVER_CPU`]. Call it before the runtime
/// starts, so that every thread inherits the CPU.
///
/// # Errors
/// [`BenchError::Usage`] with fewer than two CPUs to use,
/// [`BenchError::Process`] when `taskset` is missing or fails.
pub fn pin() -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if cpus < 2 {
        return Err(BenchError::Usage(format!(
            "--pin needs two CPUs, this process may use {cpus}"
        )));
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &BENCH_CPU.to_string(), &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| BenchError::Process(format!("--pin: cannot run taskset: {e}")))?;
    if !status.success() {
        return Err(BenchError::Process(format!("--pin: taskset failed: {status}")));
    }
    PINNED.store(true, Ordering::Release);
    Ok(())
}

/// Whether `--pin` is in effect.
#[must_use]
pub fn pinned() -> bool {
    PINNED.load(Ordering::Acquire)
}

/// A command that runs `program` as a server under test: on
/// [`SERVER_CPU`] when pinned, as is otherwise.
#[must_use]
pub fn server_command(program: &Path) -> Command {
    if pinned() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(SERVER_CPU.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unpinned_server_runs_as_is() {
        let c = server_command(Path::new("/bin/true"));
        assert_eq!(c.get_program(), "/bin/true");
        assert_eq!(c.get_args().count(), 0);
    }
}
