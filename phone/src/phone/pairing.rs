//! Pairing from a scanned QR code: the claim, the desktop's welcome and
//! code, and the wait for the person at the desktop.

use super::*;

impl Phone {
    /// Start pairing from a scanned QR code or its link. Returns once the
    /// desktop answered, with the 6-digit code to compare; then
    /// [`Pairing::wait`] for the person at the desktop to confirm.
    ///
    /// # Errors
    /// [`PhoneError::InvalidQr`], [`PhoneError::Expired`],
    /// [`PhoneError::AlreadyClaimed`], [`PhoneError::WrongRelay`],
    /// [`PhoneError::RelayUnreachable`], [`PhoneError::Timeout`].
    pub async fn start_pairing(&self, qr: &str) -> Result<Pairing, PhoneError> {
        let link = PairingLink::parse(qr, now_unix())?;
        let url = relay_url(link.relay_origin());
        let pid = link.payload.pairing_id();
        let desktop = link.payload.desktop.device_id();
        let (tx, mut rx) = mpsc::channel(4);
        let client = {
            let mut st = self.lock();
            if st.closed {
                return Err(PhoneError::Closed);
            }
            st.pairings.insert(pid, tx);
            self.start_relay(&mut st, &url)
        };
        let result = async {
            let (pairing, hello) = {
                let mut entropy =
                    self.inner.entropy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                PhonePairing::start(&self.inner.key, &link.payload, &self.inner.info, &mut entropy)?
            };
            match tokio::time::timeout(SEND_WAIT, client.pair_claim(pid, hello)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(PhoneError::RelayUnreachable(format!("no answer from {url}")));
                }
            }
            let welcome = tokio::time::timeout(WELCOME_WAIT, rx.recv())
                .await
                .map_err(|_| PhoneError::Timeout)?
                .ok_or(PhoneError::Closed)?;
            let envelope =
                Envelope::decode(&welcome).map_err(|e| PhoneError::Protocol(e.to_string()))?;
            let (waiting, confirm) = pairing.on_welcome(&envelope)?;
            client.pair_message(pid, desktop, confirm).await?;
            Ok(waiting)
        }
        .await;
        match result {
            Ok(waiting) => Ok(Pairing { phone: self.clone(), waiting, rx, pid, url, desktop }),
            Err(e) => {
                self.lock().pairings.remove(&pid);
                self.drop_unused_relay(&url);
                Err(e)
            }
        }
    }

    /// Stop a relay connection that no desktop uses (after a failed pairing).
    fn drop_unused_relay(&self, url: &str) {
        let mut st = self.lock();
        let used = st.desktops.values().any(|d| d.record.relay_url == url)
            || st.pairings.values().len() > 0;
        if used {
            return;
        }
        if let Some(r) = st.relays.remove(url) {
            for t in r.tasks {
                t.abort();
            }
            let client = r.client;
            tokio::spawn(async move { client.close().await });
        }
    }
}

/// A pairing under way: the code is known, the desktop has not confirmed yet.
pub struct Pairing {
    phone: Phone,
    waiting: PhoneAwaitingResult,
    rx: mpsc::Receiver<Vec<u8>>,
    pid: [u8; 16],
    url: String,
    desktop: DeviceId,
}

impl std::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pairing").field("desktop", &self.desktop).finish_non_exhaustive()
    }
}

impl Pairing {
    /// The 6-digit code both screens show.
    #[must_use]
    pub fn sas(&self) -> String {
        self.waiting.sas().to_string()
    }

    /// What the desktop calls itself.
    #[must_use]
    pub fn desktop_name(&self) -> String {
        self.waiting.desktop_info().name.clone()
    }

    /// Wait for the person at the desktop to confirm; then the desktop is
    /// paired and saved.
    ///
    /// # Errors
    /// [`PhoneError::DesktopRefused`], [`PhoneError::Timeout`],
    /// [`PhoneError::Storage`].
    pub async fn wait(self) -> Result<DesktopSummary, PhoneError> {
        let Pairing { phone, waiting, rx, pid, url, desktop } = self;
        let r = finish(&phone, waiting, rx, &url, desktop).await;
        phone.lock().pairings.remove(&pid);
        if r.is_err() {
            phone.drop_unused_relay(&url);
        }
        r
    }
}

async fn finish(
    phone: &Phone,
    waiting: PhoneAwaitingResult,
    mut rx: mpsc::Receiver<Vec<u8>>,
    url: &str,
    desktop: DeviceId,
) -> Result<DesktopSummary, PhoneError> {
    let result = tokio::time::timeout(CONFIRM_WAIT, rx.recv())
        .await
        .map_err(|_| PhoneError::Timeout)?
        .ok_or(PhoneError::Closed)?;
    let envelope = Envelope::decode(&result).map_err(|e| PhoneError::Protocol(e.to_string()))?;
    let info = waiting.desktop_info().clone();
    let paired = waiting.on_result(&envelope)?;
    let client = {
        let mut st = phone.lock();
        phone.start_relay(&mut st, url)
    };
    client.authorize(desktop).await?;
    let record = DesktopRecord {
        desktop_id: desktop.to_string(),
        info,
        relay_url: url.to_owned(),
        paired_at_unix: now_unix(),
        link: tandem_proto::link::Link::from_paired(paired, Default::default()),
        offsets: BTreeMap::new(),
        finished: Vec::new(),
    };
    store::save(&phone.inner.data_dir, &record).map_err(storage)?;
    let mut st = phone.lock();
    let d = Desktop::new(desktop, record, Offsets::default(), true);
    let s = summary(&st, &d);
    st.desktops.insert(d.record.desktop_id.clone(), d);
    drop(st);
    info!(desktop = %desktop, "paired");
    // The renewal schedule's clock starts now (saved), not at the next tick.
    phone.upkeep(&s.desktop_id);
    Ok(s)
}
