//! Push notifications (docs/PUSH.md): the platform registration given to
//! every relay this phone uses, a push key per desktop given over the link
//! (`push_setup`) and rotated whenever that desktop's session renews, and
//! the foreground state the relay uses to hold pushes back.

use tandem_proto::frame::PushSubscription;
use tandem_proto::message::Secret;
use tandem_proto::push::PushKey;

use super::*;
use crate::push::{PushChoices, PushRegistration, PushState};

impl Phone {
    /// Turn push notifications on (or change the token or the choices):
    /// every relay this phone uses is given `registration`, then every
    /// paired desktop a fresh push key and `choices`.
    ///
    /// # Errors
    /// [`PhoneError::Storage`] when the push state cannot be saved;
    /// [`PhoneError::PushRefused`] when a relay refused the registration (its
    /// message says why: no sender for that platform configured, …);
    /// [`PhoneError::Closed`]. Desktops that could not be told now are told
    /// when their session next renews.
    pub async fn enable_push(
        &self,
        registration: PushRegistration,
        choices: PushChoices,
    ) -> Result<(), PhoneError> {
        let _guard = self.inner.push_lock.lock().await;
        let mut state = PushState::load(&self.inner.data_dir)?;
        // Every relay first: one that refuses leaves push as it was.
        for client in self.relay_clients()? {
            subscribe(&client, &registration).await?;
        }
        state.registration = Some(registration);
        state.choices = choices;
        state.save(&self.inner.data_dir)?;
        let desktops: Vec<String> = self.lock().desktops.keys().cloned().collect();
        for id in desktops {
            if let Err(e) = self.give_push_key(&id).await {
                warn!(desktop = %id, error = %e, "push key not given now; it goes with the next renewal");
            }
        }
        Ok(())
    }

    /// Turn push notifications off: every desktop forgets its key, every
    /// relay the registration, and the keys are deleted.
    ///
    /// # Errors
    /// [`PhoneError::Storage`], [`PhoneError::Closed`]; a relay or desktop
    /// that could not be told now is not an error (the keys are gone, so
    /// nothing it sends can be read; a relay forgets a registration whose
    /// pushes fail).
    pub async fn disable_push(&self) -> Result<(), PhoneError> {
        let _guard = self.inner.push_lock.lock().await;
        let desktops: Vec<String> = self.lock().desktops.keys().cloned().collect();
        let off = Message::PushSetup {
            enabled: false,
            key_id: None,
            key: None,
            approvals: None,
            finished: None,
            missing: None,
        };
        for id in desktops {
            if let Err(e) = self.send(&id, &off).await {
                warn!(desktop = %id, error = %e, "could not tell the desktop to stop pushing");
            }
        }
        for client in self.relay_clients()? {
            if let Err(e) = client.push_subscribe(&PushSubscription::Remove).await {
                warn!(error = %e, "could not remove the push registration from a relay");
            }
        }
        PushState::default().save(&self.inner.data_dir)
    }

    /// Tell the relays whether the app is in the foreground: a phone in the
    /// foreground is not pushed (it sees everything live).
    pub fn set_foreground(&self, active: bool) {
        let st = self.lock();
        for r in st.relays.values() {
            // Said again after each reconnect by the client itself.
            let said = r.client.set_active(active);
            tokio::spawn(async move {
                if let Err(e) = said.await {
                    debug!(error = %e, "foreground state not said to a relay");
                }
            });
        }
    }

    /// Open a push's payload (the blob or its base64) with this phone's
    /// keys. [`crate::decrypt_notification`] does the same without an open
    /// phone (a notification extension).
    ///
    /// # Errors
    /// As [`crate::decrypt_notification`].
    pub fn decrypt_notification(
        &self,
        payload: &[u8],
    ) -> Result<crate::push::OpenedNotification, PhoneError> {
        crate::push::decrypt_notification(&self.inner.data_dir, payload)
    }

    /// A fresh push key for `desktop_id`, saved, then sent in a
    /// `push_setup` (no-op while push is off).
    pub(super) async fn give_push_key(&self, desktop_id: &str) -> Result<(), PhoneError> {
        let mut state = PushState::load(&self.inner.data_dir)?;
        if state.registration.is_none() {
            return Ok(());
        }
        let name = {
            let st = self.lock();
            let d = st
                .desktops
                .get(desktop_id)
                .ok_or_else(|| PhoneError::UnknownDesktop(desktop_id.into()))?;
            d.record.info.name.clone()
        };
        let key = {
            let mut entropy =
                self.inner.entropy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            PushKey::generate(&mut entropy).map_err(|e| PhoneError::Protocol(e.to_string()))?
        };
        // Saved first: a push sealed with it can always be opened.
        state.rotate(desktop_id, &name, &key, now_unix());
        state.save(&self.inner.data_dir)?;
        let c = state.choices;
        let m = Message::PushSetup {
            enabled: true,
            key_id: Some(key.id_hex()),
            key: Some(Secret(key.key_hex().to_string())),
            approvals: Some(c.approvals),
            finished: Some(c.finished),
            missing: Some(c.missing),
        };
        self.send(desktop_id, &m).await
    }

    /// After a renewal with `desktop_id` (or a pairing): a new push key,
    /// in the background.
    pub(super) fn rotate_push_key_later(&self, desktop_id: &str) {
        let phone = self.clone();
        let id = desktop_id.to_owned();
        tokio::spawn(async move {
            let _guard = phone.inner.push_lock.lock().await;
            if let Err(e) = phone.give_push_key(&id).await {
                warn!(desktop = %id, error = %e, "push key not rotated");
            }
        });
    }

    /// On every connection to `url`: the registration again (the relay may
    /// have lost it: a new store), in the background.
    pub(super) fn resubscribe_later(&self, url: &str) {
        let Ok(state) = PushState::load(&self.inner.data_dir) else { return };
        let Some(registration) = state.registration else { return };
        let Some(client) = self.lock().relays.get(url).map(|r| r.client.clone()) else { return };
        tokio::spawn(async move {
            if let Err(e) = subscribe(&client, &registration).await {
                warn!(error = %e, "push registration refused by the relay");
            }
        });
    }

    /// A forgotten desktop's push keys go with it. Under the push lock: an
    /// `enable_push` waiting for its relays writes back the state it read
    /// before, which would bring the keys back.
    pub(super) async fn forget_push_keys(&self, desktop_id: &str) {
        let _guard = self.inner.push_lock.lock().await;
        match PushState::load(&self.inner.data_dir) {
            Ok(mut state) if state.keys.contains_key(desktop_id) => {
                state.forget(desktop_id);
                if let Err(e) = state.save(&self.inner.data_dir) {
                    warn!(error = %e, "push keys of a forgotten desktop not deleted");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "push state unreadable"),
        }
    }

    fn relay_clients(&self) -> Result<Vec<Client>, PhoneError> {
        let st = self.lock();
        if st.closed {
            return Err(PhoneError::Closed);
        }
        Ok(st.relays.values().map(|r| r.client.clone()).collect())
    }
}

/// Give `client`'s relay the registration.
async fn subscribe(client: &Client, registration: &PushRegistration) -> Result<(), PhoneError> {
    let sub = match registration {
        PushRegistration::Apns { token } => PushSubscription::Apns { token: token.clone() },
        PushRegistration::Fcm { token } => PushSubscription::Fcm { token: token.clone() },
        PushRegistration::WebPush { endpoint, p256dh, auth } => {
            let bad = |what| PhoneError::InvalidConfig(format!("web push subscription: {what}"));
            PushSubscription::WebPush {
                endpoint: endpoint.clone(),
                p256dh: p256dh.as_slice().try_into().map_err(|_| bad("p256dh is not 65 bytes"))?,
                auth: auth.as_slice().try_into().map_err(|_| bad("auth is not 16 bytes"))?,
            }
        }
    };
    client.push_subscribe(&sub).await.map_err(|e| PhoneError::PushRefused(e.to_string()))
}
