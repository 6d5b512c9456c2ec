//! The push dispatcher: what happens to an accepted `Notify`.
//!
//! * The recipient has a live connection on this node that is `Active`:
//!   no push (`suppressed{reason="active"}`). In a cluster only this
//!   node's connections are known (a device active on another node may
//!   still get a push).
//! * Per device, pushes wait in order; one with a topic replaces the
//!   waiting one with the same topic (`suppressed{reason="collapsed"}`).
//! * Per device a governor quota (burst, then one per interval) paces
//!   them; more than `max_waiting` waiting is refused (`rate_limited`).
//! * When its turn comes, the device is checked again (active now:
//!   suppressed; no route from the asker any more, revoked meanwhile:
//!   `suppressed{reason="no_route"}`), its subscription read from the store (none:
//!   `suppressed{reason="no_subscription"}`) and the push handed to the
//!   kind's [`PushSender`]. `Gone` removes the subscription; a failure of
//!   the service is tried once more after `retry_after`.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use governor::{DefaultKeyedRateLimiter, Quota};
use tandem_proto::frame::push::{PushSubscription, endpoint_host};
use tandem_proto::{DeviceId, ErrorCode};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::vapid::Vapid;
use super::webpush::WebPush;
use super::{Push, PushConfig, PushError, PushSender, Subscription};
use crate::state::State;

/// Most pushes in flight to push services at once, relay-wide.
const MAX_IN_FLIGHT: usize = 64;

/// A push waiting for its turn, and the device that asked for it (its
/// route is checked again when the push goes: it may have been revoked).
struct Waiting {
    from: DeviceId,
    push: Push,
}

/// The relay's push dispatcher (one per relay, in [`State`]).
pub(crate) struct Pusher {
    config: PushConfig,
    /// Set once the key could be read or made ([`Pusher::install`]).
    vapid: OnceLock<Arc<Vapid>>,
    webpush: OnceLock<Arc<dyn PushSender>>,
    limiter: DefaultKeyedRateLimiter<DeviceId>,
    /// Pushes waiting per device; a device is here while its worker runs.
    waiting: Mutex<HashMap<DeviceId, VecDeque<Waiting>>>,
    in_flight: Semaphore,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher").field("config", &self.config).finish_non_exhaustive()
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl Pusher {
    /// A dispatcher for `config`; Web Push once it has a VAPID key.
    pub(crate) fn new(config: &PushConfig, vapid: Option<Arc<Vapid>>) -> Self {
        let period = config.interval.max(std::time::Duration::from_millis(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(nz(config.burst));
        let pusher = Self {
            config: config.clone(),
            vapid: OnceLock::new(),
            webpush: OnceLock::new(),
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            waiting: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        };
        if let Some(v) = vapid {
            pusher.install(v);
        }
        pusher
    }

    /// Web Push from now on, signed with `vapid` (the first key installed stays).
    pub(crate) fn install(&self, vapid: Arc<Vapid>) {
        let subject = self.config.vapid_subject.clone();
        match WebPush::new(Arc::clone(&vapid), subject, self.config.timeout) {
            Ok(w) => {
                if self.vapid.set(vapid).is_ok() {
                    let _ = self.webpush.set(Arc::new(w));
                }
            }
            Err(e) => warn!(error = %e, "no Web Push: the TLS client cannot be set up"),
        }
    }

    /// The VAPID key, when Web Push is on.
    pub(crate) fn vapid(&self) -> Option<&Vapid> {
        self.vapid.get().map(AsRef::as_ref)
    }

    /// The kinds this relay sends (`GET /v1/push`).
    pub(crate) fn kinds(&self) -> Vec<&'static str> {
        ["webpush", "apns", "fcm"].into_iter().filter(|k| self.sender(k).is_some()).collect()
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &PushConfig {
        &self.config
    }

    fn sender(&self, kind: &str) -> Option<&Arc<dyn PushSender>> {
        match kind {
            "webpush" => self.webpush.get(),
            other => self.config.sender_for(other),
        }
    }

    /// Whether the relay can send pushes of `sub`'s kind.
    pub(crate) fn serves(&self, sub: &Subscription) -> bool {
        self.sender(sub.kind()).is_some()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, VecDeque<Waiting>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An accepted `Notify` from `from` for `to`: suppressed, collapsed, or
    /// queued for its device's worker; `Err(rate_limited)` past
    /// `max_waiting`.
    pub(crate) fn notify(
        &self,
        state: &Arc<State>,
        from: DeviceId,
        to: DeviceId,
        push: Push,
    ) -> Result<(), ErrorCode> {
        if active_here(state, &to) {
            state.metrics.push_suppressed("active");
            return Ok(());
        }
        let mut all = self.lock();
        let start = !all.contains_key(&to);
        let waiting = all.entry(to).or_default();
        if let Some(topic) = push.topic
            && let Some(older) =
                waiting.iter_mut().find(|w| w.from == from && w.push.topic == Some(topic))
        {
            older.push = push;
            state.metrics.push_suppressed("collapsed");
            return Ok(());
        }
        if waiting.len() >= self.config.max_waiting {
            state.metrics.limit_refused("push_waiting");
            return Err(ErrorCode::RateLimited);
        }
        waiting.push_back(Waiting { from, push });
        drop(all);
        if start {
            tokio::spawn(run_device(Arc::clone(state), to));
        }
        Ok(())
    }

    /// Send one push from `from` to `to` now (its turn came); `retry`:
    /// this is the second try after the service failed. The push back when
    /// it is to be tried again later.
    async fn deliver(
        &self,
        state: &Arc<State>,
        from: DeviceId,
        to: DeviceId,
        push: Push,
        retry: bool,
    ) -> Option<Push> {
        if active_here(state, &to) {
            state.metrics.push_suppressed("active");
            return None;
        }
        // The route may have been revoked while the push waited.
        if !state.routes.is_route(from, to).await.unwrap_or(false) {
            state.metrics.push_suppressed("no_route");
            return None;
        }
        let stored = match state.store.push_subscription(to).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                state.metrics.push_suppressed("no_subscription");
                return None;
            }
            Err(e) => {
                warn!(error = %e, "cannot read a push subscription");
                state.metrics.push_failed("unknown", "store");
                return None;
            }
        };
        let Some(sub) =
            PushSubscription::from_bytes(&stored).ok().and_then(Subscription::from_wire)
        else {
            warn!("a stored push subscription does not parse; removing it");
            let _ = state.store.remove_push_subscription(to).await;
            state.metrics.push_failed("unknown", "stored");
            return None;
        };
        let kind = sub.kind();
        let Some(sender) = self.sender(kind).cloned() else {
            state.metrics.push_failed(kind, "no_sender");
            return None;
        };
        let result = {
            let _permit = self.in_flight.acquire().await;
            sender.send(&sub, &push).await
        };
        let host = match &sub {
            Subscription::WebPush { endpoint, .. } => endpoint_host(endpoint).to_owned(),
            _ => kind.to_owned(),
        };
        match result {
            Ok(()) => state.metrics.push_sent(kind),
            Err(PushError::Gone) => {
                // Only the subscription that answered so (a newer one may
                // have replaced it meanwhile).
                if state.store.push_subscription(to).await.ok().flatten().as_ref() == Some(&stored)
                {
                    let _ = state.store.remove_push_subscription(to).await;
                }
                info!(device = %to, %host, "push subscription gone; removed");
                state.metrics.push_removed(kind);
            }
            Err(PushError::Rejected(why)) => {
                warn!(device = %to, %host, %why, "push refused");
                state.metrics.push_failed(kind, "rejected");
            }
            Err(PushError::Unavailable(why)) if !retry => {
                warn!(device = %to, %host, %why, "push service unavailable; trying once more later");
                return Some(push);
            }
            Err(PushError::Unavailable(why)) => {
                warn!(device = %to, %host, %why, "push service unavailable again; push dropped");
                state.metrics.push_failed(kind, "unavailable");
            }
        }
        None
    }
}

/// The one retry of a push whose service failed, after `retry_after`.
async fn retry_later(state: Arc<State>, from: DeviceId, to: DeviceId, push: Push) {
    tokio::time::sleep(state.push.config.retry_after).await;
    let _ = state.push.deliver(&state, from, to, push, true).await;
}

/// Whether `to` has a live connection on this node that is in the foreground.
fn active_here(state: &State, to: &DeviceId) -> bool {
    state.registry.get(to).is_some_and(|h| h.active())
}

/// One device's worker: its waiting pushes, in order, at its rate. It ends
/// with the pop that empties the queue (the next `Notify` starts another).
async fn run_device(state: Arc<State>, to: DeviceId) {
    let pusher = &state.push;
    loop {
        // Wait for the rate first, so that newer pushes may still collapse
        // into the waiting one meanwhile.
        pusher.limiter.until_key_ready(&to).await;
        let (push, last) = {
            let mut all = pusher.lock();
            let Some(waiting) = all.get_mut(&to) else { return };
            let push = waiting.pop_front();
            let last = waiting.is_empty();
            if last {
                all.remove(&to);
                if all.is_empty() {
                    pusher.limiter.retain_recent();
                }
            }
            (push, last)
        };
        if let Some(Waiting { from, push }) = push
            && let Some(again) = pusher.deliver(&state, from, to, push, false).await
        {
            tokio::spawn(retry_later(Arc::clone(&state), from, to, again));
        }
        if last {
            return;
        }
    }
}
