//! Round trips for every codec in tandem-proto: an arbitrary *valid* value,
//! encoded and decoded again, is the value it started as — for relay frames,
//! envelopes, record contents, QR payloads and pairing links, application
//! messages, device info, identities and error codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashSet};

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use tandem_proto::content::{Content, MAX_REASON_LEN};
use tandem_proto::envelope::{Envelope, MAX_NOISE_LEN, RECORD_HEADER_LEN, TAG_LEN, record_header};
use tandem_proto::frame::{MAX_ERROR_MESSAGE_LEN, MAX_FRAME_LEN, MAX_PAYLOAD_LEN, VERSION};
use tandem_proto::message::{
    Decoded, DeviceInfo, FinishStatus, KNOWN_EVENT_TYPES, KNOWN_KINDS, MAX_DEVICE_NAME_CHARS,
    MAX_MESSAGE_LEN, Message, MessageError, TaskEvent,
};
use tandem_proto::qr::{
    MAX_RELAY_URL_LEN, PairingLink, QR_FIXED_LEN, QrError, QrPayload, link_segments,
};
use tandem_proto::{DeviceId, ErrorCode, Frame, FrameError, FrameType, PublicKey, Role};

// ---------------------------------------------------------------------------
// Shared strategies
// ---------------------------------------------------------------------------

/// `n` bytes of a cheap pattern: big payloads without generating (and
/// shrinking) tens of thousands of independent bytes.
fn patterned(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| seed ^ (i % 251) as u8).collect()
}

/// Bytes of length up to `max`: usually short and fully random, now and then
/// long (patterned), and sometimes exactly `max`.
fn sized_bytes(min: usize, max: usize) -> impl Strategy<Value = Vec<u8>> {
    let short_max = (min + 64).min(max);
    prop_oneof![
        16 => vec(any::<u8>(), min..=short_max),
        1 => (min..=max, any::<u8>()).prop_map(|(n, seed)| patterned(n, seed)),
        1 => any::<u8>().prop_map(move |seed| patterned(max, seed)),
    ]
}

/// Any string of up to `max_chars` chars (any Unicode scalar, controls included).
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max_chars).prop_map(String::from_iter)
}

/// Any string of at most `max_bytes` bytes of UTF-8: random chars, or
/// printable ASCII filling the limit exactly.
fn text_within(max_bytes: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        text(max_bytes / 4),
        "[ -~]{0,64}".prop_map(move |s| s.chars().take(max_bytes).collect()),
        Just("x".repeat(max_bytes)),
        // Multi-byte chars right up against the limit.
        Just("é".repeat(max_bytes / 2)),
    ]
}

/// A string without control characters, at most `max_chars` chars and `max_bytes` bytes.
fn clean_text(max_chars: usize, max_bytes: usize) -> impl Strategy<Value = String> {
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

fn device_id() -> impl Strategy<Value = DeviceId> {
    any::<[u8; 16]>().prop_map(DeviceId)
}

fn public_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(PublicKey)
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Desktop), Just(Role::Phone)]
}

/// Known codes and unknown ones alike.
fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        proptest::sample::select(ErrorCode::ALL.to_vec()),
        any::<u16>().prop_map(ErrorCode::from_code),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    sized_bytes(0, MAX_PAYLOAD_LEN)
}

/// Every `Frame` variant, with every field over its whole valid range.
fn frame() -> impl Strategy<Value = Frame> {
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
        (device_id(), any::<u32>(), any::<u32>()).prop_map(
            |(device_id, queued, ping_interval_ms)| Frame::AuthOk {
                device_id,
                queued,
                ping_interval_ms,
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
        (error_code(), any::<u64>(), text_within(MAX_ERROR_MESSAGE_LEN))
            .prop_map(|(code, ref_id, message)| Frame::Error { code, ref_id, message }),
        any::<u32>().prop_map(|reconnect_after_ms| Frame::Restarting { reconnect_after_ms }),
    ]
}

fn noise() -> impl Strategy<Value = Vec<u8>> {
    sized_bytes(1, MAX_NOISE_LEN)
}

/// Every `Envelope` variant: non-empty Noise messages within Noise's limit,
/// record ciphertexts at least a tag long.
fn envelope() -> impl Strategy<Value = Envelope> {
    prop_oneof![
        noise().prop_map(|noise| Envelope::PairHello { noise }),
        noise().prop_map(|noise| Envelope::PairWelcome { noise }),
        (any::<[u8; 8]>(), noise())
            .prop_map(|(handshake_id, noise)| Envelope::SessionInit { handshake_id, noise }),
        (any::<[u8; 8]>(), noise())
            .prop_map(|(handshake_id, noise)| Envelope::SessionAccept { handshake_id, noise }),
        (any::<[u8; 8]>(), any::<u64>(), sized_bytes(TAG_LEN, MAX_PAYLOAD_LEN)).prop_map(
            |(session_id, counter, ciphertext)| Envelope::Record {
                session_id,
                counter,
                ciphertext,
            }
        ),
    ]
}

/// Every `Content` variant.
fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>(), sized_bytes(0, MAX_MESSAGE_LEN))
            .prop_map(|(seq, oldest, ack, message)| Content::Data { seq, oldest, ack, message }),
        any::<u64>().prop_map(|ack| Content::Ack { ack }),
        any::<u64>().prop_map(|expected| Content::Nack { expected }),
        Just(Content::PairConfirm),
        (any::<bool>(), any::<[u8; 32]>(), text_within(MAX_REASON_LEN)).prop_map(
            |(accepted, session_psk, reason)| Content::PairResult { accepted, session_psk, reason }
        ),
    ]
}

/// A valid relay URL: `https://host[:port]` with a host from the allowed
/// characters (names, IPv4, bracketed IPv6), or `http://` with a host on the
/// local network; at most `MAX_RELAY_URL_LEN` bytes.
fn relay_url() -> impl Strategy<Value = String> {
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
    (prop_oneof![3 => public, 1 => local], proptest::option::of(any::<u16>())).prop_map(
        |((scheme, host), port)| {
            let mut url = match port {
                Some(p) => format!("{scheme}{host}:{p}"),
                None => format!("{scheme}{host}"),
            };
            url.truncate(MAX_RELAY_URL_LEN);
            url
        },
    )
}

fn qr_payload() -> impl Strategy<Value = QrPayload> {
    (public_key(), any::<[u8; 32]>(), any::<u32>(), proptest::option::of(relay_url())).prop_map(
        |(desktop, secret, expires_at, relay)| QrPayload { desktop, secret, expires_at, relay },
    )
}

/// JSON without floats (which need not survive a text round trip bit for bit).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text(8).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(6), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn tool_input() -> impl Strategy<Value = Value> {
    prop_oneof![text(16).prop_map(|s| json!({ "k": s })), json_value(),]
}

fn finish_status() -> impl Strategy<Value = FinishStatus> {
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

/// Every `TaskEvent` variant.
fn task_event() -> impl Strategy<Value = TaskEvent> {
    prop_oneof![
        id().prop_map(|executor| TaskEvent::Accepted { executor }),
        text(64).prop_map(|text| TaskEvent::Progress { text }),
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
        (id(), any::<bool>(), id()).prop_map(|(approval_id, allow, by)| {
            TaskEvent::ApprovalResolved { approval_id, allow, by }
        }),
        (finish_status(), text(64))
            .prop_map(|(status, summary)| TaskEvent::Finished { status, summary }),
    ]
}

/// A `DeviceInfo` within its limits: name ≤ 64 chars, platform and app
/// version ≤ 32 bytes, no control characters anywhere.
fn device_info() -> impl Strategy<Value = DeviceInfo> {
    (clean_text(MAX_DEVICE_NAME_CHARS, usize::MAX), clean_text(32, 32), clean_text(32, 32))
        .prop_map(|(name, platform, app_version)| DeviceInfo { name, platform, app_version })
}

/// Every `Message` variant.
fn message() -> impl Strategy<Value = Message> {
    let opt = || proptest::option::of(id());
    prop_oneof![
        (id(), text(64), opt(), opt()).prop_map(|(task_id, text, workspace, executor)| {
            Message::TaskSubmit { task_id, text, workspace, executor }
        }),
        (id(), text(64)).prop_map(|(task_id, text)| Message::FollowUp { task_id, text }),
        id().prop_map(|task_id| Message::Cancel { task_id }),
        (id(), id(), any::<bool>()).prop_map(|(task_id, approval_id, allow)| {
            Message::ApprovalDecision { task_id, approval_id, allow }
        }),
        (opt(), any::<u64>())
            .prop_map(|(task_id, from_offset)| Message::HistoryRequest { task_id, from_offset }),
        (id(), any::<u64>(), any::<u64>(), task_event()).prop_map(
            |(task_id, offset, at_ms, event)| Message::TaskEvent { task_id, offset, at_ms, event }
        ),
        (id(), any::<u64>())
            .prop_map(|(task_id, next_offset)| Message::HistoryEnd { task_id, next_offset }),
        (id(), any::<u64>(), any::<u64>()).prop_map(|(task_id, requested_from, earliest)| {
            Message::HistoryUnavailable { task_id, requested_from, earliest }
        }),
        device_info().prop_map(Message::DeviceInfo),
        (opt(), id(), text(64)).prop_map(|(task_id, code, message)| Message::Refused {
            task_id,
            code,
            message,
        }),
    ]
}

/// The longest prefix of `s` of at most `max` bytes ending on a char boundary.
fn utf8_prefix(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Draw `n` values from `strategy` with a deterministic runner.
fn sample<S: Strategy>(strategy: &S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n).map(|_| strategy.new_tree(&mut runner).expect("strategy").current()).collect()
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frames_round_trip(frame in frame()) {
        let bytes = frame.encode().expect("a valid frame encodes");
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        prop_assert_eq!(bytes[0], VERSION);
        prop_assert_eq!(bytes[1], frame.frame_type() as u8);
        prop_assert_eq!(Frame::decode(&bytes), Ok(frame));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn error_frame_messages_over_the_limit_decode_as_their_longest_char_boundary_prefix(
        code in error_code(),
        ref_id in any::<u64>(),
        message in prop_oneof![text(200), "[ -~]{250,400}"],
    ) {
        let bytes = Frame::Error { code, ref_id, message: message.clone() }
            .encode()
            .expect("error frames always encode");
        let expected = utf8_prefix(&message, MAX_ERROR_MESSAGE_LEN);
        prop_assert!(expected.len() <= MAX_ERROR_MESSAGE_LEN);
        prop_assert_eq!(Frame::decode(&bytes), Ok(Frame::Error { code, ref_id, message: expected }));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A sender can never emit a frame a receiver must refuse: encoding fails
    /// exactly when the payload is over `MAX_PAYLOAD_LEN`, and everything
    /// that encodes decodes.
    #[test]
    fn payload_frames_encode_exactly_up_to_the_size_limit(
        which in 0usize..4,
        len in (MAX_PAYLOAD_LEN - 40)..=(MAX_FRAME_LEN + 8),
        seed in any::<u8>(),
    ) {
        let payload = patterned(len, seed);
        let (frame, header) = match which {
            0 => (Frame::Send { send_id: 7, to: DeviceId([1; 16]), payload }, 2 + 8 + 16),
            1 => (Frame::Deliver { delivery_id: 7, from: DeviceId([1; 16]), payload }, 2 + 8 + 16),
            2 => (
                Frame::PairClaim { request_id: 7, pairing_id: [2; 16], payload },
                2 + 8 + 16,
            ),
            _ => (
                Frame::PairMessage { pairing_id: [2; 16], peer: DeviceId([1; 16]), payload },
                2 + 16 + 16,
            ),
        };
        // Every payload is capped at MAX_PAYLOAD_LEN (so a relay can always
        // re-frame what it accepted), which also keeps every frame within
        // MAX_FRAME_LEN.
        match frame.encode() {
            Ok(bytes) => {
                prop_assert!(len <= MAX_PAYLOAD_LEN);
                prop_assert!(header + len <= MAX_FRAME_LEN);
                prop_assert_eq!(bytes.len(), header + len);
                prop_assert_eq!(Frame::decode(&bytes), Ok(frame));
            }
            Err(e) => {
                prop_assert!(len > MAX_PAYLOAD_LEN);
                prop_assert_eq!(e, FrameError::TooLarge(header + len));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// An empty version range (`min > max`) is refused on the way out as it
    /// is on the way in; every other Hello round trips.
    #[test]
    fn hello_frames_encode_exactly_when_they_decode(
        min_version in any::<u8>(),
        max_version in any::<u8>(),
        role in role(),
    ) {
        let hello = Frame::Hello { min_version, max_version, role };
        let wire = [VERSION, FrameType::Hello as u8, min_version, max_version, role.to_byte()];
        match hello.encode() {
            Ok(bytes) => {
                prop_assert_eq!(&bytes[..], &wire[..]);
                prop_assert_eq!(Frame::decode(&bytes), Ok(hello));
            }
            Err(e) => {
                prop_assert!(min_version > max_version, "{:?}", e);
                let refused_as_hello =
                    matches!(e, FrameError::Malformed { kind: FrameType::Hello, .. });
                prop_assert!(refused_as_hello, "{:?}", e);
                prop_assert!(Frame::decode(&wire).is_err());
            }
        }
    }
}

#[test]
fn frame_strategy_covers_every_registered_frame_type() {
    let seen: HashSet<FrameType> = sample(&frame(), 2_000).iter().map(Frame::frame_type).collect();
    let all: HashSet<FrameType> = FrameType::ALL.iter().copied().collect();
    assert_eq!(seen, all, "the generator misses a frame type");
}

// ---------------------------------------------------------------------------
// Envelopes and record contents
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn envelopes_round_trip(envelope in envelope()) {
        let bytes = envelope.encode();
        if let Envelope::Record { session_id, counter, ciphertext } = &envelope {
            prop_assert_eq!(&bytes[..RECORD_HEADER_LEN], &record_header(session_id, *counter)[..]);
            prop_assert_eq!(bytes.len(), RECORD_HEADER_LEN + ciphertext.len());
        }
        prop_assert_eq!(Envelope::decode(&bytes), Ok(envelope));
    }

    #[test]
    fn contents_round_trip(content in content()) {
        prop_assert_eq!(Content::decode(&content.encode()), Ok(content));
    }

    #[test]
    fn pair_result_reasons_over_the_limit_decode_as_their_longest_char_boundary_prefix(
        accepted in any::<bool>(),
        session_psk in any::<[u8; 32]>(),
        reason in prop_oneof![text(200), "[ -~]{250,400}"],
    ) {
        let bytes = Content::PairResult { accepted, session_psk, reason: reason.clone() }.encode();
        let expected = utf8_prefix(&reason, MAX_REASON_LEN);
        prop_assert_eq!(
            Content::decode(&bytes),
            Ok(Content::PairResult { accepted, session_psk, reason: expected })
        );
    }
}

#[test]
fn envelope_and_content_strategies_cover_every_variant() {
    let kinds: HashSet<u8> = sample(&envelope(), 500).iter().map(|e| e.encode()[1]).collect();
    assert_eq!(kinds, HashSet::from([1, 2, 3, 4, 5]));
    let types: HashSet<u8> = sample(&content(), 500).iter().map(|c| c.encode()[0]).collect();
    assert_eq!(types, HashSet::from([0x01, 0x02, 0x03, 0x10, 0x11]));
}

// ---------------------------------------------------------------------------
// QR payloads and pairing links
// ---------------------------------------------------------------------------

/// A link base the parser accepts: `http(s)://host[:port]` and a path of
/// `[A-Za-z0-9/_.~-]`, starting with `/` when present.
fn link_base() -> impl Strategy<Value = (String, String)> {
    (relay_url(), "(/[A-Za-z0-9_.~-]{0,8}){0,3}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn qr_payloads_round_trip(payload in qr_payload()) {
        let bytes = payload.encode();
        let relay_len = payload.relay.as_ref().map_or(0, |r| 1 + r.len());
        prop_assert_eq!(bytes.len(), QR_FIXED_LEN + relay_len);
        prop_assert_eq!(QrPayload::decode(&bytes), Ok(payload));
    }

    #[test]
    fn pairing_links_round_trip_until_they_expire(
        payload in qr_payload(),
        (origin, path) in link_base(),
        // How far from the expiry time the link is scanned, and on which side.
        delta in 0u64..=1_000_000,
        expired in any::<bool>(),
    ) {
        let base = format!("{origin}{path}");
        let link = payload.to_link(&base);
        let b32 = data_encoding::BASE32_NOPAD.encode(&payload.encode());
        // The payload goes in its own QR segment, in alphanumeric mode.
        let head = format!("{base}#");
        prop_assert_eq!(link_segments(&link), Some((head.as_str(), b32.as_str())));
        let expires = u64::from(payload.expires_at);
        if expired || expires == 0 {
            let now = expires + delta;
            prop_assert_eq!(
                PairingLink::parse(&link, now),
                Err(QrError::Expired { ago_secs: delta })
            );
        } else {
            let now = expires.saturating_sub(delta.max(1));
            let parsed = PairingLink::parse(&link, now).expect("a fresh link parses");
            prop_assert_eq!(&parsed.origin, &origin);
            prop_assert_eq!(&parsed.path, &path);
            prop_assert_eq!(parsed.relay_origin(), payload.relay.as_deref().unwrap_or(&origin));
            prop_assert_eq!(&parsed.payload, &payload);
            // A scanner that lower-cases the payload changes nothing.
            let lower = format!("{base}#{}", b32.to_ascii_lowercase());
            prop_assert_eq!(PairingLink::parse(&lower, now), Ok(parsed));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `MAX_RELAY_URL_LEN` is the longest relay URL a payload may carry, and
    /// the encoder enforces it (by truncating). The decoder must enforce it
    /// too, or a payload it accepts does not survive being encoded again.
    #[test]
    fn qr_decode_refuses_relay_urls_over_the_limit(
        fixed in vec(any::<u8>(), QR_FIXED_LEN - 1),
        host_len in (MAX_RELAY_URL_LEN - 8 + 1)..=(255 - 8),
    ) {
        let url = format!("https://{}", "a".repeat(host_len));
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&fixed);
        bytes.push(u8::try_from(url.len()).expect("≤ 255"));
        bytes.extend_from_slice(url.as_bytes());
        match QrPayload::decode(&bytes) {
            Err(_) => {}
            Ok(p) => {
                let again = p.encode();
                prop_assert_eq!(
                    again,
                    bytes,
                    "decode accepted a {}-byte relay URL that encode cannot reproduce",
                    url.len()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Application messages
// ---------------------------------------------------------------------------

/// The wire tag of a message and, for task events, of its event.
fn tags(m: &Message) -> (&'static str, Option<&'static str>) {
    let kind = match m {
        Message::TaskSubmit { .. } => "task_submit",
        Message::FollowUp { .. } => "follow_up",
        Message::Cancel { .. } => "cancel",
        Message::ApprovalDecision { .. } => "approval_decision",
        Message::HistoryRequest { .. } => "history_request",
        Message::TaskEvent { .. } => "task_event",
        Message::HistoryEnd { .. } => "history_end",
        Message::HistoryUnavailable { .. } => "history_unavailable",
        Message::DeviceInfo(_) => "device_info",
        Message::Refused { .. } => "refused",
    };
    let event = match m {
        Message::TaskEvent { event, .. } => Some(match event {
            TaskEvent::Accepted { .. } => "accepted",
            TaskEvent::Progress { .. } => "progress",
            TaskEvent::ToolCall { .. } => "tool_call",
            TaskEvent::ToolResult { .. } => "tool_result",
            TaskEvent::ApprovalRequest { .. } => "approval_request",
            TaskEvent::ApprovalResolved { .. } => "approval_resolved",
            TaskEvent::Finished { .. } => "finished",
        }),
        _ => None,
    };
    (kind, event)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn messages_round_trip(message in message()) {
        let bytes = message.encode().expect("a small message encodes");
        prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
        // Wire shape: schema version 1 and a kind (and event type) this build
        // lists as known, so the decoder never reports its own output as Unknown.
        let wire: Value = serde_json::from_slice(&bytes).expect("JSON");
        let (kind, event) = tags(&message);
        prop_assert_eq!(&wire["v"], &json!(1));
        prop_assert_eq!(&wire["kind"], &json!(kind));
        prop_assert!(KNOWN_KINDS.contains(&kind));
        if let Some(ty) = event {
            prop_assert_eq!(&wire["event"]["type"], &json!(ty));
            prop_assert!(KNOWN_EVENT_TYPES.contains(&ty));
        }
        prop_assert_eq!(Message::decode(&bytes), Ok(Decoded::Known(message)));
    }

    #[test]
    fn device_info_round_trips_standalone(info in device_info()) {
        let bytes = info.to_json();
        let wire: Value = serde_json::from_slice(&bytes).expect("JSON");
        prop_assert_eq!(&wire["v"], &json!(1));
        prop_assert_eq!(DeviceInfo::from_json(&bytes), Ok(info));
    }

    #[test]
    fn device_info_over_its_limits_is_refused_standalone_and_as_a_message(
        info in device_info(),
        field in 0usize..3,
        how in 0usize..3,
        control in prop_oneof![0u32..0x20, 0x7fu32..0xa0].prop_map(|c| char::from_u32(c).expect("char")),
        at in any::<proptest::sample::Index>(),
    ) {
        let mut bad = info;
        let s = match field {
            0 => &mut bad.name,
            1 => &mut bad.platform,
            _ => &mut bad.app_version,
        };
        match how {
            // One char (or byte) over the limit.
            0 if field == 0 => *s = "n".repeat(MAX_DEVICE_NAME_CHARS + 1),
            0 => *s = "p".repeat(33),
            // A control character anywhere.
            _ => {
                let boundaries: Vec<usize> = s
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain(std::iter::once(s.len()))
                    .collect();
                s.insert(*at.get(&boundaries), control);
            }
        }
        prop_assert!(DeviceInfo::from_json(&bad.to_json()).is_err());
        // Refused when encoding, so a sender never emits what a receiver refuses…
        prop_assert!(matches!(Message::DeviceInfo(bad.clone()).encode(), Err(MessageError::TooLarge(_))));
        // …and when decoding bytes from a peer that did not check.
        let mut v = serde_json::to_value(&bad).unwrap();
        v["v"] = 1.into();
        v["kind"] = "device_info".into();
        let bytes = serde_json::to_vec(&v).unwrap();
        prop_assert!(matches!(Message::decode(&bytes), Err(MessageError::TooLarge(_))));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Encoding refuses exactly the messages whose JSON is over
    /// `MAX_MESSAGE_LEN`, and everything it accepts decodes.
    #[test]
    fn messages_encode_exactly_up_to_the_size_limit(
        len in (MAX_MESSAGE_LEN - 120)..=(MAX_MESSAGE_LEN + 8),
    ) {
        let progress = |text: String| Message::TaskEvent {
            task_id: "t".into(),
            offset: 1,
            at_ms: 2,
            event: TaskEvent::Progress { text },
        };
        let overhead = progress(String::new()).encode().expect("small").len();
        let m = progress("x".repeat(len));
        match m.encode() {
            Ok(bytes) => {
                prop_assert_eq!(bytes.len(), overhead + len);
                prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
                prop_assert_eq!(Message::decode(&bytes), Ok(Decoded::Known(m)));
            }
            Err(e) => {
                prop_assert!(matches!(e, MessageError::TooLarge(_)));
                prop_assert!(overhead + len > MAX_MESSAGE_LEN);
            }
        }
    }
}

#[test]
fn message_strategy_covers_every_kind_and_event_type() {
    let mut kinds = BTreeMap::new();
    for m in sample(&message(), 3_000) {
        let (kind, event) = tags(&m);
        kinds.insert(kind, ());
        if let Some(e) = event {
            kinds.insert(e, ());
        }
    }
    for k in KNOWN_KINDS.iter().chain(KNOWN_EVENT_TYPES) {
        assert!(kinds.contains_key(k), "the generator never produced {k}");
    }
}

// ---------------------------------------------------------------------------
// Identities and error codes
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn device_ids_round_trip_through_text(id in device_id()) {
        let s = id.to_string();
        prop_assert_eq!(s.len(), 26);
        prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        prop_assert_eq!(s.parse::<DeviceId>(), Ok(id));
    }

    #[test]
    fn public_keys_round_trip_through_text(key in public_key()) {
        let s = key.to_string();
        prop_assert_eq!(s.len(), 43);
        prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(s.parse::<PublicKey>(), Ok(key));
    }

    #[test]
    fn roles_round_trip_through_their_wire_byte(role in role()) {
        prop_assert_eq!(Role::from_byte(role.to_byte()), Some(role));
    }
}

#[test]
fn error_codes_round_trip_for_every_u16() {
    for code in 0..=u16::MAX {
        let e = ErrorCode::from_code(code);
        assert_eq!(e.code(), code);
        let known = ErrorCode::ALL.contains(&e);
        assert_eq!(known, !matches!(e, ErrorCode::Other(_)), "code {code}");
    }
}

#[test]
fn close_codes_round_trip_for_every_u16() {
    for close in 0..=u16::MAX {
        match ErrorCode::from_close_code(close) {
            Some(e) => {
                assert!((4000..5000).contains(&close));
                assert_eq!(e.close_code(), close);
            }
            None => assert!(!(4000..5000).contains(&close), "close code {close}"),
        }
    }
}

#[test]
fn error_codes_round_trip_through_serde_for_every_u16() {
    for code in 0..=u16::MAX {
        let e = ErrorCode::from_code(code);
        let json = serde_json::to_string(&e).expect("serialize");
        assert_eq!(serde_json::from_str::<ErrorCode>(&json).expect("deserialize"), e);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `ErrorCode::Other` is public, so `Other(5)` can be built although 5 is
    /// `AuthFailed`. It goes on the wire as 5 and comes back as `AuthFailed`,
    /// which compares unequal: a valid value that does not round trip.
    #[test]
    fn error_frames_round_trip_even_when_a_known_code_is_built_as_other(
        known in proptest::sample::select(ErrorCode::ALL.to_vec()),
        ref_id in any::<u64>(),
    ) {
        let frame = Frame::Error { code: ErrorCode::Other(known.code()), ref_id, message: String::new() };
        let bytes = frame.encode().expect("encodes");
        prop_assert_eq!(Frame::decode(&bytes), Ok(frame));
    }
}
