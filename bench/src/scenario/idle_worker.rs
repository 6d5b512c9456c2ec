//! A worker of the idle scenario (`tandem-bench idle --worker …`, started
//! by the bench, never by hand): it opens its share of the connections,
//! each from a loopback source address of its own range (`127.R.W.x`, a new
//! `x` every [`PER_SOURCE`] connections, so that ephemeral ports never run
//! out, even with the previous run's ports still in `TIME_WAIT`), says
//! `ready <connected> <milliseconds>` on standard output, and holds them
//! until its standard input closes.
//!
//! Against the relay every connection is a `tandem-client` connection with
//! its own fresh key that has passed `Hello → Challenge → Auth → AuthOk`;
//! against the forwarder it is a WebSocket that has sent its hello.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tandem_client::{ClientError, Connection, Endpoint};
use tandem_proto::entropy::Entropy;
use tandem_proto::{DeviceKey, Role};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{IdleArgs, Opts};
use crate::error::{BenchError, Result};
use crate::target::TargetKind;
use crate::target::plain::{self, Side};

/// Connections per loopback source address.
pub const PER_SOURCE: usize = 5_000;
/// Attempts per connection (a refused authentication is not retried).
const ATTEMPTS: usize = 3;
/// Deadline for one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection being held open (only dropped).
enum Held {
    Tandem(#[allow(dead_code)] Box<Connection>),
    Plain(#[allow(dead_code)] Box<WebSocketStream<TcpStream>>),
}

/// The source address of connection `i` in range `127.R.W`.
#[must_use]
pub fn source(range: [u8; 2], i: usize) -> IpAddr {
    let x = u8::try_from(1 + (i / PER_SOURCE) % 254).unwrap_or(1);
    IpAddr::V4(Ipv4Addr::new(127, range[0], range[1], x))
}

fn parse_range(s: &str) -> Option<[u8; 2]> {
    let mut parts = s.split('.');
    (parts.next()? == "127").then_some(())?;
    let r = parts.next()?.parse().ok()?;
    let w = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some([r, w])
}

/// Run as a worker: connect, report, hold, exit when stdin closes.
///
/// # Errors
/// [`BenchError::Usage`] for missing internal options.
pub async fn run(opts: &Opts, args: &IdleArgs) -> Result<()> {
    let _ = crate::fdlimit::raise();
    let url = opts.url.clone().ok_or_else(|| BenchError::Usage("--url".into()))?;
    let count = args.worker_connections.unwrap_or(0);
    let range = args
        .worker_source
        .as_deref()
        .and_then(parse_range)
        .ok_or_else(|| BenchError::Usage("--worker-source 127.R.W".into()))?;
    let kind = args.worker_target.unwrap_or(TargetKind::Tandem);
    let roots = match &opts.root_cert {
        Some(p) => vec![std::fs::read_to_string(p)?],
        None => Vec::new(),
    };
    let endpoint = Endpoint::new(&url, &roots)?;
    let concurrency = opts.concurrency.unwrap_or(64).max(1);
    let started = Instant::now();
    let results: Vec<Result<Held>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let (endpoint, url) = (endpoint.clone(), url.clone());
            async move {
                let local = source(range, i);
                match kind {
                    TargetKind::Tandem => {
                        let role = if i % 2 == 0 { Role::Desktop } else { Role::Phone };
                        tandem(endpoint.with_local_ip(Some(local)), role)
                            .await
                            .map(|c| Held::Tandem(Box::new(c)))
                    }
                    _ => forwarder(&url, local).await.map(|ws| Held::Plain(Box::new(ws))),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let ms = started.elapsed().as_millis();
    let mut held = Vec::with_capacity(results.len());
    let mut failed = 0usize;
    let mut first = None;
    for r in results {
        match r {
            Ok(h) => held.push(h),
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if let Some(first) = first {
        println!("failed {failed} {}", first.replace('\n', " "));
    }
    println!("ready {} {ms}", held.len());
    // Hold until the parent closes our standard input.
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        while matches!(std::io::Read::read(&mut std::io::stdin(), &mut buf), Ok(n) if n > 0) {}
    })
    .await;
    drop(held);
    Ok(())
}

async fn tandem(endpoint: Endpoint, role: Role) -> Result<Connection> {
    let key =
        DeviceKey::generate(&mut Entropy::os()).map_err(|e| BenchError::Protocol(e.to_string()))?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match endpoint.connect(&key, role, CONNECT_TIMEOUT).await {
            Ok(c) => return Ok(c),
            Err(e @ (ClientError::Io(_) | ClientError::Timeout | ClientError::WebSocket(_))) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(|| BenchError::Timeout("connect".into()), BenchError::from))
}

async fn forwarder(url: &str, local: IpAddr) -> Result<WebSocketStream<TcpStream>> {
    let addr: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .map_err(|_| BenchError::Usage(format!("forwarder URL {url}")))?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, tcp, Some(plain::ws_config())).await?;
    // The forwarder waits for a phone side that never comes: idle.
    ws.send(Message::Binary(plain::hello(plain::pair_id()?, Side::Desktop).into())).await?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_rotate_every_few_thousand() {
        assert_eq!(source([3, 1], 0), "127.3.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(source([3, 1], PER_SOURCE), "127.3.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(parse_range("127.3.1"), Some([3, 1]));
        assert_eq!(parse_range("10.3.1"), None);
    }
}
