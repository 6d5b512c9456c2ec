//! Proptest strategies shared by the property tests (`roundtrip.rs`,
//! `never_panics.rs`).
//!
//! Where the suites want different values on purpose, there are two
//! generators with names that say how they differ:
//!
//! - `frame`, `envelope`, `content` cover every field over its whole valid
//!   range (payloads up to their size limits); `small_frame`,
//!   `small_envelope`, `small_content` are valid too but small, for tests
//!   that mutate encodings (mutating huge payloads only slows them down).
//! - `valid_relay_url` / `valid_qr_payload` only produce relay URLs a QR
//!   payload may carry; `any_relay_url` / `any_qr_payload` also produce
//!   invalid ones (public `http://` hosts, random host characters).
//! - `float_free_json_value` survives a text round trip bit for bit;
//!   `any_json_value` includes floats.

#![allow(dead_code, unreachable_pub)]

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Value, json};
use tandem_proto::content::{Content, MAX_REASON_LEN};
use tandem_proto::envelope::{Envelope, MAX_NOISE_LEN, TAG_LEN};
use tandem_proto::frame::{MAX_ERROR_MESSAGE_LEN, MAX_OK_RUNS, MAX_PAYLOAD_LEN, OkRun};
use tandem_proto::message::{
    DeviceInfo, ExecutorChoice, FinishStatus, MAX_DEVICE_NAME_CHARS, MAX_MESSAGE_LEN, Message,
    ProjectChoice, SessionSummary, TaskEvent, TaskState, TaskSummary,
};
use tandem_proto::qr::{MAX_RELAY_URL_LEN, QrPayload};
use tandem_proto::{DeviceId, ErrorCode, Frame, PublicKey, Role};

// ---------------------------------------------------------------------------
// Bytes and text
// ---------------------------------------------------------------------------

/// `n` bytes of a cheap pattern: big payloads without generating (and
/// shrinking) tens of thousands of independent bytes.
pub fn patterned(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| seed ^ (i % 251) as u8).collect()
}

/// Bytes of length up to `max`: usually short and fully random, now and then
/// long (patterned), and sometimes exactly `max`.
pub fn sized_bytes(min: usize, max: usize) -> impl Strategy<Value = Vec<u8>> {
    let short_max = (min + 64).min(max);
    prop_oneof![
        16 => vec(any::<u8>(), min..=short_max),
        1 => (min..=max, any::<u8>()).prop_map(|(n, seed)| patterned(n, seed)),
        1 => any::<u8>().prop_map(move |seed| patterned(max, seed)),
    ]
}

/// A short payload: fewer than 48 random bytes.
pub fn small_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..48)
}

/// Any string of up to `max_chars` chars (any Unicode scalar, controls included).
pub fn text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max_chars).prop_map(String::from_iter)
}

/// Any string of at most `max_bytes` bytes of UTF-8: random chars, or
/// printable ASCII filling the limit exactly.
pub fn text_within(max_bytes: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        text(max_bytes / 4),
        "[ -~]{0,64}".prop_map(move |s| s.chars().take(max_bytes).collect()),
        Just("x".repeat(max_bytes)),
        // Multi-byte chars right up against the limit.
        Just("é".repeat(max_bytes / 2)),
    ]
}

/// A string without control characters, at most `max_chars` chars and `max_bytes` bytes.
pub fn clean_text(max_chars: usize, max_bytes: usize) -> impl Strategy<Value = String> {
    vec(any::<char>().prop_filter("control", |c| !c.is_control()), 0..=max_chars).prop_map(
        move |cs| {
            let mut s = String::new();
            for c in cs {
                if s.len() + c.len_utf8() > max_bytes {
                    break;
                }
                s.push(c);
            }
            s
        },
    )
}

// ---------------------------------------------------------------------------
// Identities and codes
// ---------------------------------------------------------------------------

pub fn device_id() -> impl Strategy<Value = DeviceId> {
    any::<[u8; 16]>().prop_map(DeviceId)
}

pub fn public_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(PublicKey)
}

pub fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Desktop), Just(Role::Phone)]
}

/// Known codes and unknown ones alike.
pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        proptest::sample::select(ErrorCode::ALL.to_vec()),
        any::<u16>().prop_map(ErrorCode::from_code),
    ]
}

// ---------------------------------------------------------------------------
// Relay frames
// ---------------------------------------------------------------------------

/// Every `Frame` variant, with every field over its whole valid range:
/// payloads up to `MAX_PAYLOAD_LEN`, error messages up to `MAX_ERROR_MESSAGE_LEN`.
pub fn frame() -> impl Strategy<Value = Frame> {
    frame_with(|| sized_bytes(0, MAX_PAYLOAD_LEN), text_within(MAX_ERROR_MESSAGE_LEN))
}

/// Every `Frame` variant, valid, with short payloads and error messages.
pub fn small_frame() -> impl Strategy<Value = Frame> {
    frame_with(small_bytes, text(24))
}

/// Valid `Oks` runs: 1 to 8 of them (or, rarely, the most a frame holds),
/// any first id, any count ≥ 1, never past `u64::MAX`.
pub fn ok_runs() -> impl Strategy<Value = Vec<OkRun>> {
    let run = (any::<u64>(), 1..=u32::MAX)
        .prop_map(|(first, count)| OkRun { first: first.min(u64::MAX - u64::from(count)), count });
    prop_oneof![
        20 => vec(run.clone(), 1..=8),
        1 => vec(run, MAX_OK_RUNS..=MAX_OK_RUNS),
    ]
}

/// Every `Frame` variant, payloads from `payload` and error messages from `message`.
fn frame_with<P, M>(payload: impl Fn() -> P, message: M) -> impl Strategy<Value = Frame>
where
    P: Strategy<Value = Vec<u8>> + 'static,
    M: Strategy<Value = String> + 'static,
{
    prop_oneof![
        // A Hello's version range is never empty.
        (any::<u8>(), any::<u8>(), role()).prop_map(|(a, b, role)| {
            Frame::Hello { min_version: a.min(b), max_version: a.max(b), role }
        }),
        (public_key(), any::<[u8; 32]>(), "[a-z0-9.:-]{0,64}").prop_map(
            |(relay_ephemeral, nonce, relay_name)| Frame::Challenge {
                relay_ephemeral,
                nonce,
                relay_name
            }
        ),
        (public_key(), any::<[u8; 32]>())
            .prop_map(|(public_key, proof)| Frame::Auth { public_key, proof }),
        (device_id(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
            |(device_id, queued, ping_interval_ms, store_epoch)| Frame::AuthOk {
                device_id,
                queued,
                ping_interval_ms,
                store_epoch,
            }
        ),
        (any::<u64>(), device_id(), payload()).prop_map(|(send_id, to, payload)| Frame::Send {
            send_id,
            to,
            payload
        }),
        (any::<u64>(), device_id(), payload()).prop_map(|(delivery_id, from, payload)| {
            Frame::Deliver { delivery_id, from, payload }
        }),
        any::<u64>().prop_map(|up_to| Frame::Ack { up_to }),
        any::<u64>().prop_map(|ref_id| Frame::Ok { ref_id }),
        ok_runs().prop_map(|runs| Frame::Oks { runs }),
        (device_id(), any::<bool>()).prop_map(|(peer, online)| Frame::Presence { peer, online }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        (any::<u64>(), any::<[u8; 16]>(), any::<u16>()).prop_map(
            |(request_id, pairing_id, ttl_secs)| Frame::PairOpen {
                request_id,
                pairing_id,
                ttl_secs,
            }
        ),
        (any::<u64>(), any::<[u8; 16]>(), payload()).prop_map(
            |(request_id, pairing_id, payload)| Frame::PairClaim {
                request_id,
                pairing_id,
                payload,
            }
        ),
        (any::<[u8; 16]>(), device_id(), payload()).prop_map(|(pairing_id, peer, payload)| {
            Frame::PairMessage { pairing_id, peer, payload }
        }),
        (any::<u64>(), any::<[u8; 16]>())
            .prop_map(|(request_id, pairing_id)| { Frame::PairClose { request_id, pairing_id } }),
        (any::<u64>(), device_id())
            .prop_map(|(request_id, peer)| Frame::Authorize { request_id, peer }),
        (any::<u64>(), device_id())
            .prop_map(|(request_id, peer)| Frame::Revoke { request_id, peer }),
        (error_code(), any::<u64>(), message).prop_map(|(code, ref_id, message)| Frame::Error {
            code,
            ref_id,
            message
        }),
        any::<u32>().prop_map(|reconnect_after_ms| Frame::Restarting { reconnect_after_ms }),
        (any::<u64>(), any::<u8>(), payload()).prop_map(|(request_id, kind, data)| {
            Frame::PushSubscribe { request_id, kind, data }
        }),
        (any::<u64>(), device_id(), any::<u8>(), any::<[u8; 16]>(), payload()).prop_map(
            |(request_id, to, urgency, topic, mut blob)| {
                // A `Notify`'s header is 17 bytes longer than a `Send`'s.
                blob.truncate(MAX_PAYLOAD_LEN - 17);
                Frame::Notify { request_id, to, urgency, topic, blob }
            }
        ),
        any::<bool>().prop_map(|active| Frame::Active { active }),
    ]
}

// ---------------------------------------------------------------------------
// Envelopes and record contents
// ---------------------------------------------------------------------------

/// Every `Envelope` variant: non-empty Noise messages up to Noise's limit,
/// record ciphertexts from a tag long up to `MAX_PAYLOAD_LEN`.
pub fn envelope() -> impl Strategy<Value = Envelope> {
    envelope_with(|| sized_bytes(1, MAX_NOISE_LEN), sized_bytes(TAG_LEN, MAX_PAYLOAD_LEN))
}

/// Every `Envelope` variant, valid, with short Noise messages and ciphertexts.
pub fn small_envelope() -> impl Strategy<Value = Envelope> {
    envelope_with(|| vec(any::<u8>(), 1..48), vec(any::<u8>(), TAG_LEN..64))
}

/// Every `Envelope` variant, Noise messages from `noise`, record ciphertexts
/// from `ciphertext`.
fn envelope_with<N, C>(noise: impl Fn() -> N, ciphertext: C) -> impl Strategy<Value = Envelope>
where
    N: Strategy<Value = Vec<u8>>,
    C: Strategy<Value = Vec<u8>>,
{
    prop_oneof![
        noise().prop_map(|noise| Envelope::PairHello { noise }),
        noise().prop_map(|noise| Envelope::PairWelcome { noise }),
        (any::<[u8; 8]>(), noise())
            .prop_map(|(handshake_id, noise)| Envelope::SessionInit { handshake_id, noise }),
        (any::<[u8; 8]>(), noise())
            .prop_map(|(handshake_id, noise)| Envelope::SessionAccept { handshake_id, noise }),
        (any::<[u8; 8]>(), any::<u64>(), ciphertext).prop_map(
            |(session_id, counter, ciphertext)| Envelope::Record {
                session_id,
                counter,
                ciphertext,
            }
        ),
    ]
}

/// Every `Content` variant: messages up to `MAX_MESSAGE_LEN`, pairing
/// reasons up to `MAX_REASON_LEN`.
pub fn content() -> impl Strategy<Value = Content> {
    content_with(sized_bytes(0, MAX_MESSAGE_LEN), text_within(MAX_REASON_LEN))
}

/// Every `Content` variant, valid, with short messages and reasons.
pub fn small_content() -> impl Strategy<Value = Content> {
    content_with(small_bytes(), text(24))
}

/// Every `Content` variant, data messages from `message`, pairing reasons
/// from `reason`.
fn content_with<B, R>(message: B, reason: R) -> impl Strategy<Value = Content>
where
    B: Strategy<Value = Vec<u8>>,
    R: Strategy<Value = String>,
{
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>(), message)
            .prop_map(|(seq, oldest, ack, message)| Content::Data { seq, oldest, ack, message }),
        any::<u64>().prop_map(|ack| Content::Ack { ack }),
        any::<u64>().prop_map(|expected| Content::Nack { expected }),
        Just(Content::PairConfirm),
        (any::<bool>(), any::<[u8; 32]>(), reason).prop_map(|(accepted, session_psk, reason)| {
            Content::PairResult { accepted, session_psk, reason }
        }),
    ]
}

// ---------------------------------------------------------------------------
// Relay URLs and QR payloads
// ---------------------------------------------------------------------------

/// A valid relay URL: `https://host[:port]` with a host from the allowed
/// characters (names, IPv4, bracketed IPv6), or `http://` with a host on the
/// local network; at most `MAX_RELAY_URL_LEN` bytes.
pub fn valid_relay_url() -> impl Strategy<Value = String> {
    let public = prop_oneof![
        "[a-z0-9]([a-z0-9-]{0,20}\\.){0,3}[a-z]{2,6}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        "\\[[0-9a-f:]{2,39}\\]",
        "[A-Za-z0-9.:\\[\\]-]{1,130}",
    ]
    .prop_map(|h| ("https://", h));
    let local = prop_oneof![
        "192\\.168\\.[1-9][0-9]?\\.[1-9][0-9]?",
        "10\\.[1-9][0-9]?\\.[1-9][0-9]?\\.[1-9][0-9]?",
        Just("localhost".to_owned()),
        "[a-z]{1,12}\\.local",
        Just("[fd00::1]".to_owned()),
    ]
    .prop_map(|h| ("http://", h));
    (prop_oneof![3 => public, 1 => local], proptest::option::of(any::<u16>()))
        .prop_map(|((scheme, host), port)| relay_url_from(scheme, &host, port))
}

/// A relay-URL-like string that need not be valid: `https://` or `http://`
/// (public hosts included) and up to 40 random host characters, with an
/// optional port; at most `MAX_RELAY_URL_LEN` bytes.
pub fn any_relay_url() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("https://"), Just("http://")],
        "[A-Za-z0-9.:\\[\\]-]{1,40}",
        proptest::option::of(any::<u16>()),
    )
        .prop_map(|(scheme, host, port)| relay_url_from(scheme, &host, port))
}

/// `scheme` + `host` [+ `:port`], cut to `MAX_RELAY_URL_LEN` bytes.
fn relay_url_from(scheme: &str, host: &str, port: Option<u16>) -> String {
    let mut url = match port {
        Some(p) => format!("{scheme}{host}:{p}"),
        None => format!("{scheme}{host}"),
    };
    url.truncate(MAX_RELAY_URL_LEN);
    url
}

/// A QR payload whose relay URL, if any, is valid.
pub fn valid_qr_payload() -> impl Strategy<Value = QrPayload> {
    qr_payload_with(valid_relay_url())
}

/// A QR payload whose relay URL, if any, need not be valid.
pub fn any_qr_payload() -> impl Strategy<Value = QrPayload> {
    qr_payload_with(any_relay_url())
}

fn qr_payload_with(relay: impl Strategy<Value = String>) -> impl Strategy<Value = QrPayload> {
    (public_key(), any::<[u8; 32]>(), any::<u32>(), proptest::option::of(relay)).prop_map(
        |(desktop, secret, expires_at, relay)| QrPayload { desktop, secret, expires_at, relay },
    )
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

/// JSON without floats (which need not survive a text round trip bit for bit).
pub fn float_free_json_value() -> impl Strategy<Value = Value> {
    json_from(float_free_json_leaf())
}

/// Any JSON, floats included (as often as each other kind of leaf).
pub fn any_json_value() -> impl Strategy<Value = Value> {
    json_from(prop_oneof![
        5 => float_free_json_leaf(),
        1 => any::<f64>().prop_map(Value::from),
    ])
}

/// A JSON scalar other than a float: null, a bool, an integer or a short string.
pub fn float_free_json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text(8).prop_map(Value::String),
    ]
}

/// Arrays and objects (a few levels deep) of `leaf` values.
fn json_from(leaf: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Value> {
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(6), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------
// Application messages and device info
// ---------------------------------------------------------------------------

fn tool_input() -> impl Strategy<Value = Value> {
    prop_oneof![text(16).prop_map(|s| json!({ "k": s })), float_free_json_value(),]
}

pub fn finish_status() -> impl Strategy<Value = FinishStatus> {
    prop_oneof![
        Just(FinishStatus::Succeeded),
        Just(FinishStatus::Failed),
        Just(FinishStatus::Cancelled),
        Just(FinishStatus::Rejected),
    ]
}

fn id() -> impl Strategy<Value = String> {
    text(12)
}

fn task_summary() -> impl Strategy<Value = TaskSummary> {
    (
        id(),
        text(32),
        id(),
        0u8..3,
        proptest::option::of(finish_status()),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(task_id, title, executor, st, status, next_offset, updated_ms)| {
            TaskSummary {
                project: (next_offset % 2 == 0).then(|| title.clone()),
                task_id,
                title,
                executor,
                state: match st {
                    0 => TaskState::Queued,
                    1 => TaskState::Running,
                    _ => TaskState::Finished,
                },
                status,
                next_offset,
                updated_ms,
            }
        })
}

/// Every `TaskEvent` variant (tool inputs without floats).
pub fn task_event() -> impl Strategy<Value = TaskEvent> {
    prop_oneof![
        (
            id(),
            proptest::option::of(id()),
            proptest::option::of(text(64)),
            proptest::option::of(id())
        )
            .prop_map(|(executor, project, text, resumed)| TaskEvent::Accepted {
                executor,
                project,
                text,
                resumed
            }),
        text(64).prop_map(|text| TaskEvent::FollowUp { text }),
        text(64).prop_map(|text| TaskEvent::Progress { text }),
        (id(), id(), text(64), any::<u64>(), any::<u64>()).prop_map(
            |(call_id, path, diff, added, removed)| TaskEvent::Diff {
                call_id,
                path,
                diff,
                added,
                removed
            }
        ),
        (id(), id(), tool_input()).prop_map(|(call_id, name, input)| TaskEvent::ToolCall {
            call_id,
            name,
            input
        }),
        (id(), text(64), any::<bool>()).prop_map(|(call_id, output, is_error)| {
            TaskEvent::ToolResult { call_id, output, is_error }
        }),
        (id(), text(32), text(64), any::<u64>()).prop_map(
            |(approval_id, summary, detail, expires_at_ms)| TaskEvent::ApprovalRequest {
                approval_id,
                summary,
                detail,
                expires_at_ms,
            }
        ),
        (id(), any::<bool>(), id(), proptest::option::of(text(32))).prop_map(
            |(approval_id, allow, by, rule)| TaskEvent::ApprovalResolved {
                approval_id,
                allow,
                by,
                rule
            }
        ),
        (finish_status(), text(64), proptest::collection::vec(id(), 0..2)).prop_map(
            |(status, summary, names)| TaskEvent::Finished {
                status,
                summary,
                denied: names.clone(),
                failed: names.clone(),
                expired: names,
            }
        ),
    ]
}

/// A `DeviceInfo` within its limits: name ≤ 64 chars, platform and app
/// version ≤ 32 bytes, no control characters anywhere.
pub fn device_info() -> impl Strategy<Value = DeviceInfo> {
    (clean_text(MAX_DEVICE_NAME_CHARS, usize::MAX), clean_text(32, 32), clean_text(32, 32))
        .prop_map(|(name, platform, app_version)| DeviceInfo {
            name,
            platform,
            app_version,
            ephemeral: false,
        })
}

/// Every `Message` variant, each small enough to encode.
pub fn message() -> impl Strategy<Value = Message> {
    let opt = || proptest::option::of(id());
    prop_oneof![
        (id(), text(64), opt(), opt(), opt()).prop_map(
            |(task_id, text, workspace, executor, resume)| Message::TaskSubmit {
                task_id,
                text,
                workspace,
                executor,
                resume
            }
        ),
        (id(), text(64)).prop_map(|(task_id, text)| Message::FollowUp { task_id, text }),
        id().prop_map(|task_id| Message::Cancel { task_id }),
        (id(), id(), any::<bool>(), any::<bool>()).prop_map(
            |(task_id, approval_id, allow, remember)| Message::ApprovalDecision {
                task_id,
                approval_id,
                allow,
                remember
            }
        ),
        (opt(), opt())
            .prop_map(|(executor, workspace)| Message::SessionsRequest { executor, workspace }),
        (id(), opt(), proptest::collection::vec((id(), text(64), any::<u64>(), opt()), 0..3))
            .prop_map(|(executor, workspace, sessions)| Message::Sessions {
                executor,
                workspace,
                sessions: sessions
                    .into_iter()
                    .map(|(id, title, updated_ms, task_id)| SessionSummary {
                        id,
                        title,
                        updated_ms,
                        task_id
                    })
                    .collect(),
            }),
        (opt(), any::<u64>())
            .prop_map(|(task_id, from_offset)| Message::HistoryRequest { task_id, from_offset }),
        (id(), any::<u64>(), any::<u64>(), task_event()).prop_map(
            |(task_id, offset, at_ms, event)| Message::TaskEvent { task_id, offset, at_ms, event }
        ),
        (id(), any::<u64>()).prop_map(|(task_id, next_offset)| Message::HistoryEnd {
            task_id,
            next_offset,
            more: next_offset % 2 == 1,
        }),
        proptest::collection::vec(task_summary(), 0..3)
            .prop_map(|tasks| Message::TaskList { tasks }),
        (id(), any::<u64>(), any::<u64>()).prop_map(|(task_id, requested_from, earliest)| {
            Message::HistoryUnavailable { task_id, requested_from, earliest }
        }),
        device_info().prop_map(Message::DeviceInfo),
        any::<u64>().prop_map(|idle_secs| Message::Detached { idle_secs }),
        (opt(), id(), text(64)).prop_map(|(task_id, code, message)| Message::Refused {
            task_id,
            code,
            message,
        }),
        (any::<bool>(), opt(), opt(), proptest::option::of(any::<bool>())).prop_map(
            |(enabled, key_id, key, approvals)| Message::PushSetup {
                enabled,
                key_id,
                key: key.map(tandem_proto::message::Secret),
                approvals,
                finished: approvals.map(|a| !a),
                missing: None,
            }
        ),
        (
            proptest::collection::vec((id(), id()), 0..4),
            proptest::collection::vec(id(), 0..4),
            id(),
            opt(),
        )
            .prop_map(|(executors, projects, default_executor, default_project)| {
                Message::Choices {
                    executors: executors
                        .into_iter()
                        .map(|(name, kind)| ExecutorChoice { name, kind })
                        .collect(),
                    projects: projects.into_iter().map(|name| ProjectChoice { name }).collect(),
                    default_executor,
                    default_project,
                }
            }),
    ]
}
