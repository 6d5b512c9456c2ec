//! Session renewal and rekeying for every paired desktop: the schedule of
//! `docs/PROTOCOL.md` §10.6 ([`tandem_proto::link::Link::upkeep`]) run from
//! a timer per relay connection and as soon as a desktop comes online, the
//! desktop's file saved before the `SessionInit` goes out through the
//! connection's in-order sender, and the named steps of a renewal that
//! [`StepHook`] sees (the same names as the agent's crash points).

use std::sync::Arc;
use std::time::Duration;

use tandem_proto::envelope::Envelope;
use tandem_proto::link::LinkEvent;
use tandem_proto::upkeep::{Schedule, Upkeep};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{ConnectionState, Phone};
use crate::error::PhoneError;

/// The shortest and the longest time between two runs of the schedule.
const MIN_PERIOD: Duration = Duration::from_millis(100);
const MAX_PERIOD: Duration = Duration::from_secs(5);

/// A callback told the name of each renewal step this phone passes (see
/// [`super::PhoneConfig::step_hook`]).
#[derive(Clone)]
pub struct StepHook(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for StepHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepHook")
    }
}

/// A schedule with a 0 in it would renew or rekey without end.
pub(super) fn check_schedule(s: &Schedule) -> Result<(), PhoneError> {
    let fields = [
        ("renew_after_ms", s.renew_after_ms),
        ("renew_after_records", s.renew_after_records),
        ("rekey_after_ms", s.rekey_after_ms),
        ("renewal_timeout_ms", s.renewal_timeout_ms),
    ];
    match fields.into_iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(PhoneError::InvalidConfig(format!("{name} must be at least 1"))),
        None => Ok(()),
    }
}

/// How often the schedule runs: a quarter of its shortest interval, between
/// 100 ms and 5 s (5 s with the default schedule).
pub(super) fn period(s: &Schedule) -> Duration {
    let shortest = s.renew_after_ms.min(s.rekey_after_ms).min(s.renewal_timeout_ms);
    Duration::from_millis(shortest / 4).clamp(MIN_PERIOD, MAX_PERIOD)
}

/// Unix milliseconds by the system clock (0 if it is before 1970).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What kind of envelope a delivery is, as far as renewal is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A `SessionInit`: this side answers as responder.
    Init,
    /// A `SessionAccept`: the answer to this side's renewal.
    Accept,
    /// A record (or anything else).
    Record,
}

impl Kind {
    pub(super) fn of(payload: &[u8]) -> Kind {
        match Envelope::decode(payload) {
            Ok(Envelope::SessionInit { .. }) => Kind::Init,
            Ok(Envelope::SessionAccept { .. }) => Kind::Accept,
            _ => Kind::Record,
        }
    }
}

/// The steps a delivery passes when it is part of a renewal: opened,
/// persisted, and (when answered) the answer stored by the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Points {
    pub(super) received: &'static str,
    pub(super) saved: &'static str,
    pub(super) sent: Option<&'static str>,
}

impl Points {
    pub(super) fn of(kind: Kind, events: &[LinkEvent]) -> Option<Points> {
        let renewed = events.iter().any(|e| matches!(e, LinkEvent::SessionRenewed));
        let answered = events.iter().any(|e| matches!(e, LinkEvent::Send(_)));
        match kind {
            Kind::Init if answered => Some(Points {
                received: "renew.init_received",
                saved: "renew.next_saved",
                sent: Some("renew.accept_sent"),
            }),
            Kind::Accept if renewed => Some(Points {
                received: "renew.accept_received",
                saved: "renew.switch_saved",
                sent: Some("renew.confirm_sent"),
            }),
            Kind::Record if renewed => Some(Points {
                received: "renew.confirm_received",
                saved: "renew.promoted_saved",
                sent: None,
            }),
            _ => None,
        }
    }
}

impl Phone {
    /// Tell the step hook, if any, that this renewal step was passed.
    pub(super) fn step(&self, name: &str) {
        if let Some(hook) = &self.inner.step_hook {
            (hook.0)(name);
        }
    }

    /// The timer of one relay connection: the schedule for every desktop
    /// reached through `url`, every [`period`].
    pub(super) fn spawn_upkeep(&self, url: &str) -> JoinHandle<()> {
        let me = self.clone();
        let url = url.to_owned();
        let every = period(&self.inner.schedule);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ids: Vec<String> = me
                    .lock()
                    .desktops
                    .values()
                    .filter(|d| d.record.relay_url == url)
                    .map(|d| d.record.desktop_id.clone())
                    .collect();
                for id in ids {
                    me.upkeep(&id);
                }
            }
        })
    }

    /// Run the schedule for one desktop: rekey, abandon an unanswered
    /// renewal, start one when due and both are online. Anything that
    /// changed is saved before the `SessionInit` is handed to the sender.
    pub(super) fn upkeep(&self, desktop_id: &str) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(d) = st.desktops.get_mut(desktop_id) else { return };
        let url = d.record.relay_url.clone();
        let connected = st.relays.get(&url).is_some_and(|r| r.state == ConnectionState::Connected);
        let done = {
            let mut entropy =
                self.inner.entropy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            d.record.link.upkeep(
                &self.inner.key,
                now_ms(),
                connected && d.online,
                &self.inner.schedule,
                &mut entropy,
            )
        };
        let done = done.unwrap_or_else(|e| {
            // No randomness for a renewal; the rest of the upkeep is done
            // and may have changed the link: save it anyway.
            warn!(desktop = %desktop_id, error = %e, "cannot start a session renewal");
            Upkeep { changed: true, ..Upkeep::default() }
        });
        if !done.must_persist() {
            return;
        }
        if let Err(e) = self.save_locked(d) {
            // Nothing new leaves unsaved: the renewal (if any) is abandoned
            // by a later upkeep and started again.
            warn!(desktop = %desktop_id, error = %e, "cannot save the desktop's state");
            return;
        }
        if done.abandoned {
            info!(desktop = %desktop_id, "session renewal got no answer in time; abandoned");
        }
        if let Some(init) = done.renewal {
            debug!(desktop = %desktop_id, "renewing the session");
            self.step("renew.init_saved");
            if let Some(r) = st.relays.get(&url) {
                r.post(d.id, init, Some("renew.init_sent"), None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_runs_every_few_seconds_or_faster_for_short_schedules() {
        assert_eq!(period(&Schedule::default()), Duration::from_secs(5));
        let short = Schedule {
            renew_after_ms: 2_000,
            renew_after_records: 10,
            rekey_after_ms: 1_000,
            renewal_timeout_ms: 1_000,
        };
        assert_eq!(period(&short), Duration::from_millis(250));
        let tiny = Schedule { renewal_timeout_ms: 1, ..short };
        assert_eq!(period(&tiny), MIN_PERIOD);
    }

    #[test]
    fn a_zero_in_the_schedule_is_refused() {
        assert_eq!(check_schedule(&Schedule::default()), Ok(()));
        let zero = Schedule { rekey_after_ms: 0, ..Schedule::default() };
        assert!(
            matches!(check_schedule(&zero), Err(PhoneError::InvalidConfig(m)) if m.contains("rekey_after_ms"))
        );
    }

    #[test]
    fn only_renewal_steps_are_named() {
        let answered = [LinkEvent::Send(vec![vec![1]])];
        assert_eq!(Points::of(Kind::Init, &answered).unwrap().saved, "renew.next_saved");
        assert_eq!(Points::of(Kind::Init, &[]), None);
        let renewed = [LinkEvent::SessionRenewed, LinkEvent::Send(vec![vec![1]])];
        assert_eq!(Points::of(Kind::Accept, &renewed).unwrap().sent, Some("renew.confirm_sent"));
        assert_eq!(Points::of(Kind::Record, &[LinkEvent::AckDue]), None);
        assert_eq!(Kind::of(&[]), Kind::Record);
    }
}
