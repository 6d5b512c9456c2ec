//! The phone: the real phone engine (`tandem-phone`) in a process of its own
//! (this binary run again as `phone_process`), driven by lines on its
//! standard input, and writing every event it reports to its application
//! (task events, losses it reports, refusals) to an events file that
//! survives its `kill -9` (each line written at once, no buffer).
//!
//! Commands: `pair LINK`, `submit ID TEXT` (the harness picks the task ids,
//! so a submit cut by a kill is still known), `history ID` (the desktop's
//! whole history of a task), `tasks`. Each answer is a line
//! ([`crate::common::helper::say`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tandem_phone::{Phone, PhoneConfig, PhoneEvent, Schedule, TaskEvent};

use super::WAIT;
use crate::common::helper::{self, Helper, say};

const PHONE_DIR: &str = "TANDEM_FAULT_PHONE_DIR";
const PHONE_EVENTS: &str = "TANDEM_FAULT_PHONE_EVENTS";
const PHONE_RENEW_MS: &str = "TANDEM_FAULT_PHONE_RENEW_MS";

/// The word an event file line uses for a task event.
pub fn kind(e: &TaskEvent) -> &'static str {
    match e {
        TaskEvent::Accepted { .. } => "accepted",
        TaskEvent::Progress { .. } => "progress",
        TaskEvent::Finished { status, .. } => match status {
            tandem_phone::FinishStatus::Succeeded => "finished",
            _ => "finished-other",
        },
        _ => "other",
    }
}

fn line(file: &mut std::fs::File, l: String) {
    let _ = file.write_all(format!("{l}\n").as_bytes());
}

/// The body of `phone_process`: serve as the phone when asked to.
pub fn serve_if_asked() {
    let (Ok(dir), Ok(events_path)) = (std::env::var(PHONE_DIR), std::env::var(PHONE_EVENTS)) else {
        return;
    };
    let renew_ms: u64 =
        std::env::var(PHONE_RENEW_MS).ok().and_then(|s| s.parse().ok()).unwrap_or(3_600_000);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let schedule = Schedule {
            renew_after_ms: renew_ms,
            renew_after_records: 1_000_000,
            rekey_after_ms: renew_ms,
            renewal_timeout_ms: 8_000,
        };
        let config = PhoneConfig { schedule, ..PhoneConfig::new(&dir, "Ana's phone") };
        let phone = match Phone::open(config).await {
            Ok(p) => p,
            Err(e) => {
                say(format!("open-failed {e}"));
                return;
            }
        };
        let mut events = phone.subscribe();
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&events_path).unwrap();
        line(&mut file, "start".into());
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                let l = match e {
                    PhoneEvent::Task(t) => {
                        format!("task {} {} {}", t.task_id, t.offset, kind(&t.event))
                    }
                    PhoneEvent::MessagesLost { from_seq, to_seq, .. } => {
                        format!("lost-messages {from_seq} {to_seq}")
                    }
                    PhoneEvent::TaskEventsLost { task_id, from_offset, to_offset, .. } => {
                        format!("lost-events {task_id} {from_offset} {to_offset}")
                    }
                    PhoneEvent::Refused { task_id, code, .. } => {
                        format!("refused {} {code}", task_id.unwrap_or_default())
                    }
                    PhoneEvent::SendRefused { code, retrying, .. } => {
                        format!("send-refused {code} {retrying}")
                    }
                    PhoneEvent::DesktopSetAside { desktop_id, .. } => {
                        format!("set-aside {desktop_id}")
                    }
                    PhoneEvent::EarlyEventsDropped { missed } => format!("early-dropped {missed}"),
                    _ => continue,
                };
                line(&mut file, l);
            }
        });
        say(format!("ready {}", phone.desktops().len()));
        let mut lines =
            tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
        while let Ok(Some(l)) = lines.next_line().await {
            let phone = phone.clone();
            // Each command on its own: one that waits for a stopped relay
            // holds none of the others up.
            tokio::spawn(async move { command(&phone, &l).await });
        }
        phone.close().await;
    });
}

async fn command(phone: &Phone, l: &str) {
    let words: Vec<&str> = l.splitn(3, ' ').collect();
    let desktop = phone.desktops().first().map(|d| d.desktop_id.clone()).unwrap_or_default();
    match words.as_slice() {
        ["pair", link] => match phone.start_pairing(link).await {
            Ok(p) => match p.wait().await {
                Ok(d) => say(format!("paired {}", d.desktop_id)),
                Err(e) => say(format!("pair-failed {e}")),
            },
            Err(e) => say(format!("pair-failed {e}")),
        },
        ["submit", id, text] => match phone.submit_with_id(&desktop, id, text, None).await {
            Ok(()) => say(format!("submitted {id}")),
            Err(tandem_phone::PhoneError::Queued { .. }) => say(format!("submitted {id} queued")),
            Err(e) => say(format!("submit-error {id} {e}")),
        },
        ["history", id] => {
            let mut all = Vec::new();
            let mut from = 0;
            loop {
                match phone.history(&desktop, id, from).await {
                    Ok(page) => {
                        all.extend(page.events.iter().map(|e| json!([e.offset, kind(&e.event)])));
                        if !page.more {
                            say(format!("history {id} {}", json!(all)));
                            return;
                        }
                        from = page.next_offset;
                    }
                    Err(e) => {
                        say(format!("history-error {id} {e}"));
                        return;
                    }
                }
            }
        }
        ["tasks"] => match phone.tasks(&desktop).await {
            Ok(ts) => {
                let ids: Vec<String> = ts.into_iter().map(|t| t.task_id).collect();
                say(format!("tasks {}", json!(ids)));
            }
            Err(e) => say(format!("tasks-error {e}")),
        },
        _ => say(format!("unknown {l}")),
    }
}

/// The harness's side of a phone process.
pub struct PhoneProc {
    helper: Helper,
    dir: PathBuf,
    renew_ms: u64,
    /// Variables added to its environment, kept across restarts.
    env: Vec<(String, String)>,
    /// How many desktops it had when it opened.
    pub desktops: usize,
}

impl PhoneProc {
    /// Start the phone on `dir` (its state in `dir/phone`, its log in
    /// `dir/phone.log`, its events in `dir/phone-events`), renewing its
    /// sessions every `renew_ms`; returns once it opened.
    pub fn start(dir: &Path, renew_ms: u64) -> PhoneProc {
        let mut p = Self::spawn(dir, renew_ms);
        let ready = p.expect("ready ");
        p.desktops = ready.parse().unwrap();
        p
    }

    /// Started, not waited for (its opening may fail: a damaged or full
    /// data dir).
    pub fn spawn(dir: &Path, renew_ms: u64) -> PhoneProc {
        Self::spawn_with(dir, renew_ms, &[])
    }

    /// As [`PhoneProc::start`], with `env` added (a clock seam, say).
    pub fn start_with(dir: &Path, renew_ms: u64, env: &[(&str, &str)]) -> PhoneProc {
        let mut p = Self::spawn_with(dir, renew_ms, env);
        let ready = p.expect("ready ");
        p.desktops = ready.parse().unwrap();
        p
    }

    fn spawn_with(dir: &Path, renew_ms: u64, env: &[(&str, &str)]) -> PhoneProc {
        let mut cmd = helper::command("phone_process", &dir.join("phone.log"));
        cmd.envs(env.iter().copied());
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        cmd.env(PHONE_DIR, dir.join("phone"))
            .env(PHONE_EVENTS, dir.join("phone-events"))
            .env(PHONE_RENEW_MS, renew_ms.to_string());
        PhoneProc { helper: Helper::spawn(cmd), dir: dir.to_owned(), renew_ms, env, desktops: 0 }
    }

    pub fn pid(&self) -> u32 {
        self.helper.child.id()
    }

    pub fn send(&mut self, command: &str) {
        self.helper.send(command);
    }

    /// The rest of the next answer starting with `prefix`; `None` when the
    /// process ended first.
    pub fn until(&mut self, prefix: &str, wait: Duration) -> Option<String> {
        let l = self.helper.until(prefix, wait, |_| {})?;
        Some(l[prefix.len()..].to_owned())
    }

    pub fn expect(&mut self, prefix: &str) -> String {
        self.until(prefix, WAIT)
            .unwrap_or_else(|| panic!("the phone ended before {prefix:?}:\n{}", self.log_tail()))
    }

    /// The next answer within `wait`, if any.
    pub fn next(&mut self, wait: Duration) -> Option<String> {
        self.helper.next(wait)
    }

    pub fn log_tail(&self) -> String {
        super::tail(&self.dir.join("phone.log"), 40)
    }

    /// `kill -9`, and start again on the same data (with the same
    /// environment).
    pub fn restart(&mut self) {
        self.kill9();
        let env = std::mem::take(&mut self.env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        *self = PhoneProc::start_with(&self.dir.clone(), self.renew_ms, &env);
    }

    /// Whether the process ended.
    pub fn exited(&mut self) -> bool {
        self.helper.child.try_wait().ok().flatten().is_some()
    }

    pub fn kill9(&mut self) {
        let _ = self.helper.child.kill();
        let _ = self.helper.child.wait();
    }

    /// The process, to stop and continue it.
    pub fn stop(&self) {
        super::signal(self.pid(), "STOP");
    }

    pub fn cont(&self) {
        super::signal(self.pid(), "CONT");
    }

    /// The desktop's history of `task`: `(offset, kind)`, or the error.
    pub fn history(&mut self, task: &str) -> Result<Vec<(u64, String)>, String> {
        self.send(&format!("history {task}"));
        loop {
            let l = self.expect("history");
            if let Some(rest) = l.strip_prefix(&format!(" {task} ")) {
                return Ok(serde_json::from_str(rest).unwrap());
            }
            if let Some(rest) = l.strip_prefix(&format!("-error {task} ")) {
                return Err(rest.to_owned());
            }
        }
    }

    /// The task ids the desktop lists.
    pub fn tasks(&mut self) -> Result<Vec<String>, String> {
        self.send("tasks");
        let l = self.expect("tasks");
        match l.strip_prefix(' ') {
            Some(rest) => Ok(serde_json::from_str(rest).unwrap()),
            None => Err(l),
        }
    }
}

impl Drop for PhoneProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
