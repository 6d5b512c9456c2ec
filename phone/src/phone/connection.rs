//! One relay connection's events: connects and disconnects (with what
//! they mean for the outbox and the routes), presence, deliveries, restarts
//! and pairing mailboxes.

use super::*;

impl Phone {
    pub(super) async fn run_relay(self, url: String, mut events: mpsc::Receiver<Event>) {
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Connected { store_epoch, .. } => {
                    self.new_epoch(&url, store_epoch);
                    // Not the first attempt: the relay may have restarted
                    // and forgotten the mailbox of a pairing under way,
                    // which claims it again.
                    let waiting: Vec<_> = {
                        let st = self.lock();
                        let again = st
                            .relays
                            .get(&url)
                            .is_some_and(|r| !matches!(r.state, ConnectionState::Connecting));
                        st.pairings
                            .values()
                            .filter(|(u, _)| again && *u == url)
                            .map(|(_, tx)| tx.clone())
                            .collect()
                    };
                    self.connection(&url, ConnectionState::Connected, true);
                    self.resubscribe_later(&url);
                    for tx in waiting {
                        let _ = tx.try_send(pairing::PairInput::Reconnected);
                    }
                }
                Event::Disconnected { retry_in, code, reason } => {
                    let state = if retry_in == Duration::MAX
                        && matches!(
                            code,
                            Some(
                                tandem_proto::ErrorCode::Revoked
                                    | tandem_proto::ErrorCode::AuthFailed
                            )
                        ) {
                        ConnectionState::Revoked
                    } else {
                        let ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX);
                        ConnectionState::Reconnecting { retry_in_ms: ms }
                    };
                    debug!(relay = %url, reason, "disconnected");
                    self.connection(&url, state, false);
                    let waiting: Vec<_> = self
                        .lock()
                        .pairings
                        .values()
                        .filter(|(u, _)| *u == url)
                        .map(|(_, tx)| tx.clone())
                        .collect();
                    for tx in waiting {
                        let _ = tx.try_send(pairing::PairInput::Disconnected);
                    }
                }
                Event::Presence { peer, online } => {
                    let id = peer.to_string();
                    let known = {
                        let mut st = self.lock();
                        match st.desktops.get_mut(&id) {
                            Some(d) => {
                                d.online = online;
                                d.sent.presence(online);
                                true
                            }
                            None => false,
                        }
                    };
                    if known {
                        self.emit(PhoneEvent::Presence { desktop_id: id.clone(), online });
                        if online {
                            self.resend(&id, false);
                            // Both online: a renewal that is due starts now.
                            self.upkeep(&id);
                        }
                    }
                }
                Event::Deliver { delivery_id, from, payload } => {
                    // Saved (or nothing to keep): the relay may delete it now.
                    // Not saved: no ack, so the relay delivers it again.
                    if self.deliver(&url, from, &payload)
                        && let Some(r) = self.lock().relays.get(&url)
                    {
                        r.client.ack(delivery_id);
                    }
                }
                Event::Restarting { .. } => {
                    if let Some(r) = self.lock().relays.get_mut(&url) {
                        r.restarted = true;
                    }
                }
                Event::PairMessage { pairing_id, payload, .. } => {
                    let tx = self.lock().pairings.get(&pairing_id).map(|(_, tx)| tx.clone());
                    if let Some(tx) = tx {
                        let _ = tx.try_send(pairing::PairInput::Message(payload));
                    }
                }
                other => debug!(?other, "relay event"),
            }
        }
    }

    fn connection(&self, url: &str, state: ConnectionState, connected: bool) {
        let mut restarted = false;
        let ids: Vec<String> = {
            let mut st = self.lock();
            if let Some(r) = st.relays.get_mut(url) {
                r.state = state;
                if connected {
                    restarted = std::mem::take(&mut r.restarted);
                }
            }
            let ids: Vec<String> = st
                .desktops
                .values()
                .filter(|d| d.record.relay_url == url)
                .map(|d| d.record.desktop_id.clone())
                .collect();
            if !connected {
                for id in &ids {
                    if let Some(d) = st.desktops.get_mut(id) {
                        d.online = false;
                        d.sent.presence(false);
                    }
                }
            }
            ids
        };
        if connected {
            // A gap fill whose answer was lost with the old connection is
            // asked for again at the next gap.
            let mut st = self.lock();
            for id in &ids {
                if let Some(d) = st.desktops.get_mut(id) {
                    d.offsets.forget_fills();
                }
            }
        }
        if connected {
            self.reauthorize(url, &ids);
        }
        for id in ids {
            self.emit(PhoneEvent::Connection { desktop_id: id.clone(), state });
            if connected {
                self.resend(&id, restarted);
            }
        }
    }

    /// A connection to `url` names store `epoch`: unless it is the epoch of
    /// the previous connection, the relay may not hold what it stored
    /// before, so the next resend sends everything (as after a restart).
    fn new_epoch(&self, url: &str, epoch: u64) {
        if let Some(r) = self.lock().relays.get_mut(url)
            && r.epoch.replace(epoch) != Some(epoch)
        {
            r.restarted = true;
        }
    }

    /// Authorise the routes to `desktops` again, in the background: a relay
    /// whose data was wiped or restored from an older copy (a new store
    /// epoch, PROTOCOL.md §6.6) has lost them; authorising is idempotent.
    /// A refusal for now (the relay's store cannot write, it is busy) is
    /// tried again, 1 s doubling to 30 s, while the desktop is still paired
    /// here: otherwise the route would stay lost until the next reconnect.
    fn reauthorize(&self, url: &str, desktops: &[String]) {
        let Some(client) = self.lock().relays.get(url).map(|r| r.client.clone()) else { return };
        for id in desktops {
            let Ok(desktop) = id.parse::<DeviceId>() else { continue };
            let (client, phone, id) = (client.clone(), self.clone(), id.clone());
            tokio::spawn(async move {
                let mut wait = Duration::from_secs(1);
                loop {
                    match client.authorize(desktop).await {
                        Ok(()) => return,
                        Err(e) if e.is_temporary() => {
                            debug!(desktop = %desktop, error = %e, "the route is authorised again later");
                        }
                        Err(e) => {
                            debug!(desktop = %desktop, error = %e, "the relay did not take the route again");
                            return;
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                    if !phone.lock().desktops.contains_key(&id) {
                        return;
                    }
                }
            });
        }
    }
}
