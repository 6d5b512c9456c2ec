//! The relay in a process of its own, so that a test can `kill -9` and
//! restart it (on the same port and data) or stop it, like the
//! `tandem-relay` binary, whose path Cargo gives only to the relay's own
//! tests. The process is the test binary itself, run again with its
//! `relay_process` "test" (each test file that uses this declares it with
//! [`relay_process_test!`](crate::relay_process_test)) and [`RELAY_LISTEN`]
//! and [`RELAY_DATA`] set. Its pings are fast (every second, two seconds for
//! the pong), so that it drops a silent device within seconds.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub const RELAY_LISTEN: &str = "TANDEM_TEST_RELAY_LISTEN";
pub const RELAY_DATA: &str = "TANDEM_TEST_RELAY_DATA";
/// When set: a node of a cluster on the Redis at this URL (`--store redis
/// --redis-url`), trusting a PROXY header from 127.0.0.1 (haproxy's).
pub const RELAY_REDIS_URL: &str = "TANDEM_TEST_RELAY_REDIS_URL";
/// A Web Push origin the relay allows besides the real push services' (a
/// test's local push service, `http://127.0.0.1:<port>`).
pub const RELAY_PUSH_ORIGIN: &str = "TANDEM_TEST_RELAY_PUSH_ORIGIN";
/// With [`RELAY_REDIS_URL`]: the node's id (`--node-id`).
pub const RELAY_NODE_ID: &str = "TANDEM_TEST_RELAY_NODE_ID";
const RELAY_READY: &str = "test relay listening on ";

/// Declare the `relay_process` entry point in a test file.
#[macro_export]
macro_rules! relay_process_test {
    () => {
        /// Not a test: the relay process the tests start (this binary, run
        /// again with the relay variables set). Without them it does nothing.
        #[test]
        #[ignore = "not a test: the relay process the tests start"]
        fn relay_process() {
            common::relay::serve_if_asked();
        }
    };
}

/// In the relay's `DIR`: the relay's hold window in milliseconds
/// (`hold_window`, PROTOCOL §6.5), when a test wants another than 200 ms.
pub const HOLD_WINDOW_FILE: &str = "relay-hold-window-ms";

/// The body of `relay_process`: serve as the relay when asked to.
pub fn serve_if_asked() {
    let (Ok(listen), Ok(data)) = (std::env::var(RELAY_LISTEN), std::env::var(RELAY_DATA)) else {
        return;
    };
    // `FAILPOINTS` as the relay binary reads it, and more armed on the way
    // by `fail NAME=ACTIONS` lines ([`Relay::arm`]).
    let _armed = tandem_relay::failpoints::setup();
    // Go when the test that started this process goes (it holds our stdin).
    std::thread::spawn(|| {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if let Some((name, actions)) =
                line.strip_prefix("fail ").and_then(|l| l.split_once('='))
            {
                fail::cfg(name, actions).unwrap();
                eprintln!("test relay: armed {name}={actions}");
            }
        }
        std::process::exit(0);
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,tandem_relay=debug"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await.unwrap();
        let mut config = tandem_relay::Config::new(PathBuf::from(&data));
        // Listening on another address than loopback (the fault suite's
        // relay in a network namespace): devices reach it by that address.
        if let Ok(addr) = listen.parse::<SocketAddr>()
            && !addr.ip().is_loopback()
        {
            config.names.push(addr.ip().to_string());
        }
        // A test that wants another hold window writes it beside the data
        // ([`HOLD_WINDOW_FILE`]); a restart keeps it.
        if let Some(ms) = Path::new(&data)
            .parent()
            .and_then(|d| std::fs::read_to_string(d.join(HOLD_WINDOW_FILE)).ok())
        {
            config.hold_window = Duration::from_millis(ms.trim().parse().unwrap());
        }
        if let Ok(origin) = std::env::var(RELAY_PUSH_ORIGIN) {
            config.push.webpush_origins.push(origin);
            config.push.vapid_subject = "mailto:push-test@example.com".into();
        }
        if let Ok(url) = std::env::var(RELAY_REDIS_URL) {
            config.store = tandem_relay::StoreBackend::redis(url);
            config.node_id = std::env::var(RELAY_NODE_ID).ok();
            config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            config.trusted_proxy_header = tandem_relay::ProxyHeader::ProxyProtocol;
            config.restart_hint = Duration::from_millis(200);
        }
        config.ping_interval = Duration::from_secs(1);
        config.ping_jitter = Duration::from_millis(200);
        config.pong_timeout = Duration::from_secs(2);
        config.on_ready = Some(Arc::new(|addr, _| println!("{RELAY_READY}{addr}")));
        let never = tokio_util::sync::CancellationToken::new();
        tandem_relay::run(listener, config, never).await.unwrap();
    });
}

/// The relay in a process of its own, with its data in `DIR/relay-data`.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
    /// The network namespace it runs in (`ip netns exec`), if any.
    netns: Option<String>,
    /// Variables added to its environment at each restart
    /// ([`Relay::set_env`]).
    env: Vec<(String, String)>,
}

impl Relay {
    pub fn start(dir: &Path) -> Relay {
        Self::start_on(dir, "127.0.0.1:0").expect("the relay starts")
    }

    /// As [`Relay::start`], with `env` added to its environment (kept
    /// across restarts): a node of a cluster ([`RELAY_REDIS_URL`]), a seam.
    #[allow(dead_code)]
    pub fn start_with_env(dir: &Path, env: Vec<(String, String)>) -> Relay {
        Self::spawn(dir, "127.0.0.1:0", None, None, &env).expect("the relay starts")
    }

    /// As [`Relay::start`], with the failpoints of `FAILPOINTS` armed
    /// (`relay.pair_message=2*off->return`: it aborts at that step). A
    /// [`Relay::restart`] starts it without them.
    #[allow(dead_code)]
    pub fn start_failing(dir: &Path, failpoints: &str) -> Relay {
        Self::start_env(dir, "127.0.0.1:0", Some(failpoints)).expect("the relay starts")
    }

    /// Whether the process ended (a crash point aborted it).
    #[allow(dead_code)]
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// `None` when it could not listen on `listen`.
    pub fn start_on(dir: &Path, listen: &str) -> Option<Relay> {
        Self::start_env(dir, listen, None)
    }

    /// As [`Relay::start`], inside the network namespace `netns` (`ip netns
    /// exec`, which execs: the pid is the relay's), listening on `listen`
    /// there; restarts stay in it.
    #[allow(dead_code)]
    pub fn start_in(dir: &Path, listen: &str, netns: &str) -> Relay {
        Self::spawn(dir, listen, None, Some(netns), &[]).expect("the relay starts")
    }

    fn start_env(dir: &Path, listen: &str, failpoints: Option<&str>) -> Option<Relay> {
        Self::spawn(dir, listen, failpoints, None, &[])
    }

    fn spawn(
        dir: &Path,
        listen: &str,
        failpoints: Option<&str>,
        netns: Option<&str>,
        env: &[(String, String)],
    ) -> Option<Relay> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))
            .unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        match failpoints {
            Some(f) => cmd.env("FAILPOINTS", f),
            None => cmd.env_remove("FAILPOINTS"),
        };
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .args(["relay_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(RELAY_LISTEN, listen)
            .env(RELAY_DATA, dir.join("relay-data"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        // libtest prints `test relay_process ... ` first, on the same line.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some((_, addr)) = line.split_once(RELAY_READY) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Some(Relay {
                child,
                addr: addr.parse().unwrap(),
                dir: dir.to_owned(),
                netns: netns.map(str::to_owned),
                env: env.to_vec(),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    /// What the pairing link points the phone at: the relay itself.
    pub fn link_base(&self) -> String {
        format!("http://{}/p", self.addr)
    }

    /// The relay's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same port and data (after [`Relay::kill9`]).
    pub fn restart(&mut self) {
        let listen = self.addr.to_string();
        for _ in 0..100 {
            if let Some(again) =
                Self::spawn(&self.dir, &listen, None, self.netns.as_deref(), &self.env)
            {
                *self = again;
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the relay could not listen on {listen} again:\n{}", self.log());
    }

    /// Variables to add to its environment from its next restart on (a
    /// seam preloaded, say).
    #[allow(dead_code)]
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    /// As [`Relay::restart`], with the failpoints of `FAILPOINTS` armed.
    #[allow(dead_code)]
    pub fn restart_failing(&mut self, failpoints: &str) {
        let listen = self.addr.to_string();
        for _ in 0..100 {
            if let Some(again) = Self::start_env(&self.dir, &listen, Some(failpoints)) {
                *self = again;
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the relay could not listen on {listen} again:\n{}", self.log());
    }

    /// Arm the relay's failpoint `name` with `actions` (the `fail` crate's
    /// syntax) while it runs.
    pub fn arm(&mut self, name: &str, actions: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "fail {name}={actions}").unwrap();
        stdin.flush().unwrap();
        let wanted = format!("test relay: armed {name}={actions}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.log().contains(&wanted) {
            assert!(std::time::Instant::now() < deadline, "the relay did not arm {name}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}
