//! A `tandem-relay` process started by the bench: on `127.0.0.1:0` with its
//! own data directory and limits generous enough that the relay's rate
//! limits never shape a figure, its address read from the line it prints
//! once ready. It can be killed with SIGKILL and started again on the same
//! port and data (the reconnect storm).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::error::{BenchError, Result};

/// How long a relay may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start the relay.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The `tandem-relay` binary.
    pub bin: PathBuf,
    /// TLS with a self-signed certificate (`wss://`), else plain `ws://`.
    pub tls: bool,
    /// Seconds between the relay's pings (long for idle connections that
    /// do not read).
    pub ping_interval_secs: u64,
    /// Arguments after the bench's own (`--relay-arg`).
    pub extra_args: Vec<String>,
}

impl RelayOptions {
    /// The flags: loopback, generous limits, quiet logs.
    fn args(&self, listen: &str, data: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--listen".into(),
            listen.into(),
            "--tls".into(),
            if self.tls { "self-signed" } else { "off" }.into(),
            "--self-signed-names".into(),
            "127.0.0.1,localhost".into(),
            "--data-dir".into(),
            data.display().to_string(),
        ];
        let limits: [(&str, String); 19] = [
            ("--max-connections", "1000000".into()),
            // Every simulated device comes from a few loopback addresses.
            ("--max-connections-per-ip", "1000000".into()),
            ("--max-unauthenticated", "1000000".into()),
            ("--max-unauthenticated-per-ip", "1000000".into()),
            ("--max-mailboxes", "1000000".into()),
            ("--max-mailboxes-per-ip", "1000000".into()),
            // Pairings in flight from one address each hold a one-sided
            // authorisation for a moment.
            ("--max-pending-authorizations-per-ip", "1000000".into()),
            ("--queue-total-max-bytes", (64u64 << 30).to_string()),
            ("--queue-sender-share-percent", "100".into()),
            ("--connects-per-ip-per-minute", "1000000000".into()),
            ("--pair-claims-per-ip-per-minute", "1000000000".into()),
            ("--frames-per-device-per-second", "100000000".into()),
            ("--queue-max-frames", "10000000".into()),
            ("--queue-max-bytes", (4u64 << 30).to_string()),
            ("--ping-interval-secs", self.ping_interval_secs.to_string()),
            ("--ping-jitter-secs", "0".into()),
            ("--idle-timeout-secs", "86400".into()),
            ("--handshake-timeout-secs", "60".into()),
            ("--write-timeout-secs", "30".into()),
        ];
        for (flag, value) in limits {
            a.push(flag.into());
            a.push(value);
        }
        // `/metrics` on a port of its own (no token): the offline scenario
        // reads the store's counters.
        a.push("--metrics-listen".into());
        a.push("127.0.0.1:0".into());
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// A running relay process; killed when dropped.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    opts: RelayOptions,
    dir: tempfile::TempDir,
    url: String,
    /// `127.0.0.1:PORT`, kept across restarts.
    addr: String,
    /// Where `/metrics` is served (`127.0.0.1:PORT`).
    metrics: Option<String>,
}

impl RelayProcess {
    /// Start a relay on a free loopback port.
    ///
    /// # Errors
    /// [`BenchError::Process`] when the binary cannot be run or does not
    /// print its listening line in time.
    pub fn start(opts: RelayOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tandem-bench-relay").tempdir()?;
        let (child, url, metrics) = spawn(&opts, dir.path(), "127.0.0.1:0")?;
        let addr = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .ok_or_else(|| BenchError::Process(format!("cannot read the relay's address: {url}")))?
            .to_owned();
        Ok(Self { child, opts, dir, url, addr, metrics })
    }

    /// The relay's `/metrics` text, or `None` when it cannot be read.
    #[must_use]
    pub fn metrics(&self) -> Option<String> {
        use std::io::{Read, Write};
        let addr = self.metrics.as_deref()?;
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    }

    /// The URL devices connect to.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT`, where it listens.
    #[must_use]
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The process id (for `/proc`).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the self-signed certificate is, in TLS mode.
    #[must_use]
    pub fn root_pem_path(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.dir.path().join("data/tls/self-signed-cert.pem"))
    }

    /// The self-signed certificate to trust, in TLS mode.
    ///
    /// # Errors
    /// [`BenchError::Io`] when the relay did not write it.
    pub fn root_pem(&self) -> Result<Option<String>> {
        match self.root_pem_path() {
            Some(path) => Ok(Some(std::fs::read_to_string(path)?)),
            None => Ok(None),
        }
    }

    /// SIGKILL, like a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Start again on the same port and data directory (after
    /// [`RelayProcess::kill9`]); returns how long until it listened.
    ///
    /// # Errors
    /// [`BenchError::Process`] when it does not come back within 10 s.
    pub fn restart(&mut self) -> Result<Duration> {
        self.kill9();
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < Duration::from_secs(10) {
            match spawn(&self.opts, self.dir.path(), &self.addr) {
                Ok((child, url, metrics)) => {
                    self.child = child;
                    self.url = url;
                    self.metrics = metrics;
                    return Ok(started.elapsed());
                }
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Err(last.unwrap_or_else(|| BenchError::Process("the relay did not restart".into())))
    }

    /// The end of the relay's log (warnings and errors), for failure reports.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let skip = lines.len().saturating_sub(20);
        lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Run the binary and wait for `tandem-relay listening on URL` (after the
/// metrics line); returns the child, the URL and the metrics address.
fn spawn(opts: &RelayOptions, dir: &Path, listen: &str) -> Result<(Child, String, Option<String>)> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("relay.log"))?;
    let mut child = crate::pin::server_command(&opts.bin)
        .args(opts.args(listen, &dir.join("data")))
        .env("TANDEM_RELAY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| BenchError::Process(format!("cannot run {}: {e}", opts.bin.display())))?;
    let stdout = child.stdout.take().ok_or_else(|| BenchError::Process("no stdout".into()))?;
    let mut metrics = None;
    let lines = first_lines(stdout, START_TIMEOUT, |l| l.contains(" listening on "));
    for line in &lines {
        if let Some(rest) = line.trim().strip_prefix("tandem-relay metrics on http://") {
            metrics = Some(rest.trim_end_matches("/metrics").to_owned());
        }
    }
    match lines.last() {
        Some(line) => match line.trim().strip_prefix("tandem-relay listening on ") {
            Some(url) => Ok((child, url.to_owned(), metrics)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(BenchError::Process(format!("unexpected first line from the relay: {line:?}")))
            }
        },
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("relay.log")).unwrap_or_default();
            Err(BenchError::Process(format!(
                "the relay did not start ({}); its log:\n{log}",
                opts.bin.display()
            )))
        }
    }
}

/// Run `exe SUBCOMMAND --listen 127.0.0.1:0 --exit-with-stdin`, one of
/// this binary's baseline servers (it exits when its standard input
/// closes, so it never outlives the bench), and read its URL from its first
/// line, `PREFIX URL`. The child is killed when it does not print one.
///
/// # Errors
/// [`BenchError::Process`] when it does not start.
pub(crate) fn spawn_baseline(
    exe: &Path,
    subcommand: &str,
    prefix: &str,
) -> Result<(Child, String)> {
    let mut child = crate::pin::server_command(exe)
        .args([subcommand, "--listen", "127.0.0.1:0", "--exit-with-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| BenchError::Process(format!("cannot run {}: {e}", exe.display())))?;
    let stdout = child.stdout.take().ok_or_else(|| BenchError::Process("no stdout".into()))?;
    let line = first_line(stdout, Duration::from_secs(10));
    match line.as_deref().and_then(|l| l.trim().strip_prefix(prefix)) {
        Some(url) => Ok((child, url.to_owned())),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(BenchError::Process(format!("{subcommand} did not start: {line:?}")))
        }
    }
}

/// The lines a child prints up to the first that `last` accepts (or EOF,
/// or `timeout`); the rest of its output is read and dropped.
fn first_lines(
    out: impl std::io::Read + Send + 'static,
    timeout: Duration,
    last: impl Fn(&str) -> bool + Send + 'static,
) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        loop {
            let mut line = String::new();
            if !reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                return;
            }
            let done = last(&line);
            if tx.send(line).is_err() || done {
                break;
            }
        }
        drop(tx);
        // Keep the pipe drained so the child never blocks writing to it.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let until = Instant::now() + timeout;
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        lines.push(line);
    }
    lines
}

/// The first line a child prints, or `None` on EOF or after `timeout`.
pub(crate) fn first_line(
    out: impl std::io::Read + Send + 'static,
    timeout: Duration,
) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let ok = BufReader::new(out).read_line(&mut line).is_ok_and(|n| n > 0);
        let _ = tx.send(ok.then_some(line));
    });
    rx.recv_timeout(timeout).ok().flatten()
}

/// The relay binary next to this one (`target/<profile>/tandem-relay`).
#[must_use]
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}
