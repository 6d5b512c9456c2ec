//! `bench-plot`: SVG charts from `tandem-bench` JSON reports, for
//! `docs/BENCHMARKS.md`: throughput by payload size per target, the latency
//! CDF per target and rate, and memory per idle connection by N.
//!
//! ```sh
//! target/release/bench-plot --from target/bench --out docs/bench
//! ```
//!
//! The charts are plain SVG written here (axes, bars, lines, a legend):
//! text is left to the viewer's fonts, so no font files or rasterizer are
//! needed. Reads `throughput.json`, `latency.json` and `idle.json` (or the
//! scenarios inside `all.json`); a chart whose data is missing is skipped.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Draws one chart from a scenario's results.
type Draw = fn(&Value) -> Option<String>;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 46.0;
const BOTTOM: f64 = 58.0;
const COLORS: [&str; 9] = [
    "#2563eb", "#9ca3af", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#65a30d",
    "#db2777",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg =
        |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let from = PathBuf::from(arg("--from").unwrap_or_else(|| "target/bench".into()));
    let out = PathBuf::from(arg("--out").unwrap_or_else(|| "docs/bench".into()));
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("bench-plot: cannot create {}: {e}", out.display());
        std::process::exit(1);
    }
    let charts: [(&str, Draw); 3] =
        [("throughput", throughput), ("latency", latency_cdf), ("idle", idle_memory)];
    let mut wrote = 0;
    for (scenario, draw) in charts {
        let Some(results) = load(&from, scenario) else {
            println!("{scenario}: no report in {}, skipped", from.display());
            continue;
        };
        let Some(svg) = draw(&results) else {
            println!("{scenario}: nothing to plot, skipped");
            continue;
        };
        let path = out.join(format!("{scenario}.svg"));
        match std::fs::write(&path, svg) {
            Ok(()) => {
                println!("wrote {}", path.display());
                wrote += 1;
            }
            Err(e) => eprintln!("bench-plot: {}: {e}", path.display()),
        }
    }
    if wrote == 0 {
        std::process::exit(1);
    }
}

/// A scenario's `results` from its own report, or from `all.json`.
fn load(dir: &Path, scenario: &str) -> Option<Value> {
    let read = |name: &str| -> Option<Value> {
        serde_json::from_slice(&std::fs::read(dir.join(name)).ok()?).ok()
    };
    let pick = |doc: &Value| {
        doc.get("scenarios")?
            .as_array()?
            .iter()
            .find(|s| s.get("scenario").and_then(Value::as_str) == Some(scenario))?
            .get("results")
            .cloned()
    };
    let own = if scenario == "idle" { "idle.json".to_owned() } else { format!("{scenario}.json") };
    read(&own).as_ref().and_then(pick).or_else(|| read("all.json").as_ref().and_then(pick))
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn rows(v: &Value) -> Vec<&Value> {
    v.get("rows").and_then(Value::as_array).map(|r| r.iter().collect()).unwrap_or_default()
}

/// Distinct values in first-seen order.
fn distinct<T: PartialEq + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn size_label(bytes: f64) -> String {
    if bytes >= 1024.0 { format!("{} KiB", bytes / 1024.0) } else { format!("{bytes} B") }
}

/// An SVG document with a plot area, axes, title and legend.
struct Svg {
    body: String,
}

impl Svg {
    fn new(title: &str) -> Self {
        let mut body = String::new();
        let _ = write!(
            body,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12"><rect width="{W}" height="{H}" fill="white"/><text x="{}" y="24" font-size="15" font-weight="bold">{}</text>"#,
            LEFT,
            esc(title)
        );
        Self { body }
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, t: &str) {
        let _ = write!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}">{}</text>"#,
            esc(t)
        );
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) {
        let _ = write!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}"/>"#
        );
    }

    /// The y axis from 0 to `max` (linear) with 5 ticks and a label.
    fn y_axis(&mut self, max: f64, label: &str) {
        for i in 0..=5 {
            let v = max * f64::from(i) / 5.0;
            let y = self.y(v, max);
            self.line(LEFT, y, W - RIGHT, y, "#e5e7eb");
            self.text(LEFT - 6.0, y + 4.0, "end", &human(v));
        }
        self.line(LEFT, TOP, LEFT, H - BOTTOM, "#111");
        self.line(LEFT, H - BOTTOM, W - RIGHT, H - BOTTOM, "#111");
        let _ = write!(
            self.body,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (TOP + H - BOTTOM) / 2.0,
            esc(label)
        );
    }

    fn y(&self, v: f64, max: f64) -> f64 {
        H - BOTTOM - (v / max) * (H - BOTTOM - TOP)
    }

    fn legend(&mut self, names: &[String]) {
        for (i, n) in names.iter().enumerate() {
            let y = TOP + 10.0 + 20.0 * i as f64;
            let _ = write!(
                self.body,
                r#"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{}"/>"#,
                W - RIGHT + 14.0,
                y - 10.0,
                color(i)
            );
            self.text(W - RIGHT + 32.0, y, "start", n);
        }
    }

    fn finish(mut self, note: &str) -> String {
        self.text(LEFT, H - 10.0, "start", note);
        self.body.push_str("</svg>\n");
        self.body
    }
}

fn color(i: usize) -> &'static str {
    COLORS.get(i % COLORS.len()).copied().unwrap_or("#111")
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Grouped bars: one group per category, one bar per series.
fn bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[String],
    value: impl Fn(usize, usize) -> Option<f64>,
    note: &str,
) -> Option<String> {
    let mut max = 0.0_f64;
    for g in 0..groups.len() {
        for k in 0..series.len() {
            max = max.max(value(g, k).unwrap_or(0.0));
        }
    }
    if max <= 0.0 {
        return None;
    }
    let max = max * 1.1;
    let mut svg = Svg::new(title);
    svg.y_axis(max, y_label);
    let width = (W - RIGHT - LEFT) / groups.len() as f64;
    let bar = (width * 0.8) / series.len() as f64;
    for (g, name) in groups.iter().enumerate() {
        let x0 = LEFT + width * g as f64 + width * 0.1;
        for k in 0..series.len() {
            if let Some(v) = value(g, k) {
                let y = svg.y(v, max);
                let _ = write!(
                    svg.body,
                    r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    x0 + bar * k as f64,
                    bar - 2.0,
                    H - BOTTOM - y,
                    color(k),
                    esc(series.get(k).map_or("", String::as_str)),
                    human(v)
                );
            }
        }
        svg.text(LEFT + width * (g as f64 + 0.5), H - BOTTOM + 18.0, "middle", name);
    }
    svg.legend(series);
    Some(svg.finish(note))
}

/// Messages per second by payload size, one bar per target.
fn throughput(r: &Value) -> Option<String> {
    let rows = rows(r);
    let payloads: Vec<u64> = distinct(rows.iter().filter_map(|x| x.get("payload")?.as_u64()));
    let targets: Vec<String> = distinct(rows.iter().map(|x| s(x, "target").to_owned()));
    let groups: Vec<String> = payloads.iter().map(|p| size_label(*p as f64)).collect();
    let pairs = r.get("pairs").and_then(Value::as_u64).unwrap_or(0);
    bars(
        "Throughput by payload size (messages/s out at the phone ends)",
        "messages per second",
        &groups,
        &targets,
        |g, k| {
            rows.iter()
                .find(|x| {
                    x.get("payload").and_then(Value::as_u64) == payloads.get(g).copied()
                        && targets.get(k).is_some_and(|t| s(x, "target") == t)
                })
                .and_then(|x| f(x, "messages_per_s"))
        },
        &format!("{pairs} pairs, each as fast as end-to-end acks allow; same run, same machine"),
    )
}

/// Memory per idle connection by N, one bar per target (and TLS).
fn idle_memory(r: &Value) -> Option<String> {
    let rows = rows(r);
    let key = |x: &Value| {
        let tls = x.get("tls").and_then(Value::as_bool).unwrap_or(false);
        format!("{}{}", s(x, "target"), if tls { " (TLS)" } else { "" })
    };
    let ns: Vec<u64> = distinct(rows.iter().filter_map(|x| x.get("connected")?.as_u64()));
    let series: Vec<String> = distinct(rows.iter().map(|x| key(x)));
    let groups: Vec<String> = ns.iter().map(|n| format!("N = {n}")).collect();
    bars(
        "Relay memory per idle authenticated connection",
        "KiB per connection (RSS)",
        &groups,
        &series,
        |g, k| {
            rows.iter()
                .find(|x| {
                    x.get("connected").and_then(Value::as_u64) == ns.get(g).copied()
                        && series.get(k).is_some_and(|t| &key(x) == t)
                })
                .and_then(|x| f(x, "bytes_per_connection"))
                .map(|b| b / 1024.0)
        },
        "VmRSS after the last connection minus before the first, divided by N",
    )
}

/// Latency CDF (log-scale microseconds) from each row's percentiles.
fn latency_cdf(r: &Value) -> Option<String> {
    let rows = rows(r);
    if rows.is_empty() {
        return None;
    }
    let points = |x: &Value| -> Vec<(f64, f64)> {
        let l = x.get("latency");
        let p = |k: &str| l.and_then(|l| f(l, k));
        [("p50_us", 50.0), ("p90_us", 90.0), ("p99_us", 99.0), ("p999_us", 99.9), ("max_us", 100.0)]
            .iter()
            .filter_map(|(k, q)| Some((p(k)?.max(1.0), *q)))
            .collect()
    };
    let all: Vec<f64> = rows.iter().flat_map(|x| points(x)).map(|(v, _)| v).collect();
    let lo = all.iter().copied().fold(f64::MAX, f64::min).max(1.0).log10().floor();
    let hi = all.iter().copied().fold(1.0, f64::max).log10().ceil().max(lo + 1.0);
    let x = |v: f64| LEFT + (v.log10() - lo) / (hi - lo) * (W - RIGHT - LEFT);
    let mut svg = Svg::new("Latency CDF by target and rate");
    svg.y_axis(100.0, "percentile");
    let mut d = lo;
    while d <= hi {
        let v = 10_f64.powf(d);
        svg.line(x(v), TOP, x(v), H - BOTTOM, "#e5e7eb");
        svg.text(x(v), H - BOTTOM + 18.0, "middle", &format!("{} µs", human(v)));
        d += 1.0;
    }
    let names: Vec<String> = rows
        .iter()
        .map(|r| format!("{} @ {}/s", s(r, "target"), human(f(r, "rate").unwrap_or(0.0))))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let pts: Vec<String> = points(row)
            .iter()
            .map(|(v, q)| format!("{:.1},{:.1}", x(*v), svg.y(*q, 100.0)))
            .collect();
        let _ = write!(
            svg.body,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.join(" "),
            color(i)
        );
    }
    svg.legend(&names);
    Some(svg.finish("p50, p90, p99, p99.9 and max of each run (HdrHistogram)"))
}
