//! `tandem-e2e`: the test tools of this crate as a program, for suites that
//! are not written in Rust (the mobile SDK's Python suite). Never shipped.
//!
//! ```text
//! tandem-e2e tap --upstream 127.0.0.1:7878 --out frames.jsonl
//!     listens on 127.0.0.1:0, prints `tap listening on ws://ADDR/v1/connect`,
//!     records every frame both ways as JSON lines
//!     {"index", "at_ms", "dir": "to_relay"|"from_relay", "hex"}; runs until
//!     its standard input closes
//! tandem-e2e probe --link desktops/ID.json --frames frames.jsonl --from DEVICE
//!     tries every record DEVICE had delivered with a fresh copy of the stored
//!     link; prints one JSON document: {"sessions": {"current", "previous",
//!     "next"}, "send_epoch", "records": [{"index", "at_ms", "session", "verdict"}]}
//! ```

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tandem_e2e::probe::{StoredLink, hex, record_session};
use tandem_e2e::tap::{Captured, Direction, Tap};
use tandem_proto::DeviceId;
use tandem_proto::frame::Frame;

#[derive(Parser)]
#[command(name = "tandem-e2e", about = "Test tools: a recording tap, a stolen-link probe")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record a relay's traffic between devices and the relay.
    Tap {
        /// The relay (`host:port`).
        #[arg(long)]
        upstream: std::net::SocketAddr,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The recording (JSON lines).
        #[arg(long)]
        out: PathBuf,
    },
    /// Try a stored link on recorded records.
    Probe {
        /// A phone's desktop file or an agent's peer file.
        #[arg(long)]
        link: PathBuf,
        /// A recording written by `tap`.
        #[arg(long)]
        frames: PathBuf,
        /// Only records delivered from this device.
        #[arg(long)]
        from: String,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Tap { upstream, listen, out } => tap(upstream, &listen, out),
        Command::Probe { link, frames, from } => probe(&link, &frames, &from),
    }
}

fn tap(
    upstream: std::net::SocketAddr,
    listen: &str,
    out: PathBuf,
) -> Result<(), Box<dyn std::error::Error>> {
    let file = Arc::new(Mutex::new(std::fs::File::create(out)?));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let on_frame = Arc::new(move |c: &Captured| {
            let line = json!({
                "index": c.index,
                "at_ms": c.at_ms,
                "dir": c.direction.as_str(),
                "hex": hex(&c.bytes),
            });
            if let Ok(mut f) = file.lock() {
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
            }
        });
        let tap = Tap::start_on(listen, upstream, Some(on_frame)).await?;
        println!("tap listening on {}", tap.url());
        // Until whoever started us closes our standard input.
        tokio::task::spawn_blocking(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        })
        .await?;
        drop(tap);
        Ok(())
    })
}

fn probe(
    link: &std::path::Path,
    frames: &std::path::Path,
    from: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let from: DeviceId = from.parse().map_err(|_| format!("not a device id: {from}"))?;
    let stored = StoredLink::from_file(&std::fs::read(link)?)?;
    let mut records = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(frames)?).lines() {
        let v: Value = serde_json::from_str(&line?)?;
        let field = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
        if field("dir") != Direction::FromRelay.as_str() {
            continue;
        }
        let bytes =
            data_encoding::HEXLOWER.decode(field("hex").as_str().unwrap_or("").as_bytes())?;
        let Ok(Frame::Deliver { from: f, payload, .. }) = Frame::decode(&bytes) else { continue };
        let Some(session) = record_session(&payload).filter(|_| f == from) else { continue };
        records.push(json!({
            "index": field("index"),
            "at_ms": field("at_ms"),
            "session": hex(&session),
            "verdict": stored.opens(&payload).name(),
        }));
    }
    let s = stored.sessions();
    let doc = json!({
        "sessions": {
            "current": hex(&s.current),
            "previous": s.previous.map(|p| hex(&p)),
            "next": s.next.map(|n| hex(&n)),
        },
        "send_epoch": stored.send_epoch(),
        "records": records,
    });
    println!("{doc}");
    Ok(())
}
