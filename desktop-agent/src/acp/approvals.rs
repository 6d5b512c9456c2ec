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
/// `allow_once`, or with `remember` (the phone added an allow rule for
/// this tool use) `allow_always` when the agent offers it, else
/// `allow_once`; deny is `reject_once`, else `reject_always`; `cancelled`
/// when the agent offers no such option.
pub(super) fn choose(
    options: &[PermissionOption],
    allow: bool,
    remember: bool,
) -> RequestPermissionOutcome {
    let wanted: &[PermissionOptionKind] = match (allow, remember) {
        (true, false) => &[PermissionOptionKind::AllowOnce],
        (true, true) => &[PermissionOptionKind::AllowAlways, PermissionOptionKind::AllowOnce],
        (false, _) => &[PermissionOptionKind::RejectOnce, PermissionOptionKind::RejectAlways],
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
    fn the_phone_grants_always_only_when_it_remembers() {
        use PermissionOptionKind::{AllowAlways, AllowOnce, RejectAlways, RejectOnce};
        let all = [
            option("always", AllowAlways),
            option("once", AllowOnce),
            option("no", RejectOnce),
            option("never", RejectAlways),
        ];
        assert_eq!(choose(&all, true, false), selected("once"));
        assert_eq!(choose(&all, true, true), selected("always"));
        assert_eq!(choose(&all, false, false), selected("no"));
        // Remember never turns a deny into `reject_always`.
        assert_eq!(choose(&all, false, true), selected("no"));
        let broad = [option("always", AllowAlways), option("never", RejectAlways)];
        assert_eq!(choose(&broad, true, false), RequestPermissionOutcome::Cancelled);
        assert_eq!(choose(&broad, true, true), selected("always"));
        assert_eq!(choose(&broad, false, false), selected("never"));
        let once = [option("once", AllowOnce)];
        assert_eq!(choose(&once, true, true), selected("once"));
        assert_eq!(choose(&[], true, true), RequestPermissionOutcome::Cancelled);
        assert_eq!(choose(&[], false, false), RequestPermissionOutcome::Cancelled);
    }
}
