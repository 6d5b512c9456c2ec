//! The agent's files are private whatever the umask (issue 13): with
//! umask 022, a fresh data dir and everything in it after pairing, a task
//! and its audit entries are 0700 (directories) and 0600 (files, sockets);
//! the QR code files the user asks for are 0600 and a symbolic link at
//! their path is replaced, not followed. An existing data dir that others
//! can read is fixed at start with a warning naming each path; one holding
//! another user's file is refused, naming it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Agent, Phone, Seen};
use tandem_proto::message::FinishStatus;

/// `tandem ARGS` under umask 022, as a shell started from a login would.
fn umask_022(data: &Path, args: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(r#"umask 022 && exec "$TANDEM" --data-dir "$DATA" {args}"#))
        .env("TANDEM", env!("CARGO_BIN_EXE_tandem"))
        .env("DATA", data)
        .env("TANDEM_KEYSTORE", "file");
    cmd
}

/// Every path under `dir` (not following links) with its permission bits.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = vec![(dir.to_owned(), mode(dir), true)];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((path, meta.permissions().mode() & 0o777, false));
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_umask_022_the_data_dir_and_qr_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = common::fixture_config(tmp.path(), "");
    // The SVG's path is a link to a file the agent must not touch.
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&victim, tmp.path().join("qr.svg")).unwrap();

    let mut cmd = umask_022(
        &data,
        r#"--config "$CONFIG" --name build-box up --listen 127.0.0.1:0 --yes --print-url \
           --no-terminal-qr --qr-png "$OUT/qr.png" --qr-svg "$OUT/qr.svg""#,
    );
    cmd.env("CONFIG", &config).env("OUT", tmp.path()).stderr(Stdio::null());
    let agent = Agent::spawn(cmd);
    let mut phone = Phone::pair(&agent, tmp.path()).await;
    let mut seen = Seen::default();
    phone.submit("t", "count 2 1").await;
    while seen.finished("t").is_none() {
        seen.add(phone.message().await);
    }
    assert_eq!(seen.finished("t").unwrap().0, FinishStatus::Succeeded);

    // The QR files: private, and the link was replaced, not followed.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert_eq!(mode(&victim), 0o644);
    let svg = tmp.path().join("qr.svg");
    assert!(std::fs::symlink_metadata(&svg).unwrap().is_file(), "the link was replaced");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    assert_eq!(mode(&svg), 0o600);
    assert_eq!(mode(&tmp.path().join("qr.png")), 0o600);

    // Everything in the data dir, the running agent's socket and lock and
    // its relay's store included.
    let all = modes(&data);
    let names: Vec<String> =
        all.iter().map(|(p, ..)| p.strip_prefix(&data).unwrap().display().to_string()).collect();
    for expected in
        ["tasks.redb", "audit.log", "agent.json", "agent.sock", "agent.lock", "device.key"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("peers/")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("relay/")), "{names:?}");
    for (path, m, is_dir) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*m, want, "{} is {m:o}", path.display());
    }
    phone.client.close().await;
    drop(agent);
}

#[test]
fn a_readable_data_dir_is_fixed_at_start_and_another_users_file_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A data dir as an older agent left it: 0755, files 0644.
    let out = umask_022(&data, "tasks").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (p, m) in [(data.clone(), 0o755), (data.join("tasks.redb"), 0o644)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    std::fs::write(data.join("audit.log"), "").unwrap();
    std::fs::set_permissions(data.join("audit.log"), std::fs::Permissions::from_mode(0o664))
        .unwrap();

    let out = umask_022(&data, "devices").output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    for (path, was, now) in [
        (data.clone(), "755", "700"),
        (data.join("audit.log"), "664", "600"),
        (data.join("tasks.redb"), "644", "600"),
    ] {
        let line = format!(
            "warning: {} could be accessed by other users (mode {was}); it is {now} now",
            path.display()
        );
        assert!(err.contains(&line), "{line}\nin:\n{err}");
    }
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("tasks.redb")), 0o600);
    assert_eq!(mode(&data.join("audit.log")), 0o600);
    // Fixed once: no warning the next time.
    let out = umask_022(&data, "devices").output().unwrap();
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    // Another user's file in it: refused, naming it (needs root to chown).
    if euid() != 0 {
        eprintln!("not root: the other-owner check is covered by the unit tests only");
        return;
    }
    std::os::unix::fs::chown(data.join("tasks.redb"), Some(65534), None).unwrap();
    let out = umask_022(&data, "devices").output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{} belongs to uid 65534", data.join("tasks.redb").display())),
        "{err}"
    );
    assert_eq!(std::fs::metadata(data.join("tasks.redb")).unwrap().uid(), 65534);
}

/// The effective uid, from the owner of a file this process creates.
fn euid() -> u32 {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid()
}
