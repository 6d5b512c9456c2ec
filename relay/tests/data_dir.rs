//! The relay's data directory (docs/SECURITY.md §7) with the real binary
//! under `umask 022`: a fresh directory and every file in it are private,
//! and a directory an older version left readable is fixed at start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Run the relay with `umask 022` and a self-signed certificate until it
/// is ready, then stop it; returns its log.
fn run_once(data: &Path, log: &Path) -> String {
    let logfile = std::fs::File::create(log).unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "umask 022; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_tandem-relay"))
        .args(["--listen", "127.0.0.1:0", "--tls", "self-signed", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(logfile)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("tandem-relay listening on"), "{line:?}: {}", read(log));
    read(log)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Every directory under `dir` is 0700 and every file 0600.
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_private(&path);
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

#[test]
fn a_fresh_data_dir_and_every_file_in_it_are_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("a/data");
    run_once(&data, &tmp.path().join("relay.log"));
    // The store and the self-signed certificate are there, all private.
    assert!(data.join("relay.redb").is_file());
    assert!(data.join("tls/self-signed-key.pem").is_file());
    assert!(data.join("tls/self-signed-cert.pem").is_file());
    assert_private(&data);
    // Started again, nothing changes and nothing is reported.
    let log = run_once(&data, &tmp.path().join("relay2.log"));
    assert!(!log.contains("permissions fixed"), "{log}");
    assert_private(&data);
}

#[test]
fn a_readable_data_dir_is_made_private_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_once(&data, &tmp.path().join("first.log"));
    // As an older version (or a careless operator) left it: 0755 and 0644.
    for dir in [&data, &data.join("tls")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(data.join("notes.txt"), "x").unwrap();
    for file in ["relay.redb", "notes.txt", "tls/self-signed-key.pem", "tls/self-signed-cert.pem"] {
        std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let log = run_once(&data, &tmp.path().join("second.log"));
    assert_private(&data);
    assert!(log.contains("permissions fixed"), "{log}");
    assert!(log.contains("notes.txt"), "each fix is named: {log}");
}

/// docs/SECURITY.md §7: a data directory in a directory that every user may
/// write without the sticky bit (anyone could swap the data directory, or
/// a link, in under the relay) is refused at start; with the sticky bit
/// (like `/tmp`) it is fine.
#[test]
fn a_data_dir_that_anyone_could_replace_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = shared.join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
        .args(["--listen", "127.0.0.1:0", "--tls", "off", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the relay started: {stderr}");
    assert!(stderr.contains("writable by every user"), "{stderr}");
    assert!(!data.join("relay.redb").exists(), "a store was written");
    // With the sticky bit, the relay starts.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    run_once(&data, &tmp.path().join("relay.log"));
    assert_private(&data);
}
