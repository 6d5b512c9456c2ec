//! What arrived, counted at the endpoints: the phone's events file (what
//! the phone engine reported to its application, live, across its
//! restarts) against the desktop's own history of each task (what the
//! agent produced), and the tasks the harness submitted.
//!
//! Per task event (`sent`: every event in the desktop's history):
//! * `delivered`: reported live by the phone, once;
//! * `duplicated`: reported more than once (across restarts too);
//! * `out_of_order`: reported after a later offset of the same task by the
//!   same phone process;
//! * `reported_missing`: never reported, but inside a loss the phone did
//!   report (`TaskEventsLost`; `MessagesLost` is counted apart);
//! * `refilled`: never reported live because the phone process was killed
//!   while the task ran (the engine's contract after a restart: the app
//!   reloads the history, `Phone::history`, which the desktop answered in
//!   full); counted apart, not as lost;
//! * `lost`: none of these.
//!
//! And the other way round, `forgotten`: an event the phone reported that
//! the desktop's history does not hold (the desktop lost what it had sent:
//! what power loss would show if it sent before its write was durable).
//!
//! Per task: the agent ran each submitted task at most once (one
//! `accepted`, one finish) and every submit the phone confirmed reached it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// The counts of a scenario.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub tasks_submitted: u64,
    pub tasks_confirmed: u64,
    pub tasks_ran: u64,
    pub tasks_ran_twice: u64,
    pub confirmed_never_ran: u64,
    /// Tasks whose submit the phone refused (`PhoneError::Storage`,
    /// nothing queued) that ran all the same.
    pub refused_but_ran: u64,
    pub tasks_unfinished: u64,
    pub sent: u64,
    pub delivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub reported_missing: u64,
    pub messages_reported_lost: u64,
    pub refilled: u64,
    pub lost: u64,
    /// Events the phone reported that the desktop's history lacks.
    pub forgotten: u64,
    /// `(task, offset)` of each lost event, for the failure message.
    pub lost_events: Vec<(String, u64)>,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tasks submitted {} (confirmed {}), ran {}, ran twice {}, confirmed never ran {}, \
             refused but ran {}, unfinished {}; events sent {}, delivered {}, lost {}, duplicated {}, out of order {}, \
             reported missing {} (+{} messages), refilled after a phone restart {}, forgotten by the desktop {}",
            self.tasks_submitted,
            self.tasks_confirmed,
            self.tasks_ran,
            self.tasks_ran_twice,
            self.confirmed_never_ran,
            self.refused_but_ran,
            self.tasks_unfinished,
            self.sent,
            self.delivered,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.reported_missing,
            self.messages_reported_lost,
            self.refilled,
            self.forgotten
        )
    }
}

impl Tally {
    /// Add the counts of another phase.
    pub fn add(&mut self, o: &Tally) {
        self.tasks_submitted += o.tasks_submitted;
        self.tasks_confirmed += o.tasks_confirmed;
        self.tasks_ran += o.tasks_ran;
        self.tasks_ran_twice += o.tasks_ran_twice;
        self.confirmed_never_ran += o.confirmed_never_ran;
        self.refused_but_ran += o.refused_but_ran;
        self.tasks_unfinished += o.tasks_unfinished;
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.reported_missing += o.reported_missing;
        self.messages_reported_lost += o.messages_reported_lost;
        self.refilled += o.refilled;
        self.lost += o.lost;
        self.forgotten += o.forgotten;
        self.lost_events.extend(o.lost_events.iter().cloned());
    }

    /// Nothing lost, duplicated or out of order, every confirmed task ran
    /// once and finished.
    pub fn assert_clean(&self, scenario: &str) {
        assert!(
            self.lost == 0
                && self.duplicated == 0
                && self.out_of_order == 0
                && self.tasks_ran_twice == 0
                && self.confirmed_never_ran == 0
                && self.refused_but_ran == 0
                && self.tasks_unfinished == 0
                && self.forgotten == 0,
            "{scenario}: {self}; lost events {:?}",
            self.lost_events
        );
    }
}

/// Note in the events file that the harness submits `task` now (before
/// the command goes to the phone).
pub fn note_submit(events: &Path, task: &str) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(events).unwrap();
    f.write_all(format!("submit {task}\n").as_bytes()).unwrap();
}

/// What the events file says.
#[derive(Debug, Default)]
pub struct Live {
    /// Per task, every `(offset, kind, phone process number)` reported.
    pub tasks: BTreeMap<String, Vec<(u64, String, u32)>>,
    /// Per task, whether a phone process started after its submit and
    /// before it finished (as reported live).
    pub restarted_in_flight: BTreeSet<String>,
    /// Per task, offsets inside reported losses.
    pub reported: BTreeMap<String, BTreeSet<u64>>,
    pub messages_lost: u64,
    /// Other lines (refusals, set-asides), in order.
    pub other: Vec<String>,
}

impl Live {
    pub fn read(events: &Path) -> Live {
        let text = std::fs::read_to_string(events).unwrap_or_default();
        let mut live = Live::default();
        let mut process = 0u32;
        let mut open: BTreeSet<String> = BTreeSet::new();
        for l in text.lines() {
            let w: Vec<&str> = l.split(' ').collect();
            match w.as_slice() {
                ["start"] => {
                    process += 1;
                    live.restarted_in_flight.extend(open.iter().cloned());
                }
                ["submit", task] => {
                    open.insert((*task).to_owned());
                }
                ["task", task, offset, kind] => {
                    let offset = offset.parse().unwrap();
                    live.tasks.entry((*task).to_owned()).or_default().push((
                        offset,
                        (*kind).to_owned(),
                        process,
                    ));
                    if kind.starts_with("finished") {
                        open.remove(*task);
                    }
                }
                ["lost-events", task, from, to] => {
                    let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
                    live.reported.entry((*task).to_owned()).or_default().extend(from..=to);
                }
                ["lost-messages", from, to] => {
                    let (from, to): (u64, u64) = (from.parse().unwrap(), to.parse().unwrap());
                    live.messages_lost += to - from + 1;
                }
                _ => live.other.push(l.to_owned()),
            }
        }
        live
    }

    /// Whether `task` was reported finished.
    pub fn finished(&self, task: &str) -> bool {
        self.tasks
            .get(task)
            .is_some_and(|evs| evs.iter().any(|(_, k, _)| k.starts_with("finished")))
    }

    /// When the phone reported `task`'s first event, as a count of task
    /// lines: for waiting on a probe.
    pub fn has_event(&self, task: &str) -> bool {
        self.tasks.contains_key(task)
    }
}

/// Count: `submitted` the tasks the harness submitted, with whether the
/// phone confirmed each; `refused` those whose submit it refused; `desktop` the desktop's history of every task it
/// lists; `live` the events file.
pub fn count(
    submitted: &[(String, bool)],
    refused: &BTreeSet<String>,
    desktop: &BTreeMap<String, Vec<(u64, String)>>,
    live: &Live,
) -> Tally {
    let mut t = Tally {
        tasks_submitted: submitted.len() as u64,
        tasks_confirmed: submitted.iter().filter(|(_, c)| *c).count() as u64,
        messages_reported_lost: live.messages_lost,
        ..Tally::default()
    };
    for (task, confirmed) in submitted {
        let seen = live.tasks.get(task).cloned().unwrap_or_default();
        let Some(history) = desktop.get(task) else {
            t.forgotten += seen.len() as u64;
            if *confirmed {
                t.confirmed_never_ran += 1;
            }
            continue;
        };
        t.tasks_ran += 1;
        if refused.contains(task) {
            t.refused_but_ran += 1;
        }
        let accepted = history.iter().filter(|(_, k)| k == "accepted").count();
        let finished = history.iter().filter(|(_, k)| k.starts_with("finished")).count();
        if accepted > 1 || finished > 1 {
            t.tasks_ran_twice += 1;
        }
        if finished == 0 {
            t.tasks_unfinished += 1;
        }
        t.sent += history.len() as u64;
        let held: BTreeSet<u64> = history.iter().map(|(o, _)| *o).collect();
        t.forgotten += seen.iter().filter(|(o, _, _)| !held.contains(o)).count() as u64;
        let mut once: BTreeMap<u64, u64> = BTreeMap::new();
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for (offset, _, process) in &seen {
            *once.entry(*offset).or_default() += 1;
            if let Some(prev) = last.get(process)
                && offset < prev
            {
                t.out_of_order += 1;
            }
            last.insert(*process, *offset);
        }
        t.duplicated += once.values().map(|n| n - 1).sum::<u64>();
        let reported = live.reported.get(task);
        for (offset, _) in history {
            if once.contains_key(offset) {
                t.delivered += 1;
            } else if reported.is_some_and(|r| r.contains(offset)) {
                t.reported_missing += 1;
            } else if live.restarted_in_flight.contains(task) {
                t.refilled += 1;
            } else {
                t.lost += 1;
                t.lost_events.push((task.clone(), *offset));
            }
        }
    }
    t
}
