//! A `redis-server` started by the bench for the relay's Redis store (the
//! `tandem-wire-redis` and `tandem-wire-cluster` targets, the storm over
//! several nodes): its own free loopback port (never 6379), its own
//! directory, AOF on (`--appendonly yes`, `--appendfsync everysec` unless
//! `--redis-fsync` says otherwise), no RDB snapshots (`--save ''`). Killed
//! when dropped.
//!
//! The bench reads the server's command counters (`INFO commandstats`)
//! before and after a run over a plain TCP connection speaking RESP, to
//! report Redis commands per message delivered.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{BenchError, Result};

/// The program the bench runs.
pub const PROGRAM: &str = "redis-server";

/// How long the server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `redis-server` can be run here (the Redis targets are skipped,
/// with a message, when it cannot).
#[must_use]
pub fn available() -> bool {
    Command::new(PROGRAM)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The message printed when a Redis target is skipped.
#[must_use]
pub fn missing_message(what: &str) -> String {
    format!("skipping {what}: {PROGRAM} is not installed (apt install redis-server)")
}

/// A running `redis-server`; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start one on a free loopback port with AOF and `appendfsync`
    /// (`always`, `everysec` or `no`); returns once it answers `PING`.
    ///
    /// # Errors
    /// [`BenchError::Process`] when it cannot be run or does not answer.
    pub fn start(appendfsync: &str) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tandem-bench-redis").tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("redis.log"))?;
        let child = crate::pin::server_command(Path::new(PROGRAM))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", appendfsync])
            .args(["--protected-mode", "no", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Process(format!("cannot run {PROGRAM}: {e}")))?;
        let mut server = Self { child, port, _dir: dir };
        let until = Instant::now() + START_TIMEOUT;
        while Instant::now() < until {
            if server.command(&["PING"]).is_ok_and(|r| r == "PONG") {
                return Ok(server);
            }
            if !matches!(server.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        server.kill();
        Err(BenchError::Process(format!("{PROGRAM} did not answer on port {port}")))
    }

    /// The URL the relay nodes get (`--redis-url`).
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The process id (for its CPU time).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's command counters now.
    ///
    /// # Errors
    /// [`BenchError::Io`] or [`BenchError::Protocol`] when it does not answer.
    pub fn commands(&self) -> Result<Commands> {
        Ok(Commands::parse(&self.command(&["INFO", "commandstats"])?))
    }

    /// Run one command (bulk-string arguments), returning a simple or bulk
    /// string reply.
    fn command(&self, args: &[&str]) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        read_reply(&mut BufReader::new(s))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port that is not Redis's default.
fn free_port() -> Result<u16> {
    for _ in 0..10 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if port != 6379 {
            return Ok(port);
        }
    }
    Err(BenchError::Process("no free port".into()))
}

/// One RESP reply: a simple string, a bulk string, or an error.
fn read_reply(r: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let bad = || BenchError::Protocol(format!("redis: unexpected reply {line:?}"));
    match line.as_bytes().first() {
        Some(b'+') => Ok(line.get(1..).unwrap_or_default().to_owned()),
        Some(b'-') => Err(BenchError::Protocol(format!("redis: {}", line.get(1..).unwrap_or("")))),
        Some(b'$') => {
            let len: usize = line.get(1..).and_then(|n| n.parse().ok()).ok_or_else(bad)?;
            let mut body = vec![0; len + 2];
            r.read_exact(&mut body)?;
            body.truncate(len);
            String::from_utf8(body).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Calls per command, from `INFO commandstats` (commands a Lua script runs
/// count too, as Redis counts them: one `EVALSHA` running three `XADD`s is
/// four calls).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands(pub BTreeMap<String, u64>);

impl Commands {
    /// Parse `INFO commandstats` (`cmdstat_NAME:calls=N,usec=…`).
    #[must_use]
    pub fn parse(info: &str) -> Self {
        let mut m = BTreeMap::new();
        for line in info.lines() {
            let Some((name, rest)) =
                line.trim().strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(calls) = calls {
                m.insert(name.to_owned(), calls);
            }
        }
        Self(m)
    }

    /// What ran between `before` and `self` (the bench's own `INFO` calls
    /// left out).
    #[must_use]
    pub fn since(&self, before: &Commands) -> Commands {
        let m = self
            .0
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, &n)| {
                (name.clone(), n.saturating_sub(before.0.get(name).copied().unwrap_or(0)))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        Commands(m)
    }

    /// Every call.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Script calls (`EVAL`, `EVALSHA`, `FCALL` and their read-only forms):
    /// each is one command sent, whatever it runs inside.
    #[must_use]
    pub fn scripts(&self) -> u64 {
        self.0
            .iter()
            .filter(|(n, _)| n.starts_with("eval") || n.starts_with("fcall"))
            .map(|(_, &c)| c)
            .sum()
    }
}

/// Redis commands per message over one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RedisOps {
    /// Every command Redis executed in the run (scripts' inner calls
    /// included), per message delivered.
    pub commands_per_message: f64,
    /// Script calls (`EVALSHA` …) per message: each one command sent.
    pub scripts_per_message: f64,
    /// Every command Redis executed in the run.
    pub commands: u64,
    /// Messages the run delivered (warm-up and drain included; the
    /// commands were counted over the same span).
    pub messages: u64,
    /// The busiest commands, calls per message, most first (at most 8).
    pub top: Vec<(String, f64)>,
}

impl RedisOps {
    /// The figures of `delta` over `messages` (`None` with no message).
    #[must_use]
    pub fn of(delta: &Commands, messages: u64) -> Option<Self> {
        if messages == 0 {
            return None;
        }
        let per = |n: u64| n as f64 / messages as f64;
        let mut top: Vec<(String, f64)> =
            delta.0.iter().map(|(k, &v)| (k.clone(), per(v))).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(8);
        Some(Self {
            commands_per_message: per(delta.total()),
            scripts_per_message: per(delta.scripts()),
            commands: delta.total(),
            messages,
            top,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Commandstats\r\n\
        cmdstat_evalsha:calls=10,usec=59,usec_per_call=5.90,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_xadd:calls=30,usec=8,usec_per_call=0.27,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_config|resetstat:calls=1,usec=33,usec_per_call=33.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=4,usec=3,usec_per_call=1,rejected_calls=0,failed_calls=0\r\n\
        garbage line\r\ncmdstat_broken:usec=1\r\n";

    #[test]
    fn commandstats_parse_and_subtract() {
        let after = Commands::parse(INFO);
        assert_eq!(after.0.get("evalsha"), Some(&10));
        assert_eq!(after.0.get("config|resetstat"), Some(&1));
        assert_eq!(after.0.get("broken"), None, "no calls= field");
        let before = Commands::parse("cmdstat_xadd:calls=10,usec=1\r\ncmdstat_info:calls=1");
        let d = after.since(&before);
        assert_eq!(d.0.get("xadd"), Some(&20));
        assert_eq!(d.0.get("info"), None, "the bench's own INFO calls are left out");
        assert_eq!((d.total(), d.scripts()), (31, 10));
        let ops = RedisOps::of(&d, 10).unwrap();
        assert!((ops.commands_per_message - 3.1).abs() < 1e-9);
        assert!((ops.scripts_per_message - 1.0).abs() < 1e-9);
        assert_eq!(ops.top.first().map(|t| t.0.as_str()), Some("xadd"));
        assert_eq!(RedisOps::of(&d, 0), None);
    }

    #[test]
    fn replies_parse_and_errors_are_errors() {
        let mut r = BufReader::new(&b"+PONG\r\n"[..]);
        assert_eq!(read_reply(&mut r).unwrap(), "PONG");
        let mut r = BufReader::new(&b"$5\r\nhello\r\n"[..]);
        assert_eq!(read_reply(&mut r).unwrap(), "hello");
        let mut r = BufReader::new(&b"-ERR no\r\n"[..]);
        assert!(read_reply(&mut r).is_err());
        let mut r = BufReader::new(&b":12\r\n"[..]);
        assert!(read_reply(&mut r).is_err());
        let mut r = BufReader::new(&b"$9\r\nshort"[..]);
        assert!(read_reply(&mut r).is_err(), "a truncated bulk string");
    }

    #[test]
    fn a_real_server_counts_commands() {
        if !available() {
            eprintln!("{}", missing_message("a_real_server_counts_commands"));
            return;
        }
        let r = RedisServer::start("everysec").unwrap();
        assert!(r.url().starts_with("redis://127.0.0.1:"));
        assert!(!r.url().contains(":6379/"));
        let before = r.commands().unwrap();
        for _ in 0..3 {
            assert_eq!(r.command(&["PING"]).unwrap(), "PONG");
        }
        let d = r.commands().unwrap().since(&before);
        assert_eq!(d.0.get("ping"), Some(&3), "{d:?}");
        assert!(r.command(&["NOSUCHCOMMAND"]).is_err());
    }
}
