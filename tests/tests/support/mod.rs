//! The fault suite's harness: the real relay, the real agent (`tandem`)
//! and the real phone engine, each a process of its own that a scenario
//! can `kill -9`, restart on the same data, stop (`SIGSTOP`) and continue,
//! or put behind a damaged network ([`net`]); traffic through the real
//! protocol ([`phone`]); and the tally of what arrived ([`tally`]).
//!
//! The relay and the phone are this test binary run again as an ignored
//! "test" (`relay_process`, `phone_process`), as in `desktop-agent/tests/`
//! (whose relay launcher, `common/relay.rs`, this suite shares);
//! the agent is the `tandem` binary Cargo built next to this test binary
//! (or `TANDEM_BIN`). Every scenario takes its seed from `TANDEM_FAULT_SEED`
//! (else a fresh one) and prints it first, so a failure can be replayed.

#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod damage;
pub mod net;
pub mod phone;
pub mod powerloss;
pub mod samples;
pub mod tally;
pub mod world;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

pub use crate::common::relay::Relay;

/// Only there so that a broken build fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(60);

/// The scenario's seed: `TANDEM_FAULT_SEED`, else a fresh one; printed so a
/// failure can be replayed.
pub fn seeded(scenario: &str) -> (u64, StdRng) {
    let seed = std::env::var("TANDEM_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() % 1_000_000);
    eprintln!("scenario {scenario}: seed {seed} (replay with TANDEM_FAULT_SEED={seed})");
    (seed, StdRng::seed_from_u64(seed))
}

/// The scenario's directory: removed at the end unless
/// `TANDEM_FAULT_KEEP` is set (then its path is printed, for the logs).
pub fn scenario_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("TANDEM_FAULT_KEEP").is_some() {
        eprintln!("scenario dir (kept): {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

/// A number from the environment (`TANDEM_FAULT_CYCLES`, …), else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Send `signal` (`KILL`, `STOP`, `CONT`) to `pid` (no `unsafe` here: the
/// `kill` command).
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid}");
}

/// The resident memory of `pid` in KiB (`VmRSS`), 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// The number of open file descriptors of `pid`.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The last `n` lines of a log file, for a failure message.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A child process that can be killed, stopped and continued, killed when
/// dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `SIGSTOP`: it stands still (a laptop asleep, a frozen relay).
    pub fn stop(&self) {
        signal(self.pid(), "STOP");
    }

    /// `SIGCONT`.
    pub fn cont(&self) {
        signal(self.pid(), "CONT");
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued to die of anything but KILL;
        // KILL works on a stopped one too.
        self.kill9();
    }
}

/// The real agent: `tandem run` on `dir` (after [`pair_agent`]), its log
/// appended to `log`.
pub struct Agent {
    pub proc: Proc,
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    lines: mpsc::Receiver<String>,
}

/// The `tandem` binary: `TANDEM_BIN`, else next to this test binary (Cargo
/// builds it with the workspace's tests: `target/debug/tandem`).
pub fn tandem_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANDEM_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("tandem");
    assert!(
        bin.exists(),
        "{} is missing: build it with the tests (cargo nextest run -p tandem-agent -p tandem-e2e …) or set TANDEM_BIN",
        bin.display()
    );
    bin
}

/// The agent's configuration: the JSON-lines fixture executor of the
/// agent's own tests as the default.
pub fn agent_config(dir: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../desktop-agent/tests/fixtures/agent.py")
        .canonicalize()
        .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[executor]]\nname = \"fixture\"\ntype = \"jsonl\"\nprogram = \"{}\"\n",
            fixture.display()
        ),
    )
    .unwrap();
    config
}

fn spawn_lines(mut cmd: Command) -> (Proc, mpsc::Receiver<String>) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end even when nobody listens any more: a closed pipe
        // would make the process's next `println!` panic.
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Proc { child }, rx)
}

fn agent_command(dir: &Path, config: &Path, log: &Path, env: &[(String, String)]) -> Command {
    let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(tandem_bin());
    cmd.arg("--data-dir")
        .arg(dir)
        .arg("--config")
        .arg(config)
        .args(["--name", "build-box"])
        .env_remove("FAILPOINTS")
        .env("TANDEM_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(logf);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `tandem pair --yes` on `dir`: the process (it exits once paired) and
/// the pairing link it printed.
pub fn pair_agent(dir: &Path, config: &Path, log: &Path, relay: &Relay) -> (Proc, String) {
    pair_agent_at(dir, config, log, &relay.url(), &relay.link_base())
}

/// As [`pair_agent`], with the relay at `url` (haproxy's, say) and links
/// on `link_base`.
pub fn pair_agent_at(
    dir: &Path,
    config: &Path,
    log: &Path,
    url: &str,
    link_base: &str,
) -> (Proc, String) {
    let mut cmd = agent_command(dir, config, log, &[]);
    cmd.args(["pair", "--relay", url, "--link-base", link_base]).args([
        "--yes",
        "--print-url",
        "--no-terminal-qr",
    ]);
    let (proc, lines) = spawn_lines(cmd);
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                if let Some(link) = l.trim().strip_prefix("pairing link: ") {
                    return (proc, link.to_owned());
                }
            }
            Err(_) => panic!("`tandem pair` printed no link:\n{}", tail(log, 30)),
        }
    }
}

impl Agent {
    /// `tandem run` on `dir`; returns once it printed `Connected.`.
    pub fn run(dir: &Path, config: &Path, log: &Path, env: &[(&str, &str)]) -> Agent {
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut a = Agent::spawn(dir, config, log, env);
        a.connected();
        a
    }

    fn spawn(dir: &Path, config: &Path, log: &Path, env: Vec<(String, String)>) -> Agent {
        let mut cmd = agent_command(dir, config, log, &env);
        cmd.arg("run");
        let (proc, lines) = spawn_lines(cmd);
        Agent {
            proc,
            dir: dir.to_owned(),
            config: config.to_owned(),
            log: log.to_owned(),
            env,
            lines,
        }
    }

    /// Wait for the next `Connected.` line.
    pub fn connected(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.trim_start().starts_with("Connected.") => return,
                Ok(_) => {}
                Err(_) => panic!("the agent never connected:\n{}", tail(&self.log, 40)),
            }
        }
    }

    /// Start again with `FAILPOINTS=point=return`: it aborts there (a crash
    /// point of `desktop-agent/src/crashpoint.rs`, as `kill -9`).
    pub fn restart_failing(&mut self, point: &str) {
        self.proc.kill9();
        let (dir, config, log) = (self.dir.clone(), self.config.clone(), self.log.clone());
        let mut env = self.env.clone();
        env.push(("FAILPOINTS".into(), format!("{point}=return")));
        let failing = Agent::spawn(&dir, &config, &log, env);
        *self = Agent { env: self.env.clone(), ..failing };
    }

    /// Add `extra` to its environment from its next start on (a seam
    /// preloaded, say).
    pub fn add_env(&mut self, extra: Vec<(String, String)>) {
        self.env.extend(extra);
    }

    /// Start again on the same data (after a kill), not waiting for it to
    /// connect (the relay may be down).
    pub fn restart(&mut self) {
        self.proc.kill9();
        let (dir, config, log) = (self.dir.clone(), self.config.clone(), self.log.clone());
        *self = Agent::spawn(&dir, &config, &log, self.env.clone());
    }
}

/// A small tmpfs mounted on `path` (created if missing), unmounted when
/// dropped (lazily: a process killed just before may still hold it).
pub struct Mount {
    path: PathBuf,
}

impl Mount {
    pub fn tmpfs(path: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount a tmpfs on {} (needs root)", path.display());
        Mount { path: path.to_owned() }
    }

    /// Fill it: a file of zeros until the disk is full. The filler's path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // The last few bytes too.
        while f.write_all(&[0u8; 512]).is_ok() {}
        let _ = f.sync_all();
        filler
    }

    /// Free the space [`Mount::fill`] took.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
