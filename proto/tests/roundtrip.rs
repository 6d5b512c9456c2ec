//! Round trips for every codec in tandem-proto: an arbitrary *valid* value,
//! encoded and decoded again, is the value it started as — for relay frames,
//! envelopes, record contents, QR payloads and pairing links, application
//! messages, device info, identities and error codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashSet};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use tandem_proto::content::{Content, MAX_REASON_LEN};
use tandem_proto::envelope::{Envelope, RECORD_HEADER_LEN, record_header};
use tandem_proto::frame::{
    MAX_ERROR_MESSAGE_LEN, MAX_FRAME_LEN, MAX_OK_RUNS, MAX_PAYLOAD_LEN, OkRun, VERSION,
};
use tandem_proto::message::{
    Decoded, DeviceInfo, KNOWN_EVENT_TYPES, KNOWN_KINDS, MAX_DEVICE_NAME_CHARS, MAX_MESSAGE_LEN,
    Message, MessageError, TaskEvent,
};
use tandem_proto::qr::{
    MAX_RELAY_URL_LEN, PairingLink, QR_FIXED_LEN, QrError, QrPayload, link_segments,
};
use tandem_proto::{DeviceId, ErrorCode, Frame, FrameError, FrameType, PublicKey, Role};

mod common;

use common::{
    content, device_id, device_info, envelope, error_code, frame, message, patterned, public_key,
    role, text, valid_qr_payload, valid_relay_url,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `Oks` runs, valid or not: encoding fails exactly when decoding the
    /// same bytes does (no runs, over `MAX_OK_RUNS`, a count of 0, a run
    /// past `u64::MAX`), and what decodes encodes back byte for byte.
    #[test]
    fn oks_frames_encode_exactly_when_they_decode(
        runs in prop_oneof![
            8 => vec((any::<u64>(), any::<u32>()), 0..6),
            8 => vec((prop_oneof![Just(u64::MAX), Just(u64::MAX - 5), 0..10u64], 0..8u32), 0..6),
            1 => vec((any::<u64>(), 1..4u32), (MAX_OK_RUNS - 1)..=(MAX_OK_RUNS + 1)),
        ],
    ) {
        let valid = (1..=MAX_OK_RUNS).contains(&runs.len())
            && runs.iter().all(|&(first, count)| {
                count >= 1 && first.checked_add(u64::from(count)).is_some()
            });
        let runs: Vec<OkRun> = runs.into_iter().map(|(first, count)| OkRun { first, count }).collect();
        let mut wire = vec![VERSION, FrameType::Oks as u8];
        wire.extend_from_slice(&u16::try_from(runs.len()).unwrap().to_be_bytes());
        for r in &runs {
            wire.extend_from_slice(&r.first.to_be_bytes());
            wire.extend_from_slice(&r.count.to_be_bytes());
        }
        let oks = Frame::Oks { runs };
        match oks.encode() {
            Ok(bytes) => {
                prop_assert!(valid);
                prop_assert_eq!(&bytes, &wire);
                prop_assert_eq!(Frame::decode(&bytes), Ok(oks));
            }
            Err(e) => {
                prop_assert!(!valid, "{:?}", e);
                let refused_as_oks = matches!(e, FrameError::Malformed { kind: FrameType::Oks, .. });
                prop_assert!(refused_as_oks, "{:?}", e);
                let decoded = Frame::decode(&wire);
                let refused = matches!(decoded, Err(FrameError::Malformed { kind: FrameType::Oks, .. }));
                prop_assert!(refused, "{:?}", decoded);
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
fn link_base() -> impl Strategy<Value = (String, String, String)> {
    // The query: none, or what `tandem up` adds on plain http (`?n=<nonce>`), or any allowed one.
    let query = prop_oneof![Just(String::new()), "\\?n=[A-Z2-7]{8}", "\\?[A-Za-z0-9_.~=&-]{0,12}"];
    (valid_relay_url(), "(/[A-Za-z0-9_.~-]{0,8}){0,3}", query)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn qr_payloads_round_trip(payload in valid_qr_payload()) {
        let bytes = payload.encode();
        let relay_len = payload.relay.as_ref().map_or(0, |r| 1 + r.len());
        prop_assert_eq!(bytes.len(), QR_FIXED_LEN + relay_len);
        prop_assert_eq!(QrPayload::decode(&bytes), Ok(payload));
    }

    #[test]
    fn pairing_links_round_trip_until_they_expire(
        payload in valid_qr_payload(),
        (origin, path, query) in link_base(),
        // How far from the expiry time the link is scanned, and on which side.
        delta in 0u64..=1_000_000,
        expired in any::<bool>(),
    ) {
        let base = format!("{origin}{path}{query}");
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
            prop_assert_eq!(&parsed.query, &query);
            prop_assert_eq!(parsed.base(), base.clone());
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
        Message::TaskList { .. } => "task_list",
        Message::HistoryUnavailable { .. } => "history_unavailable",
        Message::DeviceInfo(_) => "device_info",
        Message::Detached { .. } => "detached",
        Message::Choices { .. } => "choices",
        Message::SessionsRequest { .. } => "sessions_request",
        Message::Sessions { .. } => "sessions",
        Message::Refused { .. } => "refused",
        Message::PushSetup { .. } => "push_setup",
    };
    let event = match m {
        Message::TaskEvent { event, .. } => Some(match event {
            TaskEvent::Accepted { .. } => "accepted",
            TaskEvent::FollowUp { .. } => "follow_up",
            TaskEvent::Progress { .. } => "progress",
            TaskEvent::ToolCall { .. } => "tool_call",
            TaskEvent::ToolResult { .. } => "tool_result",
            TaskEvent::Diff { .. } => "diff",
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
