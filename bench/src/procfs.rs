//! What `/proc` says about a process: resident memory and CPU time. Linux
//! only; elsewhere the figures are absent rather than wrong.

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 by
/// the kernel's user-space ABI).
const USER_HZ: f64 = 100.0;

/// The resident set size of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
#[must_use]
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU time `pid` has used, every thread included, in
/// seconds (10 ms resolution).
#[must_use]
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ppid (4), … utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The kernel's count of connections dropped because a listening socket's
/// accept queue was full (`TcpExt: ListenOverflows` in `/proc/net/netstat`,
/// the whole machine's since boot). A dropped handshake is retried by the
/// kernel after 1 s, then 2 s, 4 s…, so each one costs its client seconds.
#[must_use]
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let at = names.split_whitespace().position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(at)?.parse().ok();
    }
    None
}

/// CPU time used by one process over a measurement.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: u32,
    start: Option<f64>,
}

impl CpuMeter {
    /// Start counting for `pid`.
    #[must_use]
    pub fn start(pid: u32) -> Self {
        Self { pid, start: cpu_seconds(pid) }
    }

    /// CPU seconds since [`CpuMeter::start`], if `/proc` answered both times.
    #[must_use]
    pub fn elapsed(&self) -> Option<f64> {
        Some(cpu_seconds(self.pid)? - self.start?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(rss_kib(me).is_some_and(|r| r > 0));
            assert!(cpu_seconds(me).is_some());
        }
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
