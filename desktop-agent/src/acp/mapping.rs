//! What an ACP agent's `session/update` notifications become on the phone:
//! the executor events every other executor reports.
//!
//! * `agent_message_chunk`: progress text. Chunks (often a few characters
//!   each) are joined until something else happens, [`MAX_TEXT_RUN`] bytes
//!   are together, or [`super::TEXT_FLUSH`] passes, so a phone gets lines, not
//!   tokens. The text since the last tool call is the summary of a turn
//!   that ends (`end_turn`), as Claude Code's `result` is for the `claude`
//!   executor.
//! * `agent_thought_chunk`: progress too, joined the same way and prefixed
//!   `(thinking) `.
//! * `tool_call` / `tool_call_update`: one tool call (its `toolCallId`,
//!   the `title` as name, and as input `{kind, input, locations, content}`:
//!   the raw input, the files it touches, diffs), then one tool result when
//!   its status becomes `completed` or `failed` (its content's text, else its
//!   raw output; `failed` is an error). Agents announce a call before its
//!   input is complete and send it again with the input
//!   (`@zed-industries/claude-code-acp` does): a `pending` call waits until
//!   anything else happens (another update, a permission request, the end
//!   of the turn) and goes out once, with what is known then.
//! * `plan`: progress, one line per entry: `[x]` done, `[~]` in progress,
//!   `[ ]` pending.
//! * Anything else (the user's own message replayed, available commands,
//!   modes, session info, kinds added after this version) is not shown.
//!
//! Nothing here fails: what is missing or malformed is left out.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::executor::{ExecEvent, MAX_EVENT_TEXT, MAX_ID_LEN, cap_json, cap_text};

/// Joined message or thought text is sent once it reaches this many bytes.
pub(crate) const MAX_TEXT_RUN: usize = 4 * 1024;

/// Tool calls remembered at most; beyond, finished ones are forgotten.
const MAX_TOOLS: usize = 1024;

/// What is known of one tool call.
#[derive(Debug, Default)]
struct Tool {
    title: String,
    kind: String,
    status: String,
    raw_input: Option<Value>,
    raw_output: Option<Value>,
    locations: Vec<Value>,
    content: Vec<Value>,
    /// Its [`ExecEvent::ToolCall`] went out.
    announced: bool,
    /// Its [`ExecEvent::ToolResult`] went out.
    finished: bool,
}

impl Tool {
    fn merge(&mut self, update: &Value) {
        if let Some(title) = str_of(update, "title") {
            self.title = title.to_owned();
        }
        if let Some(kind) = str_of(update, "kind") {
            self.kind = kind.to_owned();
        }
        if let Some(status) = str_of(update, "status") {
            self.status = status.to_owned();
        }
        if let Some(input) = update.get("rawInput").filter(|v| !is_empty(v)) {
            self.raw_input = Some(input.clone());
        }
        if let Some(output) = update.get("rawOutput").filter(|v| !v.is_null()) {
            self.raw_output = Some(output.clone());
        }
        if let Some(Value::Array(locations)) = update.get("locations") {
            self.locations.clone_from(locations);
        }
        if let Some(Value::Array(content)) = update.get("content") {
            self.content.clone_from(content);
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed")
    }

    /// The name shown: its title, else its kind.
    fn name(&self) -> String {
        let name = if !self.title.trim().is_empty() {
            self.title.as_str()
        } else if !self.kind.is_empty() {
            self.kind.as_str()
        } else {
            "tool"
        };
        cap_text(name.to_owned(), MAX_ID_LEN)
    }

    fn call_event(&self, id: &str) -> ExecEvent {
        let mut input = Map::new();
        if !self.kind.is_empty() {
            input.insert("kind".into(), json!(self.kind));
        }
        if let Some(raw) = &self.raw_input {
            input.insert("input".into(), raw.clone());
        }
        if !self.locations.is_empty() {
            input.insert("locations".into(), Value::Array(self.locations.clone()));
        }
        if !self.content.is_empty() {
            input.insert("content".into(), Value::Array(self.content.clone()));
        }
        ExecEvent::ToolCall {
            call_id: id.to_owned(),
            name: self.name(),
            input: cap_json(Value::Object(input)),
        }
    }

    /// Its result: the raw output when it is text, else the content's
    /// text, else the raw output as JSON, else the status.
    fn result_event(&self, id: &str) -> ExecEvent {
        let raw_text = match &self.raw_output {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(parts))
                if parts.iter().all(|p| str_of(p, "type") == Some("text")) =>
            {
                Some(parts.iter().map(block_text).collect::<Vec<_>>().join("\n"))
            }
            _ => None,
        };
        let output = raw_text
            .filter(|t| !t.trim().is_empty())
            .or_else(|| Some(tool_content_text(&self.content)).filter(|t| !t.trim().is_empty()))
            .or_else(|| self.raw_output.as_ref().map(Value::to_string))
            .unwrap_or_else(|| self.status.clone());
        ExecEvent::ToolResult {
            call_id: id.to_owned(),
            output: cap_text(output, MAX_EVENT_TEXT),
            is_error: self.status == "failed",
        }
    }
}

/// Joined text not sent yet, or a tool call not announced yet.
#[derive(Debug)]
enum Pending {
    Message(String),
    Thought(String),
    Tool(String),
}

/// Turns `session/update`s into executor events, in order.
#[derive(Debug, Default)]
pub(crate) struct Mapper {
    pending: Option<Pending>,
    tools: HashMap<String, Tool>,
    /// The agent's text since its last tool call.
    last_message: String,
}

impl Mapper {
    /// The events for one `session/update`'s `update` object.
    pub(crate) fn update(&mut self, update: &Value) -> Vec<ExecEvent> {
        match str_of(update, "sessionUpdate") {
            Some("agent_message_chunk") => self.text(false, &block_text(field(update, "content"))),
            Some("agent_thought_chunk") => self.text(true, &block_text(field(update, "content"))),
            Some("tool_call" | "tool_call_update") => self.tool(update),
            Some("plan") => {
                let mut out = self.flush();
                out.push(ExecEvent::Progress(cap_text(plan_text(update), MAX_EVENT_TEXT)));
                out
            }
            _ => Vec::new(),
        }
    }

    /// Whether joined text waits to be sent (for the flush timer).
    pub(crate) fn has_pending_text(&self) -> bool {
        matches!(self.pending, Some(Pending::Message(_) | Pending::Thought(_)))
    }

    /// Sends whatever waits: joined text, an unannounced tool call.
    pub(crate) fn flush(&mut self) -> Vec<ExecEvent> {
        match self.pending.take() {
            Some(Pending::Message(text)) if !text.trim().is_empty() => {
                vec![ExecEvent::Progress(cap_text(text, MAX_EVENT_TEXT))]
            }
            Some(Pending::Thought(text)) if !text.trim().is_empty() => {
                vec![ExecEvent::Progress(cap_text(format!("(thinking) {text}"), MAX_EVENT_TEXT))]
            }
            Some(Pending::Tool(id)) => match self.tools.get_mut(&id) {
                Some(tool) if !tool.announced => {
                    tool.announced = true;
                    vec![tool.call_event(&id)]
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// A new prompt turn starts: the text of the last one is not its answer.
    pub(crate) fn new_turn(&mut self) {
        self.last_message.clear();
    }

    /// The agent's text since its last tool call, trimmed.
    pub(crate) fn last_message(&self) -> &str {
        self.last_message.trim()
    }

    /// The files tool call `id` names: its locations, the paths in its raw
    /// input (`file_path`, `path`, `notebook_path`) and its diffs.
    pub(crate) fn paths_of(&self, id: &str) -> Vec<String> {
        let Some(tool) = self.tools.get(&cap_text(id.to_owned(), MAX_ID_LEN)) else {
            return Vec::new();
        };
        let mut paths: Vec<String> =
            tool.locations.iter().filter_map(|l| str_of(l, "path")).map(str::to_owned).collect();
        if let Some(input) = &tool.raw_input {
            for key in ["file_path", "path", "notebook_path"] {
                paths.extend(str_of(input, key).map(str::to_owned));
            }
        }
        for item in &tool.content {
            if str_of(item, "type") == Some("diff") {
                paths.extend(str_of(item, "path").map(str::to_owned));
            }
        }
        paths
    }

    /// A permission request's tool call (a `ToolCallUpdate`): what is known
    /// of it is updated, and the events to send first (the call itself,
    /// announced) are returned with the approval's summary and detail.
    pub(crate) fn approval(
        &mut self,
        tool_call: &Value,
        options: &[String],
    ) -> (Vec<ExecEvent>, String, String) {
        let mut events = self.tool(tool_call);
        events.extend(self.flush());
        let id = str_of(tool_call, "toolCallId").unwrap_or_default();
        let mut scratch = Tool::default();
        let tool = match self.tools.get(&cap_text(id.to_owned(), MAX_ID_LEN)) {
            Some(tool) => tool,
            None => {
                scratch.merge(tool_call);
                &scratch
            }
        };
        let summary = tool.name();
        let mut detail = summary.clone();
        if !tool.kind.is_empty() {
            detail.push_str(&format!("\nkind: {}", tool.kind));
        }
        if let Some(input) = &tool.raw_input {
            let pretty = serde_json::to_string_pretty(input).unwrap_or_default();
            detail.push_str(&format!("\ninput: {pretty}"));
        }
        let places: Vec<String> = tool.locations.iter().filter_map(location_text).collect();
        if !places.is_empty() {
            detail.push_str(&format!("\nfiles: {}", places.join(", ")));
        }
        let content = tool_content_text(&tool.content);
        if !content.trim().is_empty() {
            detail.push('\n');
            detail.push_str(&content);
        }
        if !options.is_empty() {
            detail.push_str(&format!("\nthe agent offers: {}", options.join(", ")));
        }
        (events, summary, detail)
    }

    fn text(&mut self, thought: bool, text: &str) -> Vec<ExecEvent> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        match &mut self.pending {
            Some(Pending::Message(run)) if !thought => run.push_str(text),
            Some(Pending::Thought(run)) if thought => run.push_str(text),
            _ => {
                out = self.flush();
                let run = text.to_owned();
                self.pending =
                    Some(if thought { Pending::Thought(run) } else { Pending::Message(run) });
            }
        }
        if !thought && self.last_message.len() < MAX_EVENT_TEXT {
            self.last_message.push_str(text);
        }
        if matches!(&self.pending, Some(Pending::Message(r) | Pending::Thought(r)) if r.len() >= MAX_TEXT_RUN)
        {
            out.extend(self.flush());
        }
        out
    }

    fn tool(&mut self, update: &Value) -> Vec<ExecEvent> {
        let Some(id) = str_of(update, "toolCallId").filter(|id| !id.is_empty()) else {
            return Vec::new();
        };
        let id = cap_text(id.to_owned(), MAX_ID_LEN);
        let mut out = Vec::new();
        if !matches!(&self.pending, Some(Pending::Tool(p)) if *p == id) {
            out = self.flush();
        }
        if self.tools.len() >= MAX_TOOLS && !self.tools.contains_key(&id) {
            self.tools.retain(|_, t| !t.finished);
        }
        if !self.tools.contains_key(&id) {
            // A new tool call: the agent's text before it is not its answer.
            self.last_message.clear();
        }
        let tool = self.tools.entry(id.clone()).or_default();
        tool.merge(update);
        if !tool.announced {
            if tool.status.is_empty() || tool.status == "pending" {
                self.pending = Some(Pending::Tool(id));
                return out;
            }
            if matches!(&self.pending, Some(Pending::Tool(p)) if *p == id) {
                self.pending = None;
            }
            tool.announced = true;
            out.push(tool.call_event(&id));
        }
        if tool.is_done() && !tool.finished {
            tool.finished = true;
            out.push(tool.result_event(&id));
        }
        out
    }
}

/// `v[key]`, `null` when missing.
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// The text of one content block (`text`; others as a short marker).
fn block_text(block: &Value) -> String {
    match str_of(block, "type") {
        Some("text") => str_of(block, "text").unwrap_or_default().to_owned(),
        Some("resource_link") => {
            let uri = str_of(block, "uri").unwrap_or_default();
            format!("[{}]({uri})", str_of(block, "name").unwrap_or(uri))
        }
        Some("resource") => match block.get("resource") {
            Some(r) => match str_of(r, "text") {
                Some(text) => text.to_owned(),
                None => format!("[{}]", str_of(r, "uri").unwrap_or("resource")),
            },
            None => "[resource]".to_owned(),
        },
        Some(other) => format!("[{other}]"),
        None => String::new(),
    }
}

/// A tool call's content as text: content blocks, diffs (each line of the
/// old text `- `, of the new `+ `), terminals.
fn tool_content_text(content: &[Value]) -> String {
    let mut parts = Vec::new();
    for item in content {
        match str_of(item, "type") {
            Some("content") => parts.push(block_text(field(item, "content"))),
            Some("diff") => {
                let path = str_of(item, "path").unwrap_or("?");
                let mut diff = format!("diff {path}:");
                for line in str_of(item, "oldText").unwrap_or_default().lines() {
                    diff.push_str(&format!("\n- {line}"));
                }
                for line in str_of(item, "newText").unwrap_or_default().lines() {
                    diff.push_str(&format!("\n+ {line}"));
                }
                parts.push(diff);
            }
            Some("terminal") => {
                parts.push(format!("[terminal {}]", str_of(item, "terminalId").unwrap_or("?")));
            }
            _ => {}
        }
    }
    parts.join("\n")
}

fn location_text(location: &Value) -> Option<String> {
    let path = str_of(location, "path")?;
    Some(match location.get("line").and_then(Value::as_u64) {
        Some(line) => format!("{path}:{line}"),
        None => path.to_owned(),
    })
}

fn plan_text(update: &Value) -> String {
    crate::executor::plan_text(update.get("entries"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

    use super::*;

    fn chunk(kind: &str, text: &str) -> Value {
        json!({"sessionUpdate": kind, "content": {"type": "text", "text": text}})
    }

    fn progress(text: &str) -> ExecEvent {
        ExecEvent::Progress(text.to_owned())
    }

    /// What `@zed-industries/claude-code-acp` 0.16.2 sent for a `Write`
    /// (recorded, ids and paths shortened).
    #[test]
    fn a_recorded_turn_maps_to_events() {
        let mut m = Mapper::default();
        let mut out = Vec::new();
        let updates = [
            json!({"sessionUpdate": "available_commands_update", "availableCommands": []}),
            chunk("agent_message_chunk", ""),
            chunk("agent_message_chunk", "I will write "),
            chunk("agent_message_chunk", "the file."),
            json!({"sessionUpdate": "tool_call", "toolCallId": "t1", "rawInput": {},
                   "status": "pending", "title": "Write", "kind": "edit", "content": [],
                   "locations": []}),
            json!({"sessionUpdate": "tool_call", "toolCallId": "t1",
                   "rawInput": {"file_path": "/p/hello.txt", "content": "hi\n"},
                   "status": "pending", "title": "Write /p/hello.txt", "kind": "edit",
                   "content": [{"type": "diff", "path": "/p/hello.txt", "oldText": null,
                                "newText": "hi\n"}],
                   "locations": [{"path": "/p/hello.txt"}]}),
        ];
        for u in &updates {
            out.extend(m.update(u));
        }
        assert_eq!(out, vec![progress("I will write the file.")]);
        // The permission request announces the call, complete.
        let (events, summary, detail) = m.approval(
            &json!({"toolCallId": "t1", "title": "Write /p/hello.txt",
                    "rawInput": {"file_path": "/p/hello.txt", "content": "hi\n"}}),
            &["Allow (allow_once)".to_owned()],
        );
        let ExecEvent::ToolCall { call_id, name, input } = &events[0] else { panic!("{events:?}") };
        assert_eq!((call_id.as_str(), name.as_str()), ("t1", "Write /p/hello.txt"));
        assert_eq!(input["kind"], "edit");
        assert_eq!(input["input"]["file_path"], "/p/hello.txt");
        assert_eq!(input["locations"][0]["path"], "/p/hello.txt");
        assert_eq!(events.len(), 1);
        assert_eq!(summary, "Write /p/hello.txt");
        assert!(detail.contains("\"file_path\": \"/p/hello.txt\""), "{detail}");
        assert!(detail.contains("diff /p/hello.txt:\n+ hi"), "{detail}");
        assert!(detail.contains("Allow (allow_once)"), "{detail}");
        let mut out = Vec::new();
        for u in [
            json!({"sessionUpdate": "tool_call_update", "toolCallId": "t1",
                   "_meta": {"claudeCode": {"toolResponse": []}}}),
            json!({"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "completed",
                   "rawOutput": [{"type": "text", "text": "The file has been updated."}]}),
            chunk("agent_message_chunk", "Done"),
            chunk("agent_message_chunk", "."),
        ] {
            out.extend(m.update(&u));
        }
        out.extend(m.flush());
        assert_eq!(
            out,
            vec![
                ExecEvent::ToolResult {
                    call_id: "t1".into(),
                    output: "The file has been updated.".into(),
                    is_error: false
                },
                progress("Done."),
            ]
        );
        assert_eq!(m.last_message(), "Done.");
    }

    #[test]
    fn thoughts_plans_and_failures() {
        let mut m = Mapper::default();
        let mut out = m.update(&chunk("agent_thought_chunk", "hmm"));
        out.extend(m.update(&chunk("agent_message_chunk", "ok")));
        out.extend(m.update(&json!({"sessionUpdate": "plan", "entries": [
            {"content": "read", "status": "completed", "priority": "high"},
            {"content": "edit", "status": "in_progress", "priority": "high"},
            {"content": "test", "status": "pending", "priority": "low"}]})));
        out.extend(m.update(&json!({"sessionUpdate": "tool_call", "toolCallId": "x",
            "title": "`make`", "kind": "execute", "status": "in_progress"})));
        out.extend(m.update(&json!({"sessionUpdate": "tool_call_update", "toolCallId": "x",
            "status": "failed", "content": [{"type": "content",
            "content": {"type": "text", "text": "exit 2"}}]})));
        // Repeated: no second result.
        out.extend(m.update(&json!({"sessionUpdate": "tool_call_update", "toolCallId": "x",
            "status": "failed"})));
        assert_eq!(out[0], progress("(thinking) hmm"));
        assert_eq!(out[1], progress("ok"));
        assert_eq!(out[2], progress("Plan:\n[x] read\n[~] edit\n[ ] test"));
        assert!(matches!(&out[3], ExecEvent::ToolCall { name, .. } if name == "`make`"));
        assert_eq!(
            out[4],
            ExecEvent::ToolResult { call_id: "x".into(), output: "exit 2".into(), is_error: true }
        );
        assert_eq!(out.len(), 5);
        assert_eq!(m.last_message(), "");
    }

    #[test]
    fn odd_updates_never_fail() {
        let mut m = Mapper::default();
        for u in [
            json!(null),
            json!([]),
            json!({"sessionUpdate": 5}),
            json!({"sessionUpdate": "tool_call"}),
            json!({"sessionUpdate": "tool_call", "toolCallId": ""}),
            json!({"sessionUpdate": "tool_call_update", "toolCallId": {"a": 1}}),
            json!({"sessionUpdate": "agent_message_chunk"}),
            json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "image"}}),
            json!({"sessionUpdate": "plan", "entries": "no"}),
            json!({"sessionUpdate": "usage_update", "used": 1}),
        ] {
            let _ = m.update(&u);
        }
        let _ = m.approval(&json!(null), &[]);
        let _ = m.flush();
        let long = "y".repeat(MAX_TEXT_RUN * 3);
        let out = m.update(&chunk("agent_message_chunk", &long));
        assert_eq!(out.len(), 1, "a long run is sent at once");
    }
}
