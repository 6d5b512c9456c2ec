//! [`PairingHandle`]: a pairing in progress, from a scanned QR code.

use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::client::Core;
use crate::error::MobileError;
use crate::types::Desktop;

/// A pairing in progress. Show [`sas`](Self::sas) and ask the user to check
/// that the desktop shows the same 6 digits; the desktop's user confirms
/// there, and [`wait`](Self::wait) returns the new desktop.
#[derive(uniffi::Object)]
pub struct PairingHandle {
    core: Arc<Core>,
    sas: String,
    desktop_name: String,
    pairing: Mutex<Option<tandem_phone::Pairing>>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for PairingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingHandle").field("desktop_name", &self.desktop_name).finish()
    }
}

impl PairingHandle {
    pub(crate) fn new(core: Arc<Core>, pairing: tandem_phone::Pairing) -> Self {
        Self {
            core,
            sas: pairing.sas(),
            desktop_name: pairing.desktop_name(),
            pairing: Mutex::new(Some(pairing)),
            cancel: CancellationToken::new(),
        }
    }
}

#[uniffi::export]
impl PairingHandle {
    /// The 6-digit code both screens show, grouped for reading as the
    /// desktop prints it: `"042 917"`.
    pub fn sas(&self) -> String {
        self.sas.clone()
    }

    /// The desktop's name, as it introduced itself.
    pub fn desktop_name(&self) -> String {
        self.desktop_name.clone()
    }

    /// Wait until the desktop confirms; returns the paired desktop (also in
    /// `TandemClient::desktops` from then on).
    ///
    /// # Errors
    /// [`MobileError::DesktopRefused`] if the desktop's user refused,
    /// [`MobileError::Timeout`] if nobody confirmed in time,
    /// [`MobileError::Closed`] after [`cancel`](Self::cancel),
    /// [`MobileError::InvalidUse`] when called a second time.
    pub async fn wait(&self) -> Result<Desktop, MobileError> {
        let pairing =
            self.pairing.lock().unwrap_or_else(PoisonError::into_inner).take().ok_or_else(
                || MobileError::InvalidUse("this pairing was already waited on".into()),
            )?;
        let cancel = self.cancel.clone();
        self.core
            .runtime
            .run(async move {
                tokio::select! {
                    r = pairing.wait() => r.map(Desktop::from).map_err(MobileError::from),
                    () = cancel.cancelled() => Err(MobileError::Closed),
                }
            })
            .await
    }

    /// Give up on this pairing (a pending [`wait`](Self::wait) fails with
    /// [`MobileError::Closed`]).
    pub fn cancel(&self) {
        self.cancel.cancel();
        drop(self.pairing.lock().unwrap_or_else(PoisonError::into_inner).take());
    }
}
