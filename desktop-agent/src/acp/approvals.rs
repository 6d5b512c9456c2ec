//! The approvals an ACP task waits for, and how the phone's decision
//! becomes the agent's answer.

use std::path::PathBuf;

use agent_client_protocol::{
    PermissionOption, PermissionOptionKind, RequestPermissionOutcome, SelectedPermissionOutcome,
};
use tokio::sync::oneshot;

/// An approval waiting for the phone.
pub(super) enum Ask {
    /// The agent's `session/request_permission`.
    Permission {
        reply: oneshot::Sender<RequestPermissionOutcome>,
        options: Vec<PermissionOption>,
        /// The files its tool call names: allowed, they may be written in
        /// this turn without asking again.
        grants: Vec<PathBuf>,
    },
    /// A file write no allowed permission named.
    Write { reply: oneshot::Sender<bool> },
}

impl Ask {
    /// Answers `cancelled` (a permission) or no (a write).
    pub(super) fn cancel(self) {
        match self {
            Ask::Permission { reply, .. } => {
                let _ = reply.send(RequestPermissionOutcome::Cancelled);
            }
            Ask::Write { reply } => {
                let _ = reply.send(false);
            }
        }
    }
}

/// The option kind as the protocol spells it.
pub(super) fn kind(option: &PermissionOption) -> &'static str {
    match option.kind {
        PermissionOptionKind::AllowOnce => "allow_once",
        PermissionOptionKind::AllowAlways => "allow_always",
        PermissionOptionKind::RejectOnce => "reject_once",
        PermissionOptionKind::RejectAlways => "reject_always",
        _ => "other",
    }
}

/// The phone's decision as one of the agent's options: allow is
/// `allow_once`, never `allow_always` (wider than anything the phone
/// decided, even an "always allow": the desktop's own rule answers next
/// time); deny is `reject_once`, else `reject_always`; `cancelled` when the
/// agent offers no such option.
pub(super) fn choose(options: &[PermissionOption], allow: bool) -> RequestPermissionOutcome {
    let wanted: &[PermissionOptionKind] = if allow {
        &[PermissionOptionKind::AllowOnce]
    } else {
        &[PermissionOptionKind::RejectOnce, PermissionOptionKind::RejectAlways]
    };
    wanted
        .iter()
        .find_map(|k| options.iter().find(|o| o.kind == *k))
        .map(|o| {
            RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(o.option_id.clone()))
        })
        .unwrap_or(RequestPermissionOutcome::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(id: &str, kind: PermissionOptionKind) -> PermissionOption {
        PermissionOption::new(id.to_owned(), id.to_owned(), kind)
    }

    fn selected(id: &str) -> RequestPermissionOutcome {
        RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(id.to_owned()))
    }

    #[test]
    fn an_allow_is_never_the_agents_allow_always() {
        use PermissionOptionKind::{AllowAlways, AllowOnce, RejectAlways, RejectOnce};
        let all = [
            option("always", AllowAlways),
            option("once", AllowOnce),
            option("no", RejectOnce),
            option("never", RejectAlways),
        ];
        assert_eq!(choose(&all, true), selected("once"));
        assert_eq!(choose(&all, false), selected("no"));
        let broad = [option("always", AllowAlways), option("never", RejectAlways)];
        // Only `allow_always` offered: an allow is `cancelled`, never that.
        assert_eq!(choose(&broad, true), RequestPermissionOutcome::Cancelled);
        assert_eq!(choose(&broad, false), selected("never"));
        assert_eq!(choose(&[], true), RequestPermissionOutcome::Cancelled);
        assert_eq!(choose(&[], false), RequestPermissionOutcome::Cancelled);
    }
}
