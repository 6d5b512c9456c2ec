//! `tandem service install|uninstall` on a systemd system, run as a process
//! with `HOME` and `XDG_CONFIG_HOME` in a temporary directory and `PATH`
//! holding only a fake `systemctl` that logs its arguments (or nothing at
//! all, as on a machine without systemd).
#![cfg(all(unix, not(target_os = "macos")))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["home", "config", "bin", "empty-bin", "data dir"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        Self { _tmp: tmp, root }
    }

    /// A `systemctl` that appends its arguments to `systemctl.log` and
    /// exits with `status` (printing `stderr` first).
    fn fake_systemctl(&self, status: i32, stderr: &str) {
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nprintf '%s\\n' '{stderr}' >&2\nexit {status}\n",
            self.log_path().display()
        );
        let path = self.root.join("bin/systemctl");
        fs::write(&path, script).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("systemctl.log")
    }

    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.log_path()).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn unit_path(&self) -> PathBuf {
        self.root.join("config/systemd/user/tandem.service")
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data dir")
    }

    /// `tandem --data-dir <data dir> [extra] service <args>`, with `PATH`
    /// the fake bin directory (or an empty one).
    fn tandem(&self, with_systemctl: bool, extra: &[&str], args: &[&str]) -> Output {
        let bin = if with_systemctl { "bin" } else { "empty-bin" };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
        for (k, _) in std::env::vars() {
            if k.starts_with("TANDEM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", self.root.join("home"))
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("PATH", self.root.join(bin))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(extra)
            .arg("service")
            .args(args);
        cmd.output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    (stdout, stderr)
}

fn exec_start(unit: &str) -> String {
    unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart line").to_owned()
}

#[test]
fn service_install_writes_the_unit_and_enables_it() {
    let env = Env::new();
    env.fake_systemctl(0, "");
    let config = env.root.join("my config.toml");
    let out = env.tandem(true, &["--config", config.to_str().unwrap()], &["install"]);
    let (stdout, _) = assert_ok(&out);

    let unit = fs::read_to_string(env.unit_path()).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_tandem"));
    assert_eq!(
        exec_start(&unit),
        format!(
            "{} --data-dir \"{}\" --config \"{}\" run",
            exe.display(),
            env.data_dir().display(),
            config.display()
        )
    );
    for line in ["Restart=on-failure", "NoNewPrivileges=yes", "WantedBy=default.target"] {
        assert!(unit.lines().any(|l| l == line), "{line}:\n{unit}");
    }
    assert_eq!(env.calls(), ["--user daemon-reload", "--user enable --now tandem.service"]);
    assert!(stdout.contains(&env.unit_path().display().to_string()), "{stdout}");
    assert!(stdout.contains("runs in the background"), "{stdout}");

    // Installing again with a changed unit restarts the running service.
    fs::remove_file(env.log_path()).unwrap();
    assert_ok(&env.tandem(true, &[], &["install"]));
    assert!(!fs::read_to_string(env.unit_path()).unwrap().contains("--config"));
    assert_eq!(
        env.calls(),
        [
            "--user daemon-reload",
            "--user enable --now tandem.service",
            "--user try-restart tandem.service"
        ]
    );
}

#[test]
fn service_install_without_systemctl_writes_the_unit_and_says_what_to_run() {
    let env = Env::new();
    let out = env.tandem(false, &[], &["install"]);
    let (stdout, stderr) = assert_ok(&out);
    let unit = fs::read_to_string(env.unit_path()).unwrap();
    assert!(exec_start(&unit).ends_with(" run"), "{unit}");
    assert!(stderr.contains("warning: `systemctl` is not installed"), "{stderr}");
    assert!(stdout.contains("To finish, run:"), "{stdout}");
    assert!(stdout.contains("  systemctl --user daemon-reload\n"), "{stdout}");
    assert!(stdout.contains("  systemctl --user enable --now tandem.service\n"), "{stdout}");
}

#[test]
fn service_install_when_systemctl_fails_reports_it_and_succeeds() {
    let env = Env::new();
    env.fake_systemctl(1, "Failed to connect to bus: No medium found");
    let (stdout, stderr) = assert_ok(&env.tandem(true, &[], &["install"]));
    assert!(env.unit_path().exists());
    assert!(stderr.contains("Failed to connect to bus: No medium found"), "{stderr}");
    // The first command failed; both are left for the user.
    assert_eq!(env.calls(), ["--user daemon-reload"]);
    assert!(stdout.contains("  systemctl --user daemon-reload\n"), "{stdout}");
    assert!(stdout.contains("  systemctl --user enable --now tandem.service\n"), "{stdout}");
}

#[test]
fn service_install_no_start_only_writes() {
    let env = Env::new();
    env.fake_systemctl(0, "");
    let (stdout, _) = assert_ok(&env.tandem(true, &[], &["install", "--no-start"]));
    assert!(env.unit_path().exists());
    assert!(env.calls().is_empty(), "{:?}", env.calls());
    assert!(stdout.contains("  systemctl --user enable --now tandem.service\n"), "{stdout}");
}

#[test]
fn service_uninstall_disables_and_removes_and_is_idempotent() {
    let env = Env::new();
    env.fake_systemctl(0, "");
    assert_ok(&env.tandem(true, &[], &["install"]));
    // What `enable` would have linked.
    let wants = env.root.join("config/systemd/user/default.target.wants");
    fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(env.unit_path(), wants.join("tandem.service")).unwrap();
    fs::remove_file(env.log_path()).unwrap();

    let (stdout, _) = assert_ok(&env.tandem(true, &[], &["uninstall"]));
    assert!(!env.unit_path().exists());
    assert!(fs::symlink_metadata(wants.join("tandem.service")).is_err());
    assert_eq!(env.calls(), ["--user disable --now tandem.service", "--user daemon-reload"]);
    assert!(stdout.contains("Removed"), "{stdout}");

    fs::remove_file(env.log_path()).unwrap();
    let (stdout, _) = assert_ok(&env.tandem(true, &[], &["uninstall"]));
    assert!(stdout.contains("not installed"), "{stdout}");
    assert!(env.calls().is_empty());

    // Without systemctl: the file still goes, and the user is told what to run.
    assert_ok(&env.tandem(false, &[], &["install"]));
    let (stdout, stderr) = assert_ok(&env.tandem(false, &[], &["uninstall"]));
    assert!(!env.unit_path().exists());
    assert!(stderr.contains("not installed"), "{stderr}");
    assert!(stdout.contains("  systemctl --user stop tandem.service\n"), "{stdout}");
}
