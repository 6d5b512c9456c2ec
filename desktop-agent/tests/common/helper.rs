//! A helper process that speaks in lines: this test binary run again as
//! one of its ignored tests (a phone engine in a process of its own, so
//! that a crash point can abort it). It reads commands on its standard
//! input and answers with lines starting with [`SAYS`] on its standard
//! output ([`say`]); its log goes to a file.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

/// What starts each answer line of a helper.
pub const SAYS: &str = "phone says: ";

/// In the helper: print `line` as an answer.
pub fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{SAYS}{line}");
    let _ = out.flush();
}

/// The command that runs the ignored test `test` of this binary, its
/// standard error appended to `log`; the caller adds the environment.
pub fn command(test: &str, log: &Path) -> Command {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1"]).stderr(log);
    cmd
}

/// A running helper and its answers.
pub struct Helper {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: std_mpsc::Receiver<String>,
}

impl Helper {
    /// Start `cmd` (from [`command`]).
    pub fn spawn(mut cmd: Command) -> Helper {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some((_, said)) = line.split_once(SAYS)
                    && tx.send(said.to_owned()).is_err()
                {
                    break;
                }
            }
        });
        Helper { child, stdin, lines }
    }

    /// Write one command line.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    /// Answers until one starting with `prefix`, within `wait`; `each` sees
    /// every answer first. `None` when the process ended first.
    pub fn until(
        &mut self,
        prefix: &str,
        wait: Duration,
        mut each: impl FnMut(&str),
    ) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    each(&line);
                    if line.starts_with(prefix) {
                        return Some(line);
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the phone printed no {prefix:?} in time")
                }
            }
        }
    }

    /// The next answer within `wait`, if any.
    pub fn next(&mut self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// Close its input (it ends its loop).
    pub fn close_input(&mut self) {
        drop(self.stdin.take());
    }

    /// Wait (at most `wait`) for it to exit by itself.
    pub fn exit_within(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
