//! `tandem rules`: the approval rules, the configuration's and those phones
//! added ("always allow"), and `tandem rules remove N`.

use std::path::Path;

use tandem_agent::ipc;
use tandem_agent::report::field;
use tandem_agent::rules::RuleConfig;
use tandem_agent::rules::added::{AddedRule, AddedRules};
use tandem_agent::text::escaped;

use super::args::RulesAction;

/// Print every rule, or remove the added rule `number`.
pub(crate) async fn rules(
    dir: &Path,
    configured: &[RuleConfig],
    action: Option<&RulesAction>,
) -> anyhow::Result<()> {
    // Only read: a damaged file is left for the agent to set aside.
    let added = AddedRules::peek(dir).map_err(|e| anyhow::anyhow!(e))?;
    match action {
        None => {
            print!("{}", lines(configured, &added));
            Ok(())
        }
        Some(RulesAction::Remove { number }) => {
            let Some(listed) = number.checked_sub(1).and_then(|i| added.get(i)) else {
                anyhow::bail!("no rule added from a phone has the number {number}");
            };
            let allow = listed.allow.clone();
            let req = ipc::Request::RemoveRule { number: *number, allow: allow.clone() };
            let gone = match ipc::call(dir, &req).await {
                Ok(v) => serde_json::from_value::<AddedRule>(field(&v, "rule").clone())?,
                Err(ipc::IpcError::NotRunning) => {
                    let gone = AddedRules::open(dir).remove(*number, &allow)?;
                    super::local::record(
                        dir,
                        tandem_agent::audit::AuditEvent::RuleRemoved {
                            rule: format!("allow {}", gone.allow),
                            added_by: gone.added_by.clone(),
                        },
                    );
                    gone
                }
                Err(e) => return Err(e.into()),
            };
            println!("Removed rule {number}: allow {}", escaped(&gone.allow));
            Ok(())
        }
    }
}

fn limits(executor: Option<&str>, project: Option<&str>, device: Option<&str>) -> String {
    let mut out = String::new();
    for (k, v) in [("executor", executor), ("project", project), ("device", device)] {
        if let Some(v) = v {
            out.push_str(&format!("  {k}={}", escaped(v)));
        }
    }
    out
}

/// The listing: configured rules first (deny wins over every allow), then
/// the ones phones added, numbered for `remove`.
fn lines(configured: &[RuleConfig], added: &[AddedRule]) -> String {
    let mut out = String::new();
    out.push_str("From the configuration file (deny rules win):\n");
    if configured.is_empty() {
        out.push_str("  none\n");
    }
    for r in configured {
        let (action, pattern) = match (&r.allow, &r.deny) {
            (Some(p), _) => ("allow", p),
            (_, Some(p)) => ("deny", p),
            _ => continue,
        };
        let scope = limits(r.executor.as_deref(), r.project.as_deref(), r.device.as_deref());
        out.push_str(&format!("  {action} {}{scope}\n", escaped(pattern)));
    }
    out.push_str("Added from phones (\"always allow\"; `tandem rules remove N`):\n");
    if added.is_empty() {
        out.push_str("  none\n");
    }
    for (i, r) in added.iter().enumerate() {
        let scope = limits(Some(&r.executor), r.project.as_deref(), None);
        let when = chrono_free_time(r.added_ms);
        out.push_str(&format!(
            "  {}. allow {}{scope}  added by {} at {when}\n",
            i + 1,
            escaped(&r.allow),
            escaped(&r.added_by)
        ));
    }
    out
}

/// `2026-12-07 21:04 UTC` from Unix ms.
fn chrono_free_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_numbers_added_rules_and_shows_who() {
        let configured = vec![RuleConfig {
            allow: None,
            deny: Some("Bash(rm *)".into()),
            executor: None,
            project: None,
            device: None,
        }];
        let added = vec![AddedRule {
            allow: "Bash(cargo test)".into(),
            executor: "claude".into(),
            project: Some("app".into()),
            added_by: "ABCD".into(),
            added_ms: 1_796_677_440_000,
        }];
        let text = lines(&configured, &added);
        assert!(text.contains("  deny Bash(rm *)\n"), "{text}");
        assert!(
            text.contains("  1. allow Bash(cargo test)  executor=claude  project=app  added by ABCD at 2026-12-07 21:04 UTC"),
            "{text}"
        );
        assert_eq!(chrono_free_time(0), "1970-01-01 00:00 UTC");
    }
}
