//! The local Web Push service (`relay/tests/push_service/push_service.py`,
//! Python: the standard library's HTTP server, `cryptography` and
//! `http_ece`, none of it Tandem's code) as a child process: a stand-in for
//! a browser vendor's push service, the one stand-in of the push tests. It
//! checks every request per RFC 8030 and RFC 8292, decrypts its body per
//! RFC 8291 with the subscription's private key, and lists what it saw at
//! `GET /records` (`plain_hex`: the decrypted body; `problems`: what was
//! wrong with the request).
//!
//! Shared by the relay's tests (`tests/push.rs`) and the agent's
//! (`desktop-agent/tests/push.rs`, through `#[path]`). Needs a Python with
//! `http_ece`: `TANDEM_PUSH_PYTHON`, else the venv `<target dir>/abuse-venv`
//! (made or completed here when missing, as scripts/test.sh does).

#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The directory cargo builds into: a test binary is `<dir>/debug/deps/…`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// A Python with `http_ece`: `TANDEM_PUSH_PYTHON`, or the venv beside the build.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TANDEM_PUSH_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = target_dir().join("abuse-venv");
    let py = venv.join("bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import http_ece, cryptography"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&py) {
        if !py.exists() {
            let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
            assert!(made.is_ok_and(|s| s.success()), "python3 -m venv {}", venv.display());
        }
        let pip =
            Command::new(venv.join("bin/pip")).args(["install", "-q", "http_ece>=1.2,<2"]).status();
        assert!(pip.is_ok_and(|s| s.success()), "pip install http_ece");
    }
    py
}

/// The local push service (a child process; stopped on drop).
pub struct PushService {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The subscription's public key (uncompressed P-256).
    pub p256dh: [u8; 65],
    /// The subscription's authentication secret.
    pub auth: [u8; 16],
}

impl PushService {
    /// Start it and read its port and subscription keys.
    pub fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../relay/tests/push_service/push_service.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the push service");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let unhex =
            |s: &Value| data_encoding::HEXLOWER.decode(s.as_str().unwrap().as_bytes()).unwrap();
        PushService {
            child,
            port: u16::try_from(v["port"].as_u64().unwrap()).unwrap(),
            p256dh: unhex(&v["p256dh"]).try_into().unwrap(),
            auth: unhex(&v["auth"]).try_into().unwrap(),
        }
    }

    /// `http://127.0.0.1:<port>`, the origin a relay must allow.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The endpoint `/push/<path>` (`gone/…` answers 410, `fail/…` 500).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}/push/{path}", self.origin())
    }

    /// Every request it received so far.
    pub async fn records(&self) -> Vec<Value> {
        let port = self.port;
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /records HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
            serde_json::from_str::<Value>(body).unwrap().as_array().unwrap().clone()
        })
        .await
        .unwrap()
    }

    /// Wait until at least `n` requests came (20 s), and return them all.
    pub async fn wait_records(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.records().await;
            if r.len() >= n {
                return r;
            }
            assert!(Instant::now() < deadline, "{} push requests, wanted {n}: {r:?}", r.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PushService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
