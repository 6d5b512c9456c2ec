//! What a scenario reports: a table on standard output and a JSON document
//! with the machine, the command line, the figures, the baselines measured
//! in the same run and their ratios, and the correctness checks.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Result;
use crate::machine::Machine;

/// One scenario's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// `idle`, `throughput`, `latency`, `reconnect-storm`, `pairing`.
    pub scenario: &'static str,
    /// Whether every correctness check passed.
    pub passed: bool,
    /// The checks that failed, in words.
    pub failures: Vec<String>,
    /// Wall-clock seconds the scenario took.
    pub elapsed_s: f64,
    /// The scenario's figures (see each scenario's module).
    pub results: serde_json::Value,
}

impl ScenarioReport {
    /// A report from figures and failed checks.
    ///
    /// # Errors
    /// When the figures do not serialise (they do).
    pub fn new(
        scenario: &'static str,
        started: std::time::Instant,
        results: &impl Serialize,
        failures: Vec<String>,
    ) -> Result<Self> {
        Ok(Self {
            scenario,
            passed: failures.is_empty(),
            failures,
            elapsed_s: started.elapsed().as_secs_f64(),
            results: serde_json::to_value(results)?,
        })
    }
}

/// The JSON document one command writes.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    /// Always `tandem-bench`.
    pub tool: &'static str,
    /// This binary's version.
    pub version: &'static str,
    /// `--quick`: correctness only, figures not meaningful.
    pub quick: bool,
    /// Where it ran.
    pub machine: &'a Machine,
    /// The command line, program name first.
    pub command_line: Vec<String>,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    /// The 1, 5 and 15 minute load averages when the report was written
    /// (the machine's carry them at the start): other work during the run.
    pub load_average_at_end: Option<(f64, f64, f64)>,
    /// Whether every scenario passed.
    pub passed: bool,
    /// The scenarios, in the order they ran.
    pub scenarios: &'a [ScenarioReport],
}

impl<'a> Document<'a> {
    /// A document for `scenarios`.
    #[must_use]
    pub fn new(
        machine: &'a Machine,
        quick: bool,
        started_unix: u64,
        scenarios: &'a [ScenarioReport],
    ) -> Self {
        Self {
            tool: "tandem-bench",
            version: env!("CARGO_PKG_VERSION"),
            quick,
            machine,
            command_line: std::env::args().collect(),
            started_unix,
            load_average_at_end: crate::machine::current_load_average(),
            passed: scenarios.iter().all(|s| s.passed),
            scenarios,
        }
    }

    /// Write it (pretty-printed) to `path`, creating its directory.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text)?;
        Ok(())
    }
}

/// Where reports go by default: `bench/` in the Cargo target directory this
/// binary was built in (`$CARGO_TARGET_DIR`, else the directory above
/// `target/<profile>/tandem-bench`), else `target/bench` here.
#[must_use]
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("bench");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
        .filter(|target| target.join("CACHEDIR.TAG").exists())
        .map_or_else(|| PathBuf::from("target/bench"), |target| target.join("bench"))
}

/// A plain-text table.
#[derive(Debug)]
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a title and column names.
    #[must_use]
    pub fn new(title: impl Into<String>, header: &[&str]) -> Self {
        Self {
            title: title.into(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text: columns right-aligned but the first.
    #[must_use]
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(String::len).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                if i == 0 {
                    out.push_str(&format!("{cell:<w$}"));
                } else {
                    out.push_str(&format!("{cell:>w$}"));
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = format!("\n{}\n", self.title);
        out.push_str(&line(&self.header));
        out.push('\n');
        let total: usize = widths.iter().sum::<usize>() + 2 * cols.saturating_sub(1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    /// Print it to standard output.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// A number with `digits` decimals.
#[must_use]
pub fn num(v: f64, digits: usize) -> String {
    if v.is_finite() { format!("{v:.digits$}") } else { "-".into() }
}

/// An optional number.
#[must_use]
pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| num(v, digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let mut t = Table::new("T", &["name", "value"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["long".into(), "1000".into()]);
        assert_eq!(t.render(), "\nT\nname  value\n-----------\na         1\nlong   1000\n");
        assert_eq!(num(1.234, 1), "1.2");
        assert_eq!(opt(None, 1), "-");
    }
}
