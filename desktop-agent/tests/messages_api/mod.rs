//! A local stand-in for the Anthropic Messages API, for driving the real
//! Claude Code CLI offline (`ANTHROPIC_BASE_URL=<base_url>`,
//! `ANTHROPIC_API_KEY=<anything>`).
//!
//! It listens on `127.0.0.1:0` inside the test process, records every
//! request (method, path, headers, JSON body) and answers `POST
//! /v1/messages` from a [`Script`]: the script sees the request (the whole
//! conversation so far) and returns a [`Reply`] — content blocks (text,
//! tool uses) and a stop reason — or an API error. A streaming request
//! (`"stream": true`, which is what Claude Code sends) gets server-sent
//! events as the real API sends them: `message_start`, per block
//! `content_block_start`, `content_block_delta`s (`text_delta`, or the tool
//! input as `input_json_delta` fragments), `content_block_stop`, then
//! `message_delta` with the stop reason and `message_stop`. A non-streaming
//! one gets the message as one JSON object. `POST
//! /v1/messages/count_tokens` gets a rough count, `GET /v1/models` one
//! model; anything else a 404 in the API's error shape (and it is recorded,
//! so a test can see what the CLI asked for).
//!
//! Claude Code 2.1.332 asks for nothing but `POST /v1/messages?beta=true`
//! (streaming) when started with `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Bytes of a text or tool input sent per delta event, so a client has to
/// put fragments back together as it does with the real API.
const DELTA_CHUNK: usize = 16;

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path and query (`/v1/messages?beta=true`).
    pub path: String,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` if it was empty or not JSON).
    pub body: Value,
}

impl Recorded {
    /// Whether this is a Messages API call (not token counting).
    pub fn is_message(&self) -> bool {
        self.method == "POST"
            && (self.path == "/v1/messages" || self.path.starts_with("/v1/messages?"))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The conversation of a Messages API call.
    pub fn conversation(&self) -> Conversation<'_> {
        Conversation { body: &self.body }
    }
}

/// A Messages API request body, with what scripts ask of it.
#[derive(Debug, Clone, Copy)]
pub struct Conversation<'a> {
    /// The request's JSON body.
    pub body: &'a Value,
}

/// A `tool_result` block the client sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The `tool_use` it answers.
    pub tool_use_id: String,
    /// Its text (text parts joined by newlines).
    pub content: String,
    /// Whether the tool failed or was refused.
    pub is_error: bool,
}

impl<'a> Conversation<'a> {
    /// The model asked for.
    pub fn model(&self) -> &'a str {
        self.body.get("model").and_then(Value::as_str).unwrap_or("claude-test")
    }

    /// Whether the client wants server-sent events.
    pub fn stream(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool).unwrap_or(false)
    }

    /// The messages, in order.
    pub fn messages(&self) -> &'a [Value] {
        self.body.get("messages").and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    /// Whether the client offers a tool of this name.
    pub fn offers_tool(&self, name: &str) -> bool {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .is_some_and(|tools| tools.iter().any(|t| t.get("name") == Some(&json!(name))))
    }

    /// The `tool_result` blocks of the last user message.
    pub fn tool_results(&self) -> Vec<ToolResult> {
        let Some(last_user) =
            self.messages().iter().rev().find(|m| m.get("role") == Some(&json!("user")))
        else {
            return Vec::new();
        };
        let Some(blocks) = last_user.get("content").and_then(Value::as_array) else {
            return Vec::new();
        };
        blocks
            .iter()
            .filter(|b| b.get("type") == Some(&json!("tool_result")))
            .map(|b| ToolResult {
                tool_use_id: b.get("tool_use_id").and_then(Value::as_str).unwrap_or("").to_owned(),
                content: text_of(b.get("content")),
                is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            })
            .collect()
    }

    /// The text of every user message, joined (the prompt is in there).
    pub fn user_text(&self) -> String {
        self.messages()
            .iter()
            .filter(|m| m.get("role") == Some(&json!("user")))
            .map(|m| text_of(m.get("content")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A string, or the text parts of an array of blocks.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// One content block of a scripted reply.
#[derive(Debug, Clone)]
pub enum Block {
    /// Text.
    Text(String),
    /// A tool call; the server gives it a fresh id.
    ToolUse {
        /// The tool (`Bash`, `Edit`, …).
        name: String,
        /// Its input.
        input: Value,
    },
}

/// A scripted assistant message.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its content blocks.
    pub content: Vec<Block>,
    /// `end_turn`, `tool_use`, `max_tokens`, …
    pub stop_reason: String,
}

impl Reply {
    /// A message that is just `text` and ends the turn.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply { content: vec![Block::Text(text.into())], stop_reason: "end_turn".into() }
    }

    /// A message that calls one tool.
    pub fn tool_use(name: impl Into<String>, input: Value) -> Reply {
        Reply {
            content: vec![Block::ToolUse { name: name.into(), input }],
            stop_reason: "tool_use".into(),
        }
    }
}

/// What the server answers to one Messages API call.
#[derive(Debug, Clone)]
pub enum Answer {
    /// An assistant message.
    Message(Reply),
    /// An API error: HTTP status, error type (`overloaded_error`, …) and
    /// message.
    Error {
        /// HTTP status.
        status: u16,
        /// The API's error type.
        kind: String,
        /// Its message.
        message: String,
    },
}

/// Decides the answer to each Messages API call.
pub trait Script: Send + Sync + 'static {
    /// The answer to `request`.
    fn answer(&self, request: &Conversation<'_>) -> Answer;
}

impl<F> Script for F
where
    F: Fn(&Conversation<'_>) -> Answer + Send + Sync + 'static,
{
    fn answer(&self, request: &Conversation<'_>) -> Answer {
        self(request)
    }
}

struct Shared {
    script: Box<dyn Script>,
    requests: Mutex<Vec<Recorded>>,
    next_id: AtomicU64,
}

impl Shared {
    fn id(&self, prefix: &str) -> String {
        format!("{prefix}_{:024}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// The running server; stops when dropped.
pub struct MessagesApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl MessagesApi {
    /// Starts the server on `127.0.0.1:0` with `script`.
    pub async fn start(script: impl Script) -> MessagesApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MessagesApi { addr, shared, task }
    }

    /// `ANTHROPIC_BASE_URL` for the client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The environment that runs Claude Code (the CLI, or the one inside an
/// ACP agent) offline against `base_url`, with `HOME`, `CLAUDE_CONFIG_DIR`
/// (`home/.claude`), the XDG directories and its temporary directory
/// (`home/tmp`) inside `home`, telemetry, error reporting, update checks and
/// all other non-essential traffic off. An empty `api_key` unsets
/// `ANTHROPIC_API_KEY`, whatever the environment running the test says.
pub fn offline_env(home: &Path, base_url: String, api_key: &str) -> Vec<(&'static str, String)> {
    let tmp = home.join("tmp").display().to_string();
    vec![
        ("HOME", home.display().to_string()),
        ("CLAUDE_CONFIG_DIR", home.join(".claude").display().to_string()),
        ("XDG_CONFIG_HOME", home.join(".config").display().to_string()),
        ("XDG_CACHE_HOME", home.join(".cache").display().to_string()),
        ("XDG_DATA_HOME", home.join(".local/share").display().to_string()),
        ("XDG_STATE_HOME", home.join(".local/state").display().to_string()),
        ("TMPDIR", tmp.clone()),
        ("CLAUDE_CODE_TMPDIR", tmp),
        ("ANTHROPIC_BASE_URL", base_url),
        ("ANTHROPIC_API_KEY", api_key.to_owned()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
        ("DISABLE_TELEMETRY", "1".to_owned()),
        ("DISABLE_ERROR_REPORTING", "1".to_owned()),
        ("DISABLE_AUTOUPDATER", "1".to_owned()),
    ]
}

/// A TOML basic string (JSON's escaping is a subset of TOML's).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `env` as the entries of an executor's `env = [...]` in `config.toml`.
pub fn toml_env(env: &[(&str, String)]) -> String {
    env.iter()
        .map(|(k, v)| format!("[{}, {}]", toml_str(k), toml_str(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Drop for MessagesApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        path: uri.path_and_query().map_or_else(|| uri.path().to_owned(), ToString::to_string),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    shared.requests.lock().unwrap_or_else(PoisonError::into_inner).push(recorded.clone());

    match (method.as_str(), uri.path()) {
        ("POST", "/v1/messages") => {}
        ("POST", "/v1/messages/count_tokens") => {
            // About four bytes a token, as good as a test needs.
            let tokens = recorded.body.to_string().len() / 4;
            return json_response(&json!({ "input_tokens": tokens }));
        }
        ("GET", "/v1/models") => {
            return json_response(&json!({
                "data": [{"type": "model", "id": "claude-test", "display_name": "Claude Test",
                          "created_at": "2025-01-01T00:00:00Z"}],
                "has_more": false, "first_id": "claude-test", "last_id": "claude-test",
            }));
        }
        _ => return api_error(404, "not_found_error", &format!("no route {method} {uri}")),
    }

    let conversation = recorded.conversation();
    let reply = match shared.script.answer(&conversation) {
        Answer::Message(reply) => reply,
        Answer::Error { status, kind, message } => return api_error(status, &kind, &message),
    };
    let message_id = shared.id("msg");
    let blocks: Vec<Value> = reply
        .content
        .iter()
        .map(|block| match block {
            Block::Text(text) => json!({"type": "text", "text": text}),
            Block::ToolUse { name, input } => {
                json!({"type": "tool_use", "id": shared.id("toolu"), "name": name, "input": input})
            }
        })
        .collect();
    let model = conversation.model();
    let input_tokens = recorded.body.to_string().len() / 4;
    let output_tokens = blocks.iter().map(|b| b.to_string().len() / 4 + 1).sum::<usize>();
    if !conversation.stream() {
        return json_response(&json!({
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": reply.stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }));
    }

    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }}),
    )];
    for (index, block) in blocks.iter().enumerate() {
        events.extend(block_events(index, block));
    }
    events.push((
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": reply.stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let stream = futures_util::stream::iter(events.into_iter().map(|(name, data)| {
        Ok::<_, Infallible>(Event::default().event(name).data(data.to_string()))
    }));
    Sse::new(stream).into_response()
}

/// The events of one content block: start (empty), deltas, stop.
fn block_events(index: usize, block: &Value) -> Vec<(&'static str, Value)> {
    let mut events = Vec::new();
    let (start, fragments, delta_kind, field) = match block.get("type").and_then(Value::as_str) {
        Some("tool_use") => (
            json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
            chunks(&block["input"].to_string()),
            "input_json_delta",
            "partial_json",
        ),
        _ => (
            json!({"type": "text", "text": ""}),
            chunks(block.get("text").and_then(Value::as_str).unwrap_or("")),
            "text_delta",
            "text",
        ),
    };
    events.push((
        "content_block_start",
        json!({"type": "content_block_start", "index": index, "content_block": start}),
    ));
    for fragment in fragments {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                   "delta": {"type": delta_kind, field: fragment}}),
        ));
    }
    events.push(("content_block_stop", json!({"type": "content_block_stop", "index": index})));
    events
}

/// `text` in pieces of about [`DELTA_CHUNK`] bytes, split on character
/// boundaries.
fn chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if current.len() >= DELTA_CHUNK {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn json_response(body: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn api_error(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
