//! A phone's messages that never reached this desktop (its link reported a
//! gap it cannot fill, [`LinkEvent::ResyncNeeded`]): recorded in the audit
//! log and counted per device for `tandem status`, not only logged.
//!
//! [`LinkEvent::ResyncNeeded`]: tandem_proto::link::LinkEvent::ResyncNeeded

use std::collections::HashMap;

use serde_json::{Value, json};
use tandem_proto::DeviceId;
use tracing::warn;

use super::Daemon;
use crate::audit::AuditEvent;

/// Per device: how many gaps, and the last one.
#[derive(Debug, Default)]
pub(super) struct Lost {
    by_device: HashMap<DeviceId, Gaps>,
}

#[derive(Debug, Clone, Copy)]
struct Gaps {
    count: u64,
    last_ms: u64,
    from: u64,
    to: u64,
}

impl Lost {
    /// `tandem status`'s `lost_messages` member for `device` (null when
    /// nothing was lost since the agent started).
    pub(super) fn status(&self, device: &DeviceId) -> Value {
        self.by_device.get(device).map_or(
            Value::Null,
            |g| json!({"count": g.count, "last_ms": g.last_ms, "from": g.from, "to": g.to}),
        )
    }
}

impl Daemon<'_> {
    /// The phone `from`'s messages `first..=last` will never arrive.
    pub(super) fn messages_lost(&mut self, from: DeviceId, first: u64, last: u64) {
        warn!(peer = %from, first, last, "messages from the phone were lost before they reached this desktop");
        self.record(AuditEvent::MessagesLost { device: from.to_string(), from: first, to: last });
        let now = crate::damage::now_ms();
        let g = self.lost.by_device.entry(from).or_insert(Gaps {
            count: 0,
            last_ms: now,
            from: first,
            to: last,
        });
        *g = Gaps { count: g.count.saturating_add(1), last_ms: now, from: first, to: last };
        self.plan_missing_push(from, first, last);
    }
}
