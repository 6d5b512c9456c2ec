//! Pairing while `tandem up` serves the devices already paired: the relay's
//! pairing messages go to the pairing, everything else to the daemon
//! ([`split_events`]); a pairing starts at once when nothing is paired (or
//! with `--pair`), and again each time the user presses Enter; the new
//! device joins the daemon's live state through a [`super::DaemonKeeper`].
//!
//! A code shown on demand rotates like any other and is taken down after
//! [`ON_DEMAND_DEADLINE`] without a pairing. Without a terminal (stdin
//! closed, as under a service manager) nothing is read and `tandem up`
//! serves on; Ctrl-C and SIGTERM stop it whatever the pairing is doing.

use std::time::Duration;

use tandem_client::{Client, Event};
use tandem_proto::DeviceKey;
use tokio::sync::mpsc;
use tracing::debug;

use super::{PairError, PairOptions, PairUi, PeerKeeper, pair};
use crate::ui::Input;

/// How long a code asked for with Enter stays up without a pairing.
pub const ON_DEMAND_DEADLINE: Duration = Duration::from_secs(600);

/// Events for the daemon, in order, and the pairing messages (and a copy of
/// each `Connected` and `Presence{online}`) for [`pair_alongside`], from one client's `events`. The forwarding task ends
/// when `events` does (then both receivers see the end) or when the daemon's
/// receiver is dropped. Pairing messages nobody is waiting for are dropped.
#[must_use]
pub fn split_events(
    mut events: mpsc::Receiver<Event>,
) -> (mpsc::Receiver<Event>, mpsc::Receiver<Event>, tokio::task::JoinHandle<()>) {
    let (daemon_tx, daemon_rx) = mpsc::channel(256);
    let (pair_tx, pair_rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if matches!(ev, Event::PairMessage { .. }) {
                if pair_tx.try_send(ev).is_err() {
                    debug!("a pairing message nobody waits for dropped");
                }
                continue;
            }
            // A reconnection reopens the mailbox of a code being shown; a
            // device coming online is how a new one shows it got its answer.
            if matches!(ev, Event::Connected { .. } | Event::Presence { online: true, .. }) {
                let _ = pair_tx.try_send(ev.clone());
            }
            if daemon_tx.send(ev).await.is_err() {
                break;
            }
        }
    });
    (daemon_rx, pair_rx, task)
}

/// What [`pair_alongside`] needs.
#[derive(Debug)]
pub struct PairAlongside<'a, K> {
    /// The agent's relay connection.
    pub client: &'a Client,
    /// The agent's key.
    pub key: &'a DeviceKey,
    /// How to pair; its deadline applies to the first pairing only.
    pub opts: PairOptions,
    /// The daemon, which keeps the new devices.
    pub keeper: K,
    /// Lines typed at the terminal: each one shows a code.
    pub input: Option<Input>,
    /// Devices paired when `tandem up` started.
    pub paired: usize,
}

fn ready_line(n: usize, input: bool) -> String {
    let hint = if input {
        "Press Enter to pair another device, Ctrl-C to stop."
    } else {
        "Press Ctrl-C to stop."
    };
    format!("Connected. {n} paired device(s). {hint}")
}

/// Pair devices for as long as `tandem up` runs: at once if `pair_now`,
/// then each time a line is read from the input. `events` carries the
/// relay's pairing messages ([`split_events`]).
///
/// Returns only when the relay connection or the daemon is gone; a pairing
/// that fails otherwise is reported and the agent serves on.
pub async fn pair_alongside<K: PeerKeeper>(
    mut this: PairAlongside<'_, K>,
    events: &mut mpsc::Receiver<Event>,
    ui: &mut dyn PairUi,
    mut pair_now: bool,
) -> PairError {
    let show_hint = this.input.is_some() && std::io::IsTerminal::is_terminal(&std::io::stdin());
    if !pair_now {
        ui.status(&ready_line(this.paired, show_hint));
    }
    let mut first = true;
    loop {
        if pair_now {
            // What came while no code was shown (reconnections, stray
            // pairing messages) is about no mailbox of this pairing.
            while events.try_recv().is_ok() {}
            let mut opts = this.opts.clone();
            if !first {
                opts.deadline = Some(ON_DEMAND_DEADLINE);
            }
            match pair(this.client, events, this.key, &opts, ui, &mut this.keeper).await {
                Ok(p) => {
                    ui.status(&p.describe());
                    this.paired = p.devices;
                    if first {
                        ui.status(&ready_line(this.paired, show_hint));
                    } else {
                        ui.status(&format!("{} paired device(s).", this.paired));
                    }
                }
                Err(PairError::TimedOut(_)) => {
                    ui.status("No device paired; the code is gone. Press Enter to show a new one.");
                }
                Err(e @ PairError::Closed) => return e,
                Err(e) => ui.status(&format!("Pairing failed: {e}. Press Enter to try again.")),
            }
            pair_now = false;
            first = false;
        }
        let line = match &this.input {
            Some(input) => input.next_line().await,
            None => None,
        };
        if line.is_some() {
            pair_now = true;
        } else {
            // No terminal (any more): serve on without reading.
            this.input = None;
            std::future::pending::<()>().await;
        }
    }
}
