//! `tandem service install|uninstall`: run `tandem run` in the background
//! from the user's service manager, started at login and restarted when it
//! fails.
//!
//! * **Linux:** a systemd *user* unit, `$XDG_CONFIG_HOME/systemd/user/tandem.service`
//!   (`~/.config/…` by default), then `systemctl --user daemon-reload` and
//!   `systemctl --user enable --now tandem.service`.
//! * **macOS:** a launchd agent, `~/Library/LaunchAgents/dev.tandem.agent.plist`,
//!   then `launchctl bootstrap gui/<uid> <plist>`; its output goes to
//!   `<data_dir>/logs/`.
//!
//! Both files are rendered by functions that exist on every platform
//! ([`render_systemd_unit`], [`render_launchd_plist`]), so that their
//! quoting is tested everywhere; only installing is per platform.
//!
//! **When the service manager is missing or fails** (a container, a machine
//! without a user systemd instance, a login without a session), the file is
//! still written and the outcome lists the exact commands left for the user
//! to run ([`Outcome::manual`]) and a warning; the command still succeeds,
//! because the file, the part only tandem can do, is in place. A script that
//! needs the service running should check `systemctl --user is-active
//! tandem.service` itself.
//!
//! Uninstalling stops and disables the service, removes the file and is
//! idempotent: with nothing installed it says so and succeeds.
//!
//! The unit's hardening keeps what the executors need: they run the user's
//! own tools in the user's home, so there is no `ProtectHome` or
//! `ProtectSystem`, and no `UMask` (files the tools write keep the user's
//! usual modes). `NoNewPrivileges=yes` does mean that nothing a task starts
//! can gain privileges (no `sudo`), which is deliberate for work that
//! arrives from a phone. The agent stops cleanly on `SIGINT`, so the unit
//! sets `KillSignal=SIGINT`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// The systemd unit's file name.
pub const SYSTEMD_UNIT_NAME: &str = "tandem.service";
/// The launchd agent's label (also its file name, with `.plist`).
pub const LAUNCHD_LABEL: &str = "dev.tandem.agent";

/// Why installing or uninstalling the service failed.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// A file operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A path cannot be written into the unit or plist.
    #[error("cannot use the path {} in a service file: {reason}", path.display())]
    BadPath {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The home or configuration directory is unknown.
    #[error("no home directory is known (set HOME)")]
    NoHome,
    /// This platform has no supported service manager.
    #[error(
        "`tandem service` supports systemd (Linux) and launchd (macOS); on this system, run \
         `tandem run` from its own service manager"
    )]
    Unsupported,
    /// Which executable to run is unknown.
    #[error("could not find the path of the running tandem executable: {0}")]
    CurrentExe(#[source] io::Error),
}

/// What the service runs: `<exe> --data-dir <data_dir> [--config <config>] run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The `tandem` executable (absolute).
    pub exe: PathBuf,
    /// The agent's data directory (absolute).
    pub data_dir: PathBuf,
    /// The configuration file, when one was given (absolute).
    pub config: Option<PathBuf>,
}

impl ServiceSpec {
    /// The running executable, with `data_dir` and `config` made absolute.
    ///
    /// # Errors
    /// [`ServiceError::CurrentExe`] when the executable's path is unknown,
    /// [`ServiceError::Io`] when a relative path cannot be made absolute.
    pub fn for_current_exe(data_dir: &Path, config: Option<&Path>) -> Result<Self, ServiceError> {
        let exe = std::env::current_exe().map_err(ServiceError::CurrentExe)?;
        let absolute = |p: &Path| {
            std::path::absolute(p).map_err(|source| ServiceError::Io {
                action: "resolve",
                path: p.to_path_buf(),
                source,
            })
        };
        Ok(Self { exe, data_dir: absolute(data_dir)?, config: config.map(absolute).transpose()? })
    }

    /// The command line, each argument a path or a word.
    fn args(&self) -> Vec<&Path> {
        let mut args = vec![self.exe.as_path(), Path::new("--data-dir"), self.data_dir.as_path()];
        if let Some(c) = &self.config {
            args.push(Path::new("--config"));
            args.push(c);
        }
        args.push(Path::new("run"));
        args
    }
}

/// What installing or uninstalling did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The unit or plist written or removed (`None`: nothing was there to
    /// remove).
    pub path: Option<PathBuf>,
    /// The service-manager commands that ran and succeeded.
    pub ran: Vec<String>,
    /// Commands the user still has to run (the service manager is missing
    /// or failed, or `--no-start`).
    pub manual: Vec<String>,
    /// What went wrong with the service manager, if anything.
    pub warnings: Vec<String>,
}

/// The systemd user unit for `spec`.
///
/// # Errors
/// [`ServiceError::BadPath`] for a path that is not UTF-8 or holds a
/// control character (a newline would end the line).
pub fn render_systemd_unit(spec: &ServiceSpec) -> Result<String, ServiceError> {
    let mut exec = Vec::new();
    for arg in spec.args() {
        exec.push(systemd_quote(arg)?);
    }
    Ok(format!(
        "# Written by `tandem service install`; `tandem service uninstall` removes it.\n\
         # Installing again rewrites it.\n\
         [Unit]\n\
         Description=Tandem desktop agent: tasks from your paired phone\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={}\n\
         Restart=on-failure\n\
         RestartSec=10\n\
         # The agent shuts down cleanly on SIGINT (as on Ctrl-C).\n\
         KillSignal=SIGINT\n\
         TimeoutStopSec=30\n\
         # Hardening that leaves the user's tools working (see `tandem service --help`).\n\
         NoNewPrivileges=yes\n\
         LockPersonality=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exec.join(" ")
    ))
}

/// One `ExecStart=` argument: bare when it is made of plain characters,
/// else double-quoted with `\` and `"` escaped; `%` (specifiers) is always
/// doubled, as is `$` (variable expansion).
fn systemd_quote(arg: &Path) -> Result<String, ServiceError> {
    let s = checked_str(arg)?;
    let plain =
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,%$".contains(c));
    let mut out = String::with_capacity(s.len() + 2);
    if !plain {
        out.push('"');
    }
    for c in s.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    if !plain {
        out.push('"');
    }
    Ok(out)
}

/// The launchd agent for `spec`; its output goes to `logs_dir`.
///
/// # Errors
/// [`ServiceError::BadPath`] for a path that is not UTF-8 or holds a
/// control character (not allowed in XML).
pub fn render_launchd_plist(spec: &ServiceSpec, logs_dir: &Path) -> Result<String, ServiceError> {
    let mut args = String::new();
    for arg in spec.args() {
        args.push_str(&format!("        <string>{}</string>\n", xml_escape(arg)?));
    }
    let out = xml_escape(&logs_dir.join("agent.log"))?;
    let err = xml_escape(&logs_dir.join("agent.err.log"))?;
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
         \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <!-- Written by `tandem service install`; `tandem service uninstall` removes it. -->\n\
         <plist version=\"1.0\">\n\
         <dict>\n\
         \x20   <key>Label</key>\n\
         \x20   <string>{LAUNCHD_LABEL}</string>\n\
         \x20   <key>ProgramArguments</key>\n\
         \x20   <array>\n\
         {args}\
         \x20   </array>\n\
         \x20   <key>RunAtLoad</key>\n\
         \x20   <true/>\n\
         \x20   <!-- Restarted when it fails, not after a clean stop. -->\n\
         \x20   <key>KeepAlive</key>\n\
         \x20   <dict>\n\
         \x20       <key>SuccessfulExit</key>\n\
         \x20       <false/>\n\
         \x20   </dict>\n\
         \x20   <key>ThrottleInterval</key>\n\
         \x20   <integer>10</integer>\n\
         \x20   <key>ProcessType</key>\n\
         \x20   <string>Background</string>\n\
         \x20   <key>StandardOutPath</key>\n\
         \x20   <string>{out}</string>\n\
         \x20   <key>StandardErrorPath</key>\n\
         \x20   <string>{err}</string>\n\
         </dict>\n\
         </plist>\n"
    ))
}

fn xml_escape(path: &Path) -> Result<String, ServiceError> {
    let s = checked_str(path)?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn checked_str(path: &Path) -> Result<&str, ServiceError> {
    let bad = |reason| ServiceError::BadPath { path: path.to_path_buf(), reason };
    let s = path.to_str().ok_or_else(|| bad("it is not UTF-8"))?;
    if s.chars().any(char::is_control) {
        return Err(bad("it contains a control character"));
    }
    Ok(s)
}

/// Where the systemd user unit goes: `$XDG_CONFIG_HOME/systemd/user/`
/// (`~/.config/systemd/user/`).
///
/// # Errors
/// [`ServiceError::NoHome`].
pub fn systemd_unit_path() -> Result<PathBuf, ServiceError> {
    Ok(dirs::config_dir()
        .ok_or(ServiceError::NoHome)?
        .join("systemd")
        .join("user")
        .join(SYSTEMD_UNIT_NAME))
}

/// Where the launchd agent goes: `~/Library/LaunchAgents/`.
///
/// # Errors
/// [`ServiceError::NoHome`].
pub fn launchd_plist_path() -> Result<PathBuf, ServiceError> {
    Ok(dirs::home_dir()
        .ok_or(ServiceError::NoHome)?
        .join("Library")
        .join("LaunchAgents")
        .join(format!("{LAUNCHD_LABEL}.plist")))
}

/// Write the service file and, if `start`, enable and start it (see the
/// module docs for what happens when the service manager is missing).
///
/// # Errors
/// [`ServiceError`] when the file cannot be rendered or written, or on an
/// unsupported platform; never because the service manager failed.
pub fn install(spec: &ServiceSpec, start: bool) -> Result<Outcome, ServiceError> {
    #[cfg(target_os = "macos")]
    return launchd::install(spec, start);
    #[cfg(all(unix, not(target_os = "macos")))]
    return systemd::install(spec, start);
    #[cfg(not(unix))]
    {
        let _ = (spec, start);
        Err(ServiceError::Unsupported)
    }
}

/// Stop, disable and remove the service; with nothing installed, succeed
/// and say so ([`Outcome::path`] is `None`).
///
/// # Errors
/// [`ServiceError`] when the file cannot be removed, or on an unsupported
/// platform; never because the service manager failed.
pub fn uninstall() -> Result<Outcome, ServiceError> {
    #[cfg(target_os = "macos")]
    return launchd::uninstall();
    #[cfg(all(unix, not(target_os = "macos")))]
    return systemd::uninstall();
    #[cfg(not(unix))]
    Err(ServiceError::Unsupported)
}

/// Run a service-manager command; `Err` says why it did not succeed.
#[cfg_attr(not(unix), allow(dead_code))]
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let shown = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    tracing::debug!(command = %shown, "running");
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let detail = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            Err(format!(
                "`{shown}` failed ({}){}",
                out.status,
                if detail.is_empty() { String::new() } else { format!(": {}", detail.trim()) }
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(format!("`{program}` is not installed"))
        }
        Err(e) => Err(format!("could not run `{shown}`: {e}")),
    }
}

/// Run each command in order; after the first failure, the rest are left
/// for the user.
#[cfg_attr(not(unix), allow(dead_code))]
fn run_all(program: &str, commands: &[&[&str]], outcome: &mut Outcome) {
    let mut failed = false;
    for args in commands {
        let shown =
            std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        if failed {
            outcome.manual.push(shown);
            continue;
        }
        match run(program, args) {
            Ok(()) => outcome.ran.push(shown),
            Err(warning) => {
                outcome.warnings.push(warning);
                outcome.manual.push(shown);
                failed = true;
            }
        }
    }
}

#[cfg_attr(not(unix), allow(dead_code))]
fn write_file(path: &Path, contents: &str) -> Result<(), ServiceError> {
    let io_err = |action, source| ServiceError::Io { action, path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_err("create the directory of", e))?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).map_err(|e| io_err("write", e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("write", e)
    })
}

/// Remove `path`; `false` when it was not there.
#[cfg_attr(not(unix), allow(dead_code))]
fn remove_file(path: &Path) -> Result<bool, ServiceError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ServiceError::Io { action: "remove", path: path.to_path_buf(), source }),
    }
}

#[cfg(all(unix, not(target_os = "macos")))]
mod systemd {
    use super::*;

    const DAEMON_RELOAD: &[&str] = &["--user", "daemon-reload"];
    const ENABLE_NOW: &[&str] = &["--user", "enable", "--now", SYSTEMD_UNIT_NAME];
    const TRY_RESTART: &[&str] = &["--user", "try-restart", SYSTEMD_UNIT_NAME];
    const DISABLE_NOW: &[&str] = &["--user", "disable", "--now", SYSTEMD_UNIT_NAME];

    pub(super) fn install(spec: &ServiceSpec, start: bool) -> Result<Outcome, ServiceError> {
        let path = systemd_unit_path()?;
        let unit = render_systemd_unit(spec)?;
        let previous = fs::read_to_string(&path).ok();
        write_file(&path, &unit)?;
        let mut outcome = Outcome { path: Some(path), ..Outcome::default() };
        let mut commands = vec![DAEMON_RELOAD, ENABLE_NOW];
        // enable --now leaves a running service as it was: restart it so
        // that a changed unit takes effect.
        if previous.is_some_and(|p| p != unit) {
            commands.push(TRY_RESTART);
        }
        if start {
            run_all("systemctl", &commands, &mut outcome);
        } else {
            outcome.manual =
                commands.iter().map(|c| format!("systemctl {}", c.join(" "))).collect();
        }
        Ok(outcome)
    }

    pub(super) fn uninstall() -> Result<Outcome, ServiceError> {
        let path = systemd_unit_path()?;
        if !path.exists() {
            return Ok(Outcome::default());
        }
        let mut outcome = Outcome::default();
        let stopped = run("systemctl", DISABLE_NOW);
        // The file goes whatever systemctl said; so does the link `enable`
        // made, in case `disable` could not remove it.
        remove_file(&path)?;
        if let Some(dir) = path.parent() {
            remove_file(&dir.join("default.target.wants").join(SYSTEMD_UNIT_NAME))?;
        }
        outcome.path = Some(path);
        match stopped {
            Ok(()) => {
                outcome.ran.push(format!("systemctl {}", DISABLE_NOW.join(" ")));
                run_all("systemctl", &[DAEMON_RELOAD], &mut outcome);
            }
            Err(warning) => {
                outcome.warnings.push(warning);
                outcome.manual.push(format!("systemctl --user stop {SYSTEMD_UNIT_NAME}"));
                outcome.manual.push(format!("systemctl {}", DAEMON_RELOAD.join(" ")));
            }
        }
        Ok(outcome)
    }
}

#[cfg(target_os = "macos")]
mod launchd {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    pub(super) fn install(spec: &ServiceSpec, start: bool) -> Result<Outcome, ServiceError> {
        let path = launchd_plist_path()?;
        let logs = spec.data_dir.join("logs");
        fs::create_dir_all(&logs).map_err(|source| ServiceError::Io {
            action: "create",
            path: logs.clone(),
            source,
        })?;
        write_file(&path, &render_launchd_plist(spec, &logs)?)?;
        let domain = domain(&path)?;
        let plist = path.display().to_string();
        let mut outcome = Outcome { path: Some(path), ..Outcome::default() };
        if start {
            // Replace a loaded copy (reinstall); not loaded is fine.
            let target = format!("{domain}/{LAUNCHD_LABEL}");
            let _ = run("launchctl", &["bootout", target.as_str()]);
            let bootstrap: &[&str] = &["bootstrap", domain.as_str(), plist.as_str()];
            run_all("launchctl", &[bootstrap], &mut outcome);
        } else {
            outcome.manual.push(format!("launchctl bootstrap {domain} {plist}"));
        }
        Ok(outcome)
    }

    pub(super) fn uninstall() -> Result<Outcome, ServiceError> {
        let path = launchd_plist_path()?;
        if !path.exists() {
            return Ok(Outcome::default());
        }
        let domain = domain(&path)?;
        let target = format!("{domain}/{LAUNCHD_LABEL}");
        let mut outcome = Outcome::default();
        match run("launchctl", &["bootout", target.as_str()]) {
            Ok(()) => outcome.ran.push(format!("launchctl bootout {target}")),
            // Not loaded: nothing to stop.
            Err(warning) => tracing::debug!(%warning, "launchctl bootout"),
        }
        remove_file(&path)?;
        outcome.path = Some(path);
        Ok(outcome)
    }

    /// `gui/<uid>`: the uid that owns the plist, which this process wrote.
    fn domain(plist: &Path) -> Result<String, ServiceError> {
        let meta = fs::metadata(plist).map_err(|source| ServiceError::Io {
            action: "inspect",
            path: plist.to_path_buf(),
            source,
        })?;
        Ok(format!("gui/{}", meta.uid()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(exe: &str, data: &str, config: Option<&str>) -> ServiceSpec {
        ServiceSpec { exe: exe.into(), data_dir: data.into(), config: config.map(PathBuf::from) }
    }

    fn exec_start(unit: &str) -> &str {
        unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap()
    }

    #[test]
    fn service_unit_runs_tandem_run_with_the_data_dir() {
        let unit =
            render_systemd_unit(&spec("/usr/bin/tandem", "/home/u/.local/share/tandem", None))
                .unwrap();
        assert_eq!(exec_start(&unit), "/usr/bin/tandem --data-dir /home/u/.local/share/tandem run");
        for line in [
            "Restart=on-failure",
            "RestartSec=10",
            "NoNewPrivileges=yes",
            "KillSignal=SIGINT",
            "WantedBy=default.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
        }
        assert!(!unit.contains("ProtectHome"), "executors need the home directory");
        let with_config =
            render_systemd_unit(&spec("/usr/bin/tandem", "/d", Some("/c/config.toml"))).unwrap();
        assert_eq!(
            exec_start(&with_config),
            "/usr/bin/tandem --data-dir /d --config /c/config.toml run"
        );
    }

    #[test]
    fn service_unit_quotes_spaces_and_escapes_percent_dollar_quotes_backslashes() {
        let unit = render_systemd_unit(&spec(
            "/Users/Jane Doe/bin/tandem",
            "/home/u/100% \"done\"/a\\b",
            Some("/home/u/$HOME/c.toml"),
        ))
        .unwrap();
        assert_eq!(
            exec_start(&unit),
            r#""/Users/Jane Doe/bin/tandem" --data-dir "/home/u/100%% \"done\"/a\\b" --config /home/u/$$HOME/c.toml run"#
        );
        // Plain paths stay bare, but `%` is doubled even there.
        assert_eq!(systemd_quote(Path::new("/a/50%")).unwrap(), "/a/50%%");
        assert_eq!(systemd_quote(Path::new("/a;b")).unwrap(), "\"/a;b\"");
    }

    #[test]
    fn service_refuses_paths_that_would_break_the_file() {
        let err = render_systemd_unit(&spec("/bin/tandem", "/a\nExecStartPre=/bin/evil", None))
            .unwrap_err();
        assert!(matches!(err, ServiceError::BadPath { .. }), "{err:?}");
        assert!(
            render_launchd_plist(&spec("/bin/tandem", "/a\u{7}", None), Path::new("/l")).is_err()
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let bad = Path::new(std::ffi::OsStr::from_bytes(b"/a/\xff"));
            let s = ServiceSpec { exe: "/t".into(), data_dir: bad.into(), config: None };
            assert!(render_systemd_unit(&s).unwrap_err().to_string().contains("not UTF-8"));
        }
    }

    #[test]
    fn service_plist_has_the_arguments_and_logs_xml_escaped() {
        let plist = render_launchd_plist(
            &spec("/Applications/Tandem & Co/tandem", "/Users/j/<data>", Some("/Users/j/'c'.toml")),
            Path::new("/Users/j/<data>/logs"),
        )
        .unwrap();
        let args = [
            "<string>/Applications/Tandem &amp; Co/tandem</string>",
            "<string>--data-dir</string>",
            "<string>/Users/j/&lt;data&gt;</string>",
            "<string>--config</string>",
            "<string>/Users/j/&apos;c&apos;.toml</string>",
            "<string>run</string>",
        ];
        let lines: Vec<&str> = plist.lines().map(str::trim).collect();
        let start = lines.iter().position(|l| *l == args[0]).unwrap();
        assert_eq!(&lines[start..start + args.len()], &args);
        for needle in [
            "<string>dev.tandem.agent</string>",
            "<key>RunAtLoad</key>",
            "<key>KeepAlive</key>",
            "<string>/Users/j/&lt;data&gt;/logs/agent.log</string>",
            "<string>/Users/j/&lt;data&gt;/logs/agent.err.log</string>",
        ] {
            assert!(plist.contains(needle), "{needle} missing:\n{plist}");
        }
        assert!(!plist.contains("<data>"), "unescaped:\n{plist}");
        assert!(plist.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
    }

    #[test]
    fn service_spec_makes_paths_absolute() {
        let s =
            ServiceSpec::for_current_exe(Path::new("rel/data"), Some(Path::new("c.toml"))).unwrap();
        assert!(s.exe.is_absolute() && s.data_dir.is_absolute());
        assert!(s.data_dir.ends_with("rel/data"));
        assert!(s.config.unwrap().is_absolute());
    }
}
