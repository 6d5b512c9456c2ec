//! One relay, one agent and one phone paired through it, the traffic the
//! harness drives (tasks the phone submits; their events the agent streams
//! back) and the figures of a scenario.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use super::net::Netns;
use super::phone::PhoneProc;
use super::tally::{self, Live, Tally};
use super::{Agent, Relay, WAIT, agent_config, rss_kib};

/// What a scenario reports (printed as one line, `RELIABILITY` prefix, for
/// the long script to collect).
#[derive(Debug, Default)]
pub struct Figures {
    pub scenario: String,
    pub seed: u64,
    pub cycles: u64,
    pub tally: Tally,
    /// Time to resume after each fault cleared: from the moment it cleared
    /// to the first event of a task submitted then, at the phone.
    pub resume: Vec<Duration>,
    /// Resident memory (KiB) of relay, agent and phone at the start and
    /// the end (after restarts: of the new processes).
    pub rss_before: [u64; 3],
    pub rss_after: [u64; 3],
}

impl Figures {
    /// Print the figures (the long script and docs/RELIABILITY.md read
    /// these lines).
    pub fn print(&self) {
        let mut r = self.resume.clone();
        r.sort();
        let ms = |d: Option<&Duration>| d.map_or(0, |d| d.as_millis());
        eprintln!(
            "RELIABILITY scenario={} seed={} cycles={} | {} | resume median {} ms, max {} ms | \
             rss KiB relay {}->{}, agent {}->{}, phone {}->{}",
            self.scenario,
            self.seed,
            self.cycles,
            self.tally,
            ms(r.get(r.len() / 2)),
            ms(r.last()),
            self.rss_before[0],
            self.rss_after[0],
            self.rss_before[1],
            self.rss_after[1],
            self.rss_before[2],
            self.rss_after[2],
        );
    }
}

/// The three processes and the traffic so far.
pub struct World {
    pub dir: PathBuf,
    /// The relay (with several nodes: node `n1`, and the others in
    /// [`World::cluster`]).
    pub relay: Relay,
    /// Redis, the other nodes and haproxy, when the world has several
    /// relay nodes ([`World::new_cluster`]).
    pub cluster: Option<Cluster>,
    pub agent: Agent,
    pub phone: PhoneProc,
    /// The harness's task ids, in order, with whether the phone confirmed
    /// the submit (queued in its outbox).
    pub submitted: Vec<(String, bool)>,
    /// Task ids whose submit the phone refused (`submit-error`).
    pub refused: BTreeSet<String>,
    next: u64,
    pub figures: Figures,
}

/// The agent's environment: renewals every 2 s, so a kill at a random
/// point often cuts one (the phone renews hourly: the agent initiates).
pub const AGENT_ENV: [(&str, &str); 2] =
    [("TANDEM_SESSION_RENEW_SECS", "2"), ("TANDEM_SESSION_RENEWAL_TIMEOUT_SECS", "5")];

/// The phone's renewal period (ms): the agent initiates.
pub const PHONE_RENEW_MS: u64 = 3_600_000;

/// How long [`World::settle`] waits for a submit the phone has neither
/// confirmed nor refused and that has not started.
const UNANSWERED_WAIT: Duration = Duration::from_secs(5);

impl World {
    /// Relay (in `netns` if given), agent and phone in `dir`, paired.
    /// Their data: `dir/relay-data`, `dir/desk`, `dir/phone` (a scenario
    /// may mount a small file system there first).
    pub fn new(dir: &Path, scenario: &str, seed: u64, netns: Option<&Netns>) -> World {
        Self::new_with(dir, scenario, seed, netns, |_, _| {})
    }

    /// As [`World::new`], with `before_pairing` run on the relay and the
    /// phone first (pairings cut by faults).
    pub fn new_with(
        dir: &Path,
        scenario: &str,
        seed: u64,
        netns: Option<&Netns>,
        before_pairing: impl FnOnce(&mut Relay, &mut PhoneProc),
    ) -> World {
        let mut relay = match netns {
            Some(n) => Relay::start_in(dir, &format!("{}:0", n.ns_ip), &n.name),
            None => Relay::start(dir),
        };
        let mut phone = PhoneProc::start(dir, PHONE_RENEW_MS);
        before_pairing(&mut relay, &mut phone);
        let agent = Self::pair(dir, &relay, &mut phone).unwrap_or_else(|e| panic!("{e}"));
        Self::assemble(dir, scenario, seed, relay, None, agent, phone)
    }

    /// As [`World::new`] with `nodes` relay nodes (2 or 3) on a Redis of
    /// the scenario's own behind haproxy ([`Cluster`]); the agent and the
    /// phone pair and connect through haproxy.
    pub fn new_cluster(dir: &Path, scenario: &str, seed: u64, nodes: usize) -> World {
        Self::on_cluster(dir, scenario, seed, Cluster::start(dir, nodes))
    }

    /// As [`World::new_cluster`], the nodes on a Redis primary with a
    /// replica and a Sentinel ([`Cluster::start_sentinel`]).
    pub fn new_sentinel(dir: &Path, scenario: &str, seed: u64, nodes: usize) -> World {
        Self::on_cluster(dir, scenario, seed, Cluster::start_sentinel(dir, nodes))
    }

    fn on_cluster(dir: &Path, scenario: &str, seed: u64, nodes: (Relay, Cluster)) -> World {
        let (relay, cluster) = nodes;
        let mut phone = PhoneProc::start(dir, PHONE_RENEW_MS);
        let (url, base) = (cluster.lb.url(), cluster.lb.link_base());
        let agent = Self::pair_at(dir, &url, &base, &mut phone).unwrap_or_else(|e| panic!("{e}"));
        Self::assemble(dir, scenario, seed, relay, Some(cluster), agent, phone)
    }

    fn assemble(
        dir: &Path,
        scenario: &str,
        seed: u64,
        relay: Relay,
        cluster: Option<Cluster>,
        agent: Agent,
        phone: PhoneProc,
    ) -> World {
        let figures = Figures { scenario: scenario.into(), seed, ..Figures::default() };
        let mut w = World {
            dir: dir.to_owned(),
            relay,
            cluster,
            agent,
            phone,
            submitted: Vec::new(),
            refused: BTreeSet::new(),
            next: 0,
            figures,
        };
        w.figures.rss_before = w.rss();
        w
    }

    /// `tandem pair` and the phone's pairing, then `tandem run`.
    pub fn pair(dir: &Path, relay: &Relay, phone: &mut PhoneProc) -> Result<Agent, String> {
        Self::pair_at(dir, &relay.url(), &relay.link_base(), phone)
    }

    /// As [`World::pair`], through the relay at `url` (haproxy's).
    pub fn pair_at(
        dir: &Path,
        url: &str,
        link_base: &str,
        phone: &mut PhoneProc,
    ) -> Result<Agent, String> {
        let desk = dir.join("desk");
        let config = agent_config(dir);
        let log = dir.join("agent.log");
        let (mut pairing, link) = super::pair_agent_at(&desk, &config, &log, url, link_base);
        phone.send(&format!("pair {link}"));
        let answer = phone.until("pair", WAIT).ok_or("the phone died while pairing")?;
        if !answer.starts_with("ed ") {
            return Err(format!("pairing failed: pair{answer}"));
        }
        let exited = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            pairing.exited()
        });
        if !exited {
            return Err("`tandem pair` did not exit once paired".into());
        }
        Ok(Agent::run(&desk, &config, &log, &AGENT_ENV))
    }

    /// Start the agent again with `env` added (a clock seam, say); it
    /// connects.
    pub fn restart_agent_with(&mut self, env: &[(&str, &str)]) {
        self.agent.proc.kill9();
        let mut all: Vec<(&str, &str)> = AGENT_ENV.to_vec();
        all.extend_from_slice(env);
        let desk = self.dir.join("desk");
        self.agent =
            Agent::run(&desk, &self.dir.join("config.toml"), &self.dir.join("agent.log"), &all);
    }

    /// The phone's events file.
    pub fn events(&self) -> PathBuf {
        self.dir.join("phone-events")
    }

    /// Resident memory of relay, agent, phone (KiB).
    pub fn rss(&self) -> [u64; 3] {
        [rss_kib(self.relay.pid()), rss_kib(self.agent.proc.pid()), rss_kib(self.phone.pid())]
    }

    /// Submit a task (`count N DELAY_MS`: `N` progress events) under the
    /// harness's next id, not waiting for the answer; its id.
    pub fn submit(&mut self, text: &str) -> String {
        self.next += 1;
        let id = format!("t{:04}", self.next);
        tally::note_submit(&self.events(), &id);
        self.phone.send(&format!("submit {id} {text}"));
        self.submitted.push((id.clone(), false));
        id
    }

    /// Read the phone's answers so far (within `wait`): submits it
    /// confirmed.
    pub fn read_answers(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Some(l) = self.phone.next(deadline.saturating_duration_since(Instant::now())) {
            if let Some(rest) = l.strip_prefix("submit-error ") {
                eprintln!("phone: {l}");
                self.refused.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            }
            if let Some(id) = l.strip_prefix("submitted ") {
                let id = id.split(' ').next().unwrap_or_default();
                if let Some(s) = self.submitted.iter_mut().find(|(t, _)| t == id) {
                    s.1 = true;
                }
            }
        }
    }

    /// Wait until the phone reports `task`'s first event; how long that
    /// took. Panics after [`WAIT`].
    pub fn first_event(&self, task: &str) -> Duration {
        let start = Instant::now();
        while !Live::read(&self.events()).has_event(task) {
            assert!(
                start.elapsed() < WAIT,
                "no event of {task} within {WAIT:?}\n--- phone:\n{}\n--- agent:\n{}",
                self.phone.log_tail(),
                super::tail(&self.dir.join("agent.log"), 40)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }

    /// A fault just cleared: submit a probe task and record how long until
    /// its first event reached the phone.
    pub fn resumed(&mut self) -> Duration {
        let cleared = Instant::now();
        let probe = self.submit("count 1 0");
        self.first_event(&probe);
        let took = cleared.elapsed();
        self.figures.resume.push(took);
        took
    }

    /// Wait until every submitted task finished at the phone (or
    /// [`WAIT`] passed since the last progress).
    pub fn settle(&mut self) {
        let start = Instant::now();
        let mut last = (0usize, start);
        loop {
            self.read_answers(Duration::from_millis(100));
            let live = Live::read(&self.events());
            // A submit the phone refused (`submit-error`) never runs; one
            // it confirmed, or that started (its events arrive before the
            // phone's confirmation may be read), is waited for.
            let waited: Vec<&String> = self
                .submitted
                .iter()
                .filter(|(t, confirmed)| {
                    !self.refused.contains(t) && (*confirmed || live.has_event(t))
                })
                .map(|(t, _)| t)
                .collect();
            // Neither confirmed nor refused nor started yet: given a while
            // (a phone killed with it in hand never answers).
            let unanswered = self.submitted.iter().any(|(t, confirmed)| {
                !confirmed && !self.refused.contains(t) && !live.has_event(t)
            });
            let done = waited.iter().filter(|t| live.finished(t)).count();
            if done == waited.len() && (!unanswered || start.elapsed() > UNANSWERED_WAIT) {
                return;
            }
            if done != last.0 {
                last = (done, Instant::now());
            }
            if last.1.elapsed() > WAIT {
                return;
            }
        }
    }

    /// Settle, then count against the desktop's history of each task.
    pub fn tally(&mut self) -> Tally {
        self.settle();
        let mut desktop = BTreeMap::new();
        for (task, _) in self.submitted.clone() {
            let h = self.phone.history(&task).unwrap_or_else(|e| panic!("history of {task}: {e}"));
            if !h.is_empty() {
                desktop.insert(task, h);
            }
        }
        let t = tally::count(&self.submitted, &self.refused, &desktop, &Live::read(&self.events()));
        self.figures.tally = t.clone();
        self.figures.rss_after = self.rss();
        t
    }
}
