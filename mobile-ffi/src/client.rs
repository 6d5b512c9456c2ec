//! [`TandemClient`]: the SDK's entry point, a `tandem_phone::Phone` with the
//! runtime it runs on.

use std::path::PathBuf;
use std::sync::Arc;

use tandem_phone::{Phone, PhoneConfig, Schedule};

use crate::error::MobileError;
use crate::events::{EventListener, SubscriptionHandle};
use crate::pairing::PairingHandle;
use crate::runtime::SdkRuntime;
use crate::secrets::{ForeignSecretStore, SecretStore};
use crate::types::{Choices, Desktop, HistoryPage, Session, TaskSummary};

/// How to open a client.
#[derive(uniffi::Record)]
pub struct ClientConfig {
    /// A directory only this app uses (its files directory on Android, the
    /// Application Support directory on iOS). Holds paired desktops, their
    /// session state and the outbox, and the device key when no
    /// `secret_store` is given. Created if missing.
    pub data_dir: String,
    /// What this phone is called on the desktop (`tandem devices`).
    pub device_name: String,
    /// The platform shown on the desktop (default: the OS the library was
    /// built for: `ios`, `android`, `linux`, …).
    #[uniffi(default = None)]
    pub platform: Option<String>,
    /// The app's version, shown on the desktop (default: the SDK's).
    #[uniffi(default = None)]
    pub app_version: Option<String>,
    /// Where to keep the device key (Keychain, Keystore). Default: a 0600
    /// file in `data_dir`.
    #[uniffi(default = None)]
    pub secret_store: Option<Arc<dyn SecretStore>>,
    /// Extra root certificates (PEM) to trust for relays with a private CA
    /// or a self-signed certificate. Default: the public web roots only.
    #[uniffi(default = [])]
    pub extra_roots_pem: Vec<String>,
    /// Renew each desktop's session (a fresh key exchange, while both are
    /// online) when it is this old, in milliseconds. Default: one hour.
    #[uniffi(default = None)]
    pub session_renew_after_ms: Option<u64>,
    /// … or when it carried this many records. Default: 50 000.
    #[uniffi(default = None)]
    pub session_renew_after_records: Option<u64>,
    /// Ratchet each session's sending key this often, in milliseconds.
    /// Default: one hour.
    #[uniffi(default = None)]
    pub session_rekey_after_ms: Option<u64>,
    /// Give up on a renewal that got no answer within this, in
    /// milliseconds. Default: 30 000.
    #[uniffi(default = None)]
    pub session_renewal_timeout_ms: Option<u64>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("data_dir", &self.data_dir)
            .field("device_name", &self.device_name)
            .field("platform", &self.platform)
            .field("app_version", &self.app_version)
            .field("secret_store", &self.secret_store.is_some())
            .field("extra_roots_pem", &self.extra_roots_pem.len())
            .field("schedule", &self.schedule())
            .finish()
    }
}

impl ClientConfig {
    /// The renewal schedule: the protocol's defaults where no value is set.
    fn schedule(&self) -> Schedule {
        let d = Schedule::default();
        Schedule {
            renew_after_ms: self.session_renew_after_ms.unwrap_or(d.renew_after_ms),
            renew_after_records: self.session_renew_after_records.unwrap_or(d.renew_after_records),
            rekey_after_ms: self.session_rekey_after_ms.unwrap_or(d.rekey_after_ms),
            renewal_timeout_ms: self.session_renewal_timeout_ms.unwrap_or(d.renewal_timeout_ms),
        }
    }

    fn into_phone_config(self) -> PhoneConfig {
        let schedule = self.schedule();
        PhoneConfig {
            data_dir: PathBuf::from(self.data_dir),
            device_name: self.device_name,
            platform: self.platform.unwrap_or_else(|| std::env::consts::OS.to_owned()),
            app_version: self.app_version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
            secret_store: self
                .secret_store
                .map(|s| Arc::new(ForeignSecretStore(s)) as Arc<dyn tandem_phone::SecretStore>),
            extra_roots_pem: self.extra_roots_pem,
            schedule,
            step_hook: None,
            ..PhoneConfig::new("", "")
        }
    }
}

/// What every object of one client shares. The phone is dropped before the
/// runtime it runs on.
pub(crate) struct Core {
    pub(crate) phone: Phone,
    pub(crate) runtime: SdkRuntime,
}

/// The phone side of Tandem: pair with desktops, send them tasks, follow
/// what the tasks do. Open one per data directory and keep it for the app's
/// lifetime; every method may be called from any thread.
///
/// Async methods run on the SDK's own runtime; if the app stops awaiting one
/// (a cancelled Swift `Task` or Kotlin coroutine), its work is aborted.
#[derive(uniffi::Object)]
pub struct TandemClient {
    core: Arc<Core>,
}

impl std::fmt::Debug for TandemClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TandemClient").field("device_id", &self.core.phone.device_id()).finish()
    }
}

impl TandemClient {
    /// The phone, for the calls other modules export.
    pub(crate) fn phone(&self) -> Phone {
        self.core.phone.clone()
    }

    /// The runtime the phone runs on.
    pub(crate) fn runtime(&self) -> &SdkRuntime {
        &self.core.runtime
    }
}

#[uniffi::export]
impl TandemClient {
    /// Open (or create) the client in `config.data_dir`: load or make the
    /// device key, load the paired desktops and connect to their relays.
    ///
    /// # Errors
    /// [`MobileError::Storage`] if the directory or the secret store fails;
    /// [`MobileError::InvalidUse`] for a session setting of 0.
    #[uniffi::constructor]
    pub async fn open(config: ClientConfig) -> Result<Arc<Self>, MobileError> {
        let runtime = SdkRuntime::new()?;
        let phone = runtime.run(Phone::open(config.into_phone_config())).await?;
        Ok(Arc::new(Self { core: Arc::new(Core { phone, runtime }) }))
    }

    /// This phone's device id (what `tandem devices` lists).
    pub fn device_id(&self) -> String {
        self.core.phone.device_id()
    }

    /// Start pairing from a scanned QR code or an opened pairing link. When
    /// it returns, the 6-digit code is known (show it); then await
    /// [`PairingHandle::wait`].
    ///
    /// # Errors
    /// [`MobileError::InvalidQr`] (not a pairing link),
    /// [`MobileError::Expired`], [`MobileError::AlreadyClaimed`],
    /// [`MobileError::WrongRelay`] (the relay does not know the code),
    /// [`MobileError::DesktopRefused`], [`MobileError::RelayUnreachable`].
    pub async fn start_pairing(&self, qr: String) -> Result<Arc<PairingHandle>, MobileError> {
        let phone = self.core.phone.clone();
        let pairing = self.core.runtime.run(async move { phone.start_pairing(&qr).await }).await?;
        Ok(Arc::new(PairingHandle::new(self.core.clone(), pairing)))
    }

    /// The paired desktops with their connection state.
    pub fn desktops(&self) -> Vec<Desktop> {
        let _entered = self.core.runtime.handle().enter();
        self.core.phone.desktops().into_iter().map(Desktop::from).collect()
    }

    /// Forget a desktop: delete its keys and state on this phone and tell the
    /// relay (the desktop still lists the phone until it revokes it).
    ///
    /// # Errors
    /// [`MobileError::UnknownDesktop`], [`MobileError::Storage`].
    pub async fn forget(&self, desktop_id: String) -> Result<(), MobileError> {
        let phone = self.core.phone.clone();
        self.core.runtime.run(async move { phone.forget(&desktop_id).await }).await
    }

    /// Send a task to a desktop; returns its task id. It is in the outbox
    /// when this returns and reaches the desktop even if the connection is
    /// down now. `executor` names one of the desktop's executors (default:
    /// its first).
    ///
    /// # Errors
    /// [`MobileError::UnknownDesktop`], [`MobileError::Storage`],
    /// [`MobileError::Closed`] (nothing queued); [`MobileError::Queued`]:
    /// refused for now but still queued (its message names the task id and
    /// why), it may run later: retry with
    /// [`submit_with_id`](Self::submit_with_id), never with a new submit.
    ///
    /// `executor` and `project` pick among what the desktop offers
    /// ([`choices`](Self::choices)); `None`, its default.
    #[uniffi::method(default(executor = None, project = None))]
    pub async fn submit(
        &self,
        desktop_id: String,
        text: String,
        executor: Option<String>,
        project: Option<String>,
    ) -> Result<String, MobileError> {
        let phone = self.core.phone.clone();
        self.core
            .runtime
            .run(async move { phone.submit_in(&desktop_id, &text, executor, project).await })
            .await
    }

    /// The executors and projects `desktop_id` offers and its defaults, as
    /// it last said (a `Choices` event); `None` until it has (after
    /// connecting, with its task list) or for an unknown desktop.
    pub fn choices(&self, desktop_id: String) -> Option<Choices> {
        self.core.phone.choices(&desktop_id).map(Into::into)
    }

    /// Submit a task under an id of your choosing (1 to 256 bytes): the
    /// desktop runs a task id once, so a retry after `Queued` or `Timeout`
    /// with the same id never runs the task twice.
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    #[uniffi::method(default(executor = None, project = None))]
    pub async fn submit_with_id(
        &self,
        desktop_id: String,
        task_id: String,
        text: String,
        executor: Option<String>,
        project: Option<String>,
    ) -> Result<(), MobileError> {
        let phone = self.core.phone.clone();
        self.core
            .runtime
            .run(async move {
                phone.submit_with_id_in(&desktop_id, &task_id, &text, executor, project).await
            })
            .await
    }

    /// Send a follow-up to a task (a running task reads it; a finished one
    /// that can resume runs again with it).
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub async fn follow_up(
        &self,
        desktop_id: String,
        task_id: String,
        text: String,
    ) -> Result<(), MobileError> {
        let phone = self.core.phone.clone();
        self.core
            .runtime
            .run(async move { phone.follow_up(&desktop_id, &task_id, &text).await })
            .await
    }

    /// Ask the desktop to cancel a task (its executor is stopped; the task
    /// finishes as cancelled).
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub async fn cancel_task(
        &self,
        desktop_id: String,
        task_id: String,
    ) -> Result<(), MobileError> {
        let phone = self.core.phone.clone();
        self.core.runtime.run(async move { phone.cancel(&desktop_id, &task_id).await }).await
    }

    /// Answer an approval request: `allow` or deny. The outcome comes back
    /// as a [`TaskEvent::ApprovalResolved`](crate::TaskEvent::ApprovalResolved)
    /// (a decision that came too late is refused: see
    /// [`ClientEvent::Refused`](crate::ClientEvent::Refused)).
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub async fn decide(
        &self,
        desktop_id: String,
        task_id: String,
        approval_id: String,
        allow: bool,
    ) -> Result<(), MobileError> {
        let phone = self.core.phone.clone();
        self.core
            .runtime
            .run(async move { phone.decide(&desktop_id, &task_id, &approval_id, allow).await })
            .await
    }

    /// Allow an approval and make it a standing rule on the desktop
    /// ("always allow this in this project"): the resolution's `rule` names
    /// it. A device the desktop did not give the `rules` scope has the step
    /// allowed once and gets a `Refused` event (`scope`).
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub async fn allow_always(
        &self,
        desktop_id: String,
        task_id: String,
        approval_id: String,
    ) -> Result<(), MobileError> {
        let phone = self.core.phone.clone();
        self.core
            .runtime
            .run(async move { phone.allow_always(&desktop_id, &task_id, &approval_id).await })
            .await
    }

    /// The sessions `executor` can continue in `project` on the desktop
    /// (`None`: its defaults), newest first: Claude Code's, including those
    /// started at its terminal. Continue one with
    /// [`submit_resume`](Self::submit_resume).
    ///
    /// # Errors
    /// [`MobileError::Refused`] (`not_supported`: the executor keeps no
    /// sessions; `unknown_executor`, `unknown_project`, `scope`, `busy`),
    /// [`MobileError::Timeout`], [`MobileError::UnknownDesktop`].
    #[uniffi::method(default(executor = None, project = None))]
    pub async fn sessions(
        &self,
        desktop_id: String,
        executor: Option<String>,
        project: Option<String>,
    ) -> Result<Vec<Session>, MobileError> {
        let phone = self.core.phone.clone();
        self.core
            .runtime
            .run(async move {
                let found = phone.sessions(&desktop_id, executor, project).await?;
                Ok::<_, tandem_phone::PhoneError>(found.into_iter().map(Into::into).collect())
            })
            .await
    }

    /// Continue the session `session` (from [`sessions`](Self::sessions),
    /// same executor and project) with `text` as a new task; returns the
    /// task's id.
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    #[uniffi::method(default(executor = None, project = None))]
    pub async fn submit_resume(
        &self,
        desktop_id: String,
        text: String,
        session: String,
        executor: Option<String>,
        project: Option<String>,
    ) -> Result<String, MobileError> {
        let phone = self.core.phone.clone();
        self.core
            .runtime
            .run(async move {
                phone.submit_resume(&desktop_id, &text, executor, project, &session).await
            })
            .await
    }

    /// A page of a task's history from `from_offset` (0 for the start).
    ///
    /// # Errors
    /// [`MobileError::UnknownDesktop`], [`MobileError::Timeout`] (the desktop
    /// did not answer), [`MobileError::Protocol`] (history no longer kept).
    #[uniffi::method(default(from_offset = 0))]
    pub async fn history(
        &self,
        desktop_id: String,
        task_id: String,
        from_offset: u64,
    ) -> Result<HistoryPage, MobileError> {
        let phone = self.core.phone.clone();
        let page = self
            .core
            .runtime
            .run(async move { phone.history(&desktop_id, &task_id, from_offset).await })
            .await?;
        Ok(page.into())
    }

    /// The desktop's recent tasks, newest first.
    ///
    /// # Errors
    /// As [`history`](Self::history).
    pub async fn tasks(&self, desktop_id: String) -> Result<Vec<TaskSummary>, MobileError> {
        let phone = self.core.phone.clone();
        let tasks = self.core.runtime.run(async move { phone.tasks(&desktop_id).await }).await?;
        Ok(tasks.into_iter().map(TaskSummary::from).collect())
    }

    /// Deliver events to `listener` until the returned handle is cancelled
    /// or dropped. Events from before the call are not replayed (read
    /// [`desktops`](Self::desktops) and [`history`](Self::history) for the
    /// current state), except for the first subscription after `open`: it
    /// also gets what `open` reported (`DesktopSetAside`).
    pub fn subscribe(&self, listener: Arc<dyn EventListener>) -> Arc<SubscriptionHandle> {
        let _entered = self.core.runtime.handle().enter();
        let events = self.core.phone.subscribe();
        Arc::new(SubscriptionHandle::spawn(self.core.runtime.handle(), events, listener))
    }

    /// Disconnect from every relay and stop. Pending outbox messages stay on
    /// disk and are sent by the next `open`. Calls after this fail with
    /// [`MobileError::Closed`].
    pub async fn shutdown(&self) {
        let phone = self.core.phone.clone();
        let closed = self.core.runtime.run(async move {
            phone.close().await;
            Ok::<_, MobileError>(())
        });
        // Closing twice, or while the runtime stops, is not an error.
        closed.await.ok();
    }
}
