//! The machine a run happened on, for the JSON report: figures from a
//! 2-core laptop and a 64-core server are not comparable, ratios are.

use serde::Serialize;

/// What the report says about the machine and the build.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Cores this process may use (1 with `--pin`).
    pub cores: usize,
    /// `--pin`: this process on CPU 0, the servers it starts on CPU 1.
    pub pinned: bool,
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// Total memory in KiB (`/proc/meminfo`).
    pub memory_kib: Option<u64>,
    /// The open-file limit (soft, hard) after raising the soft one.
    pub open_files: (u64, u64),
    /// `release` or `debug`: debug figures say nothing about speed.
    pub build: &'static str,
    /// The 1, 5 and 15 minute load averages when the run started: other
    /// work on the machine (a load above the core count) skews every figure.
    pub load_average: Option<(f64, f64, f64)>,
}

fn load_average(text: &str) -> Option<(f64, f64, f64)> {
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    Some((it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?))
}

/// The 1, 5 and 15 minute load averages now (`/proc/loadavg`).
#[must_use]
pub fn current_load_average() -> Option<(f64, f64, f64)> {
    load_average(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

impl Machine {
    /// Read it from `/proc` (fields are `unknown` elsewhere).
    #[must_use]
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            pinned: crate::pin::pinned(),
            kernel: if kernel.is_empty() { "unknown".into() } else { kernel },
            memory_kib,
            open_files: crate::fdlimit::current(),
            build: if cfg!(debug_assertions) { "debug" } else { "release" },
            load_average: load_average(&read("/proc/loadavg")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_average_parses() {
        assert_eq!(load_average("0.50 1.25 2.00 3/120 999"), Some((0.5, 1.25, 2.0)));
        assert_eq!(load_average(""), None);
        assert!(Machine::detect().cores >= 1);
    }
}
