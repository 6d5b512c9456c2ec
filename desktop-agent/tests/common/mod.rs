//! Harness: `tandem up` as a process, and a phone (proto + client) that
//! pairs with it from the QR code, as a camera would read it.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tandem_client::{Client, ClientConfig, Event};
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::{Link, LinkEvent};
use tandem_proto::message::{Decoded, DeviceInfo, Message};
use tandem_proto::pairing::{PairingError, PhoneAwaitingResult, PhonePairing};
use tandem_proto::qr::PairingLink;
use tandem_proto::{DeviceId, DeviceKey, Role};
use tokio::sync::mpsc;

pub mod helper;
pub mod proxy;
pub mod relay;

pub struct Agent {
    child: Child,
    lines: std_mpsc::Receiver<String>,
    stdin: Option<ChildStdin>,
}

impl Agent {
    /// `tandem up` on a free loopback port with `config` as its configuration file.
    pub fn up(dir: &Path, config: &Path) -> Agent {
        Self::up_at(dir, config, "127.0.0.1:0")
    }

    /// `tandem up` listening on `listen` (to come back on the same port).
    pub fn up_at(dir: &Path, config: &Path, listen: &str) -> Agent {
        Self::up_with(dir, config, listen, &["--yes"], &[])
    }

    /// `tandem up` listening on `listen` with more arguments (`--yes`,
    /// `--scope`, …) and environment variables, its standard input a pipe
    /// ([`Agent::type_line`]).
    pub fn up_with(
        dir: &Path,
        config: &Path,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("--config")
            .arg(config)
            .args(["--name", "build-box", "up", "--listen", listen, "--print-url"])
            .args(["--no-terminal-qr", "--qr-png"])
            .arg(dir.join("qr.png"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stderr(Stdio::null());
        Self::spawn(cmd)
    }

    pub fn line_starting(&self, prefix: &str) -> String {
        self.lines_until(prefix).pop().unwrap()
    }

    /// Every line printed up to and including the first that starts with `prefix`.
    pub fn lines_until(&self, prefix: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.trim_start().starts_with(prefix) => {
                    seen.push(l);
                    return seen;
                }
                Ok(l) => seen.push(l),
                Err(_) => panic!(
                    "the agent never printed a line starting with {prefix:?}; it printed {seen:#?}"
                ),
            }
        }
    }

    /// Type a line at the agent's terminal (its standard input).
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the agent's stdin is a pipe");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Wait for the agent to exit by itself; its exit status.
    pub fn wait_exit(mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the agent did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tandem(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "tandem {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub fn zbarimg(png: &Path) -> String {
    let out = Command::new("zbarimg").args(["--raw", "-q"]).arg(png).output().unwrap_or_else(|e| {
        panic!("zbarimg is needed (Debian package zbar-tools; ./scripts/test.sh installs it): {e}")
    });
    assert!(out.status.success(), "zbarimg could not read {}", png.display());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub async fn next(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    next_within(events, what, Duration::from_secs(20), pred).await
}

/// [`next`], waiting up to `wait` for each event.
pub async fn next_within(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    wait: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    loop {
        let e = tokio::time::timeout(wait, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
        if pred(&e) {
            return e;
        }
    }
}

/// How each approval in `events` was resolved: (allowed, by whom).
pub fn resolutions(events: &[tandem_proto::message::TaskEvent]) -> Vec<(bool, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            tandem_proto::message::TaskEvent::ApprovalResolved { allow, by, .. } => {
                Some((*allow, by.clone()))
            }
            _ => None,
        })
        .collect()
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A phone paired with the agent.
pub struct Phone {
    pub key: DeviceKey,
    pub client: Client,
    pub events: mpsc::Receiver<Event>,
    pub link: Link,
    pub desktop: DeviceId,
    /// `host:port` of the agent's relay.
    pub relay_addr: String,
    entropy: Entropy,
}

impl Phone {
    /// Scan the agent's QR code and pair; checks both sides show the same code.
    pub async fn pair(agent: &Agent, dir: &Path) -> Phone {
        Self::pair_via(agent, dir, None).await
    }

    /// As [`Phone::pair`], but reach the relay at `relay_url` rather than
    /// where the link says (a test whose agent dials the relay through a
    /// proxy keeps the phone off it: the QR payload names the agent's
    /// relay URL when the link's origin differs).
    pub async fn pair_via(agent: &Agent, dir: &Path, relay_url: Option<String>) -> Phone {
        let link = scan(agent, dir);
        let claimed = Claimed::claim(agent, &link, relay_url, new_key(), info("Ana's phone")).await;
        let phone = claimed.result().await.unwrap();
        agent.line_starting("Paired with Ana's phone");
        agent.line_starting("Connected.");
        phone
    }
}

/// What a phone calls itself.
pub fn info(name: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: "test".into(),
        app_version: "0".into(),
        ephemeral: false,
    }
}

/// A fresh device key.
pub fn new_key() -> DeviceKey {
    DeviceKey::generate(&mut Entropy::os()).unwrap()
}

/// The link the agent shows next: printed, and drawn as the QR code (which
/// must agree), as a camera reads it.
pub fn scan(agent: &Agent, dir: &Path) -> String {
    let printed = agent
        .line_starting("pairing link: ")
        .trim()
        .trim_start_matches("pairing link: ")
        .to_owned();
    let scanned = zbarimg(&dir.join("qr.png"));
    assert_eq!(scanned, printed, "the QR code carries the printed link");
    scanned
}

/// A phone that scanned a code and proved it to the desktop: the desktop
/// shows the code and asks its user.
pub struct Claimed {
    key: DeviceKey,
    client: Client,
    events: mpsc::Receiver<Event>,
    waiting: PhoneAwaitingResult,
    desktop: DeviceId,
    relay_addr: String,
    entropy: Entropy,
    /// The 6-digit code, as both screens show it.
    pub sas: String,
    /// What the desktop printed from the code it showed to the proposed scope.
    pub dialog: Vec<String>,
}

impl Claimed {
    /// Claim the code of `link` as a phone with `key` and `me`, through the
    /// welcome and the confirmation; checks that the desktop prints the
    /// same code (`Code: …`).
    pub async fn claim(
        agent: &Agent,
        link: &str,
        relay_url: Option<String>,
        key: DeviceKey,
        me: DeviceInfo,
    ) -> Claimed {
        let link = PairingLink::parse(link, now_unix()).unwrap();
        let relay_url = relay_url.unwrap_or_else(|| {
            format!("{}/v1/connect", link.relay_origin().replacen("http://", "ws://", 1))
        });
        let (client, mut events) =
            Client::start(ClientConfig::new(relay_url, key.clone(), Role::Phone));
        next(&mut events, "connected", |e| matches!(e, Event::Connected { .. })).await;
        let mut entropy = Entropy::os();
        let (pairing, hello) = PhonePairing::start(&key, &link.payload, &me, &mut entropy).unwrap();
        let pid = link.payload.pairing_id();
        let desktop = link.payload.desktop.device_id();
        client.pair_claim(pid, hello).await.unwrap();
        let Event::PairMessage { payload, .. } =
            next(&mut events, "welcome", |e| matches!(e, Event::PairMessage { .. })).await
        else {
            unreachable!()
        };
        let (waiting, confirm) = pairing.on_welcome(&Envelope::decode(&payload).unwrap()).unwrap();
        assert_eq!(waiting.desktop_info().name, "build-box");
        client.pair_message(pid, desktop, confirm).await.unwrap();
        let mut dialog = agent.lines_until("Code: ");
        let sas = waiting.sas().to_string();
        let code_line = dialog.last().unwrap();
        assert_eq!(code_line.trim(), format!("Code: {sas}"), "both screens show the same code");
        // The rest of what the desktop shows before it asks (or says --yes).
        dialog.extend(agent.lines_until("Scope: "));
        let relay_addr = link.origin.trim_start_matches("http://").to_owned();
        Claimed { key, client, events, waiting, desktop, relay_addr, entropy, sas, dialog }
    }

    /// Wait for the desktop's answer: paired (then authorise the desktop,
    /// as a phone does), or the refusal.
    pub async fn result(mut self) -> Result<Phone, PairingError> {
        let Event::PairMessage { payload, .. } =
            next(&mut self.events, "result", |e| matches!(e, Event::PairMessage { .. })).await
        else {
            unreachable!()
        };
        let paired = self.waiting.on_result(&Envelope::decode(&payload).unwrap())?;
        self.client.authorize(self.desktop).await.unwrap();
        Ok(Phone {
            key: self.key,
            client: self.client,
            events: self.events,
            link: Link::from_paired(paired, OutboxLimits::default()),
            desktop: self.desktop,
            relay_addr: self.relay_addr,
            entropy: self.entropy,
        })
    }

    /// The relay connection, and whether a pairing answer arrives within `wait`.
    pub async fn answered_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Event::PairMessage { .. })) => return true,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
    }

    /// Stop this phone's relay connection.
    pub async fn close(self) {
        self.client.close().await;
    }
}

impl Phone {
    /// A new relay connection with the same key (after `client.close()`).
    pub async fn reconnect(&mut self) {
        let url = format!("ws://{}/v1/connect", self.relay_addr);
        let (client, mut events) =
            Client::start(ClientConfig::new(url, self.key.clone(), Role::Phone));
        next(&mut events, "connected", |e| matches!(e, Event::Connected { .. })).await;
        self.client = client;
        self.events = events;
    }

    /// Seal and send an application message.
    pub async fn send(&mut self, m: &Message) {
        let (_, record) = self.link.send(m.encode().unwrap()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.client.send(self.desktop, record))
            .await
            .expect("the relay answers the send")
            .unwrap();
    }

    /// The next application message from the desktop (acks everything).
    pub async fn message(&mut self) -> Message {
        self.message_within(Duration::from_secs(20)).await
    }

    /// [`Phone::message`], waiting up to `wait` for it (a real agent that
    /// starts slowly on a busy machine).
    pub async fn message_within(&mut self, wait: Duration) -> Message {
        loop {
            let deliver = |e: &Event| matches!(e, Event::Deliver { .. });
            let Event::Deliver { delivery_id, payload, .. } =
                next_within(&mut self.events, "a message", wait, deliver).await
            else {
                unreachable!()
            };
            self.client.ack(delivery_id);
            let mut found = None;
            let events = match self.link.receive(&self.key, &payload, &mut self.entropy) {
                Ok(events) => events,
                // A record seen before (the relay or the desktop sent it again
                // after a restart): drop it, and tell the desktop again what we
                // have so its outbox drains.
                Err(tandem_proto::link::LinkError::Record(
                    tandem_proto::record::RecordError::Replay(_),
                )) => {
                    if let Ok(ack) = self.link.ack() {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            self.client.send(self.desktop, ack),
                        )
                        .await;
                    }
                    continue;
                }
                Err(e) => panic!("a record from the desktop did not open: {e}"),
            };
            for ev in events {
                if let LinkEvent::Message { message, .. } = ev {
                    found = Some(message);
                }
            }
            if let Some(m) = found {
                // Acknowledge end to end so the desktop's outbox drains.
                let ack = self.link.ack().unwrap();
                tokio::time::timeout(Duration::from_secs(10), self.client.send(self.desktop, ack))
                    .await
                    .expect("the relay answers the ack")
                    .unwrap();
                match Message::decode(&m).unwrap() {
                    Decoded::Known(m) => return m,
                    Decoded::Unknown { kind, .. } => panic!("unknown message kind {kind}"),
                }
            }
        }
    }
}

// ---- task helpers (lead) ----

/// The Python JSON-lines fixture executor (`tests/fixtures/agent.py`).
pub fn fixture_agent() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agent.py")
}

/// A config file with the fixture as the default executor, plus `extra` TOML.
pub fn fixture_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[executor]]\nname = \"fixture\"\ntype = \"jsonl\"\nprogram = \"{}\"\n\n{extra}\n",
            fixture_agent().display()
        ),
    )
    .unwrap();
    config
}

/// Run `tandem` and return (exit code, stdout).
pub fn tandem_status(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

impl Agent {
    /// SIGKILL the agent (and with it the in-process relay), like a crash.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Phone {
    /// Submit `text` as task `task_id` to the default executor.
    pub async fn submit(&mut self, task_id: &str, text: &str) {
        self.send(&Message::TaskSubmit {
            task_id: task_id.into(),
            text: text.into(),
            workspace: None,
            executor: None,
            resume: None,
        })
        .await;
    }
}

/// What a phone saw of its tasks: per task, the events in arrival order.
#[derive(Default, Debug)]
pub struct Seen {
    pub tasks: std::collections::BTreeMap<String, Vec<(u64, tandem_proto::message::TaskEvent)>>,
    pub other: Vec<Message>,
}

impl Seen {
    /// Record one message; returns true if it finished a task.
    pub fn add(&mut self, m: Message) -> bool {
        match m {
            Message::TaskEvent { task_id, offset, event, .. } => {
                let done = matches!(event, tandem_proto::message::TaskEvent::Finished { .. });
                self.tasks.entry(task_id).or_default().push((offset, event));
                done
            }
            other => {
                self.other.push(other);
                false
            }
        }
    }

    /// Each task's offsets run 0, 1, 2, … exactly once, in order.
    pub fn assert_contiguous(&self) {
        for (id, evs) in &self.tasks {
            let offsets: Vec<u64> = evs.iter().map(|(o, _)| *o).collect();
            let want: Vec<u64> = (0..offsets.len() as u64).collect();
            assert_eq!(offsets, want, "task {id}: every event exactly once, in order");
        }
    }

    /// The progress texts of a task.
    pub fn progress(&self, task: &str) -> Vec<String> {
        self.tasks
            .get(task)
            .map(|evs| {
                evs.iter()
                    .filter_map(|(_, e)| match e {
                        tandem_proto::message::TaskEvent::Progress { text } => Some(text.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How a task finished, if it did.
    pub fn finished(&self, task: &str) -> Option<(tandem_proto::message::FinishStatus, String)> {
        self.tasks.get(task)?.iter().find_map(|(_, e)| match e {
            tandem_proto::message::TaskEvent::Finished { status, summary, .. } => {
                Some((*status, summary.clone()))
            }
            _ => None,
        })
    }
}

// ---- reconnect helpers ----

impl Agent {
    /// Any command as the agent process (for example `tandem pair` followed
    /// by `tandem run`): its stdout is read line by line for
    /// [`Agent::line_starting`]; set arguments, environment and stderr on
    /// `cmd`.
    pub fn spawn(mut cmd: Command) -> Agent {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent { child, lines, stdin }
    }
}

// ---- session renewal helpers ----

/// `tandem pair --relay RELAY_URL --link-base LINK_BASE --yes` in `dir`
/// with `config`, as a process, and the pairing link it printed.
pub fn pair_process(
    dir: &Path,
    config: &Path,
    relay_url: &str,
    link_base: &str,
) -> (Agent, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("--data-dir")
        .arg(dir)
        .arg("--config")
        .arg(config)
        .args(["--name", "build-box", "pair", "--relay", relay_url, "--link-base", link_base])
        .args(["--yes", "--print-url", "--no-terminal-qr"])
        .stderr(std::fs::File::create(dir.with_extension("pair.log")).unwrap());
    let agent = Agent::spawn(cmd);
    let link = agent
        .line_starting("pairing link: ")
        .trim()
        .trim_start_matches("pairing link: ")
        .to_owned();
    (agent, link)
}

/// `tandem run` in `dir` with `config` and `env`, its log appended to
/// `dir/agent.log`; returns once it is connected.
pub fn run_process(dir: &Path, config: &Path, env: &[(&str, String)]) -> Agent {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("--data-dir")
        .arg(dir)
        .arg("--config")
        .arg(config)
        .args(["--name", "build-box", "run"])
        .env("TANDEM_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let agent = Agent::spawn(cmd);
    agent.line_starting("Connected.");
    agent
}

impl Agent {
    /// Wait up to `limit` for the process to exit on its own.
    pub fn exit_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The agent's file for the paired device `device`.
pub fn peer_file(agent_dir: &Path, device: &str) -> std::path::PathBuf {
    agent_dir.join("peers").join(format!("{device}.json"))
}

/// The phone engine's file for the paired desktop `desktop`.
pub fn desktop_file(phone_dir: &Path, desktop: &str) -> std::path::PathBuf {
    phone_dir.join("desktops").join(format!("{desktop}.json"))
}
