//! "Always allow this in this project": a phone's allow with `remember`
//! adds an allow rule for the approval's tool use (the same tool on the same
//! command or file, for the task's executor and project), kept in the data
//! dir's `rules.json` ([`crate::rules::added`]). Only a device whose scope
//! is `rules` may; any other still has its step allowed, once, and is told
//! why no rule was added (`refused`: `scope`, or `not_supported` for an
//! approval whose executor named no tool). The rule is shown to every phone
//! with the resolution (`approval_resolved.rule`), audited (`rule_added`)
//! and logged for the desktop user, who lists and removes it with
//! `tandem rules`.

use tandem_proto::DeviceId;
use tracing::{info, warn};

use super::{Outgoing, TaskManager, now_ms, refused, to};
use crate::peers::Scope;
use crate::rules::added::{AddedRule, pattern_for};

/// Why no rule is added: the refusal's code and message.
pub(super) type NoRule = (&'static str, &'static str);

impl TaskManager {
    /// The rule an "always allow" of `approval_id` would add for `from`.
    pub(super) fn plan_rule(
        &self,
        from: DeviceId,
        scope: Scope,
        task_id: &str,
        approval_id: &str,
    ) -> Result<AddedRule, NoRule> {
        if !scope.allows_rules() {
            return Err(("scope", "allowed once: this device may not add rules on this computer"));
        }
        if self.options.added_rules_dir.is_none() {
            return Err(("not_supported", "allowed once: this desktop keeps no added rules"));
        }
        let unnamed =
            ("not_supported", "allowed once: this approval names no tool a rule can match");
        let tool =
            self.active.get(task_id).and_then(|t| t.tools.get(approval_id)).ok_or(unnamed)?;
        let (executor, project, workdir) = self.rule_place(task_id).ok_or(unnamed)?;
        let device = from.to_string();
        let cx = crate::rules::Context {
            executor: &executor,
            project: project.as_deref(),
            device: &device,
            workdir: workdir.as_deref(),
        };
        let allow = pattern_for(tool, &cx).ok_or(unnamed)?;
        Ok(AddedRule { allow, executor, project, added_by: device, added_ms: now_ms() })
    }

    /// After the executor took the allow: keep the planned rule. The rule's
    /// text for the resolution, and a refusal for `from` when none was
    /// added.
    pub(super) fn keep_rule(
        &mut self,
        from: DeviceId,
        task_id: &str,
        plan: Option<Result<AddedRule, NoRule>>,
    ) -> (Option<String>, Outgoing) {
        match plan {
            None => (None, Vec::new()),
            Some(Err((code, message))) => (None, to(from, refused(task_id, code, message))),
            Some(Ok(rule)) => {
                let text = format!("allow {}", rule.allow);
                let place = rule.project.clone().unwrap_or_else(|| "(no project)".into());
                let executor = rule.executor.clone();
                match self.added.add(rule) {
                    Ok(()) => {
                        warn!(peer = %from, task = %task_id, rule = %text, project = %place,
                            executor = %executor, "a phone added an approval rule (`tandem rules` lists it)");
                        (Some(text), Vec::new())
                    }
                    Err(e) => {
                        warn!(peer = %from, error = %e, "the rule a phone added could not be saved");
                        let why = "allowed once: the desktop could not save the rule";
                        (None, to(from, refused(task_id, "not_saved", why)))
                    }
                }
            }
        }
    }

    /// The rules phones added, oldest first (numbered from 1 by `tandem
    /// rules`).
    #[must_use]
    pub fn added_rules(&self) -> &[AddedRule] {
        self.added.list()
    }

    /// Remove the added rule numbered `n`, if it still allows `allow`.
    ///
    /// # Errors
    /// [`crate::rules::added::AddedError`].
    pub fn remove_added_rule(
        &mut self,
        n: usize,
        allow: &str,
    ) -> Result<AddedRule, crate::rules::added::AddedError> {
        let gone = self.added.remove(n, allow)?;
        info!(rule = %gone.allow, executor = %gone.executor, "an added approval rule was removed");
        Ok(gone)
    }
}
