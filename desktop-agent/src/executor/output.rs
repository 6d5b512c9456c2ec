//! What an executor prints, turned into events: the JSONL agent protocol's
//! lines, text capped to fit one protocol message, and exit statuses.

use std::process::ExitStatus;

use serde::Deserialize;
use tandem_proto::message::FinishStatus;

use super::{ExecEvent, MAX_EVENT_TEXT, MAX_ID_LEN, TRUNCATION_MARKER};

/// An event line from a JSON-lines agent.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AgentEvent {
    Progress {
        text: String,
    },
    ToolCall {
        call_id: String,
        name: String,
        #[serde(default)]
        input: serde_json::Value,
    },
    ToolResult {
        call_id: String,
        #[serde(default)]
        output: String,
        #[serde(default)]
        is_error: bool,
    },
    ApprovalRequest {
        approval_id: String,
        summary: String,
        #[serde(default)]
        detail: String,
        /// The tool it is for, so approval rules can match it (optional).
        #[serde(default)]
        tool: Option<String>,
        #[serde(default)]
        input: serde_json::Value,
    },
    Finished {
        status: AgentStatus,
        #[serde(default)]
        summary: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum AgentStatus {
    Succeeded,
    Failed,
    Cancelled,
}

/// Turns one stdout line of a JSON-lines agent into an event: anything that
/// is not a well-formed known event becomes progress with the raw line.
pub(super) fn parse_agent_line(line: String) -> ExecEvent {
    let Ok(event) = serde_json::from_str::<AgentEvent>(&line) else {
        return ExecEvent::Progress(cap_text(line, MAX_EVENT_TEXT));
    };
    match event {
        AgentEvent::Progress { text } => ExecEvent::Progress(cap_text(text, MAX_EVENT_TEXT)),
        AgentEvent::ToolCall { call_id, name, input } => ExecEvent::ToolCall {
            call_id: cap_text(call_id, MAX_ID_LEN),
            name: cap_text(name, MAX_ID_LEN),
            input: cap_json(input),
        },
        AgentEvent::ToolResult { call_id, output, is_error } => ExecEvent::ToolResult {
            call_id: cap_text(call_id, MAX_ID_LEN),
            output: cap_text(output, MAX_EVENT_TEXT),
            is_error,
        },
        AgentEvent::ApprovalRequest { approval_id, summary, detail, tool, input } => {
            // Capped (head and tail) where every executor's approvals go:
            // the task manager.
            ExecEvent::ApprovalRequest {
                approval_id: cap_text(approval_id, MAX_ID_LEN),
                summary,
                detail,
                tool: tool.map(|name| crate::rules::ToolUse {
                    name: cap_text(name, MAX_ID_LEN),
                    input: cap_json(input),
                }),
            }
        }
        AgentEvent::Finished { status, summary } => ExecEvent::Finished {
            status: match status {
                AgentStatus::Succeeded => FinishStatus::Succeeded,
                AgentStatus::Failed => FinishStatus::Failed,
                AgentStatus::Cancelled => FinishStatus::Cancelled,
            },
            summary: cap_text(summary, MAX_EVENT_TEXT),
        },
    }
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Caps `text` so its JSON string encoding (without the quotes) takes at most
/// `max` bytes, cutting on a character boundary and appending a marker.
pub(crate) fn cap_text(mut text: String, max: usize) -> String {
    let total = text.chars().map(json_escaped_len).fold(0usize, usize::saturating_add);
    if total <= max {
        return text;
    }
    let budget = max.saturating_sub(TRUNCATION_MARKER.len());
    let mut used = 0usize;
    let mut end = 0usize;
    for (i, c) in text.char_indices() {
        used = used.saturating_add(json_escaped_len(c));
        if used > budget {
            break;
        }
        end = i.saturating_add(c.len_utf8());
    }
    text.truncate(end);
    text.push_str(TRUNCATION_MARKER);
    text
}

/// Caps a tool input: if its JSON is over [`MAX_EVENT_TEXT`], it is replaced
/// by a string holding the (capped) JSON text.
pub(crate) fn cap_json(input: serde_json::Value) -> serde_json::Value {
    let text = input.to_string();
    if text.len() <= MAX_EVENT_TEXT {
        input
    } else {
        serde_json::Value::String(cap_text(text, MAX_EVENT_TEXT))
    }
}

/// `exit code N`, `killed by signal N`, or `unknown exit status`.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    "unknown exit status".to_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A line a JSON-lines agent may print: free text, or JSON shaped like
    /// its events (every kind, known or not) with arbitrary and long fields.
    fn agent_line() -> impl Strategy<Value = String> {
        let kinds = ["progress", "tool_call", "tool_result", "approval_request", "finished", "x"];
        let statuses = ["succeeded", "failed", "cancelled", "running"];
        prop_oneof![
            any::<String>(),
            (
                prop::sample::select(kinds.to_vec()),
                any::<String>(),
                any::<String>(),
                prop::sample::select(statuses.to_vec()),
                any::<bool>(),
                0usize..3,
            )
                .prop_map(|(kind, a, b, status, flag, size)| {
                    let long = a.repeat([1, 100, 4_000][size]);
                    serde_json::json!({
                        "type": kind, "text": long, "call_id": long, "name": b,
                        "input": {"k": long}, "output": long, "is_error": flag,
                        "approval_id": long, "summary": long, "detail": b, "status": status,
                    })
                    .to_string()
                }),
        ]
    }

    fn fits(text: &str, max: usize) -> bool {
        serde_json::to_string(text).unwrap().len() <= max + 2
    }

    proptest! {
        /// Issue 17, fuzzing the executors' output parsers: any line becomes
        /// one event (never a panic), its texts within their caps.
        #[test]
        fn any_agent_line_becomes_one_event_within_its_caps(line in agent_line()) {
            match parse_agent_line(line) {
                ExecEvent::Progress(t) => prop_assert!(fits(&t, MAX_EVENT_TEXT)),
                ExecEvent::ToolCall { call_id, name, input } => {
                    prop_assert!(fits(&call_id, MAX_ID_LEN) && fits(&name, MAX_ID_LEN));
                    prop_assert!(input.to_string().len() <= MAX_EVENT_TEXT + 2);
                }
                ExecEvent::ToolResult { call_id, output, .. } => {
                    prop_assert!(fits(&call_id, MAX_ID_LEN) && fits(&output, MAX_EVENT_TEXT));
                }
                ExecEvent::ApprovalRequest { approval_id, .. } => {
                    prop_assert!(fits(&approval_id, MAX_ID_LEN));
                }
                ExecEvent::Finished { summary, .. } => {
                    prop_assert!(fits(&summary, MAX_EVENT_TEXT));
                }
                _ => {}
            }
        }
    }

    #[test]
    fn cap_text_counts_json_escapes_and_char_boundaries() {
        assert_eq!(cap_text("short".into(), 10), "short");
        for unit in ["é", "日本", "\u{1}", "\"", "\n", "a🦀"] {
            let text = unit.repeat(50_000);
            let capped = cap_text(text.clone(), MAX_EVENT_TEXT);
            assert!(capped.ends_with(TRUNCATION_MARKER));
            assert!(text.starts_with(capped.strip_suffix(TRUNCATION_MARKER).unwrap()));
            let encoded = serde_json::to_string(&capped).unwrap();
            assert!(encoded.len() <= MAX_EVENT_TEXT + 2, "{unit:?}: {}", encoded.len());
            assert!(encoded.len() > MAX_EVENT_TEXT - 8, "{unit:?}: {}", encoded.len());
        }
    }

    #[test]
    fn largest_events_fit_in_a_message() {
        use tandem_proto::message::{MAX_MESSAGE_LEN, Message, TaskEvent};
        let huge = "\u{1}".repeat(100_000);
        let event = TaskEvent::ApprovalRequest {
            approval_id: cap_text(huge.clone(), MAX_ID_LEN),
            summary: cap_text(huge.clone(), MAX_EVENT_TEXT),
            detail: cap_text(huge.clone(), MAX_EVENT_TEXT),
            expires_at_ms: u64::MAX,
        };
        let message = Message::TaskEvent {
            task_id: "t".repeat(64),
            offset: u64::MAX,
            at_ms: u64::MAX,
            event,
        };
        let bytes = message.encode().unwrap();
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
    }
}
