//! Every decoder in tandem-proto, fed arbitrary bytes or damaged valid
//! encodings (truncated, flipped, extended, spliced), returns `Ok` or `Err`
//! and never panics. Beyond not panicking, each property checks what the
//! answer must be: errors name the right cause for bad headers, and whatever
//! a binary decoder accepts is canonical (encoding it again gives back the
//! exact input), so no two byte strings decode to the same value.
//!
//! The record layer gets the same treatment end to end: a sealed record,
//! damaged in transit, never opens, and a failed open leaves the receiving
//! session exactly as it was.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use tandem_proto::codec::Reader;
use tandem_proto::content::{Content, ContentError};
use tandem_proto::envelope::{Envelope, EnvelopeError};
use tandem_proto::frame::{MAX_FRAME_LEN, MAX_PAYLOAD_LEN, VERSION};
use tandem_proto::message::{
    Decoded, DeviceInfo, KNOWN_EVENT_TYPES, KNOWN_KINDS, MAX_DEVICE_NAME_CHARS, MAX_MESSAGE_LEN,
    Message, MessageError,
};
use tandem_proto::qr::{PairingLink, QR_FIXED_LEN, QR_VERSION, QrError, QrPayload, link_segments};
use tandem_proto::record::Session;
use tandem_proto::{DeviceId, Frame, FrameError, FrameType, PublicKey};

mod common;

use common::{
    any_json_value, any_qr_payload, any_relay_url, device_info, float_free_json_leaf, message,
    small_content, small_envelope, small_frame, text,
};

// ---------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------

/// One way to damage a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    /// Keep only a (strictly shorter) prefix.
    Truncate(Index),
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Add bytes at the end.
    Append(Vec<u8>),
    /// Insert one byte anywhere.
    Insert(Index, u8),
    /// Remove one byte.
    Remove(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1..=u8::MAX).prop_map(|(i, mask)| Mutation::Flip(i, mask)),
        vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Remove),
    ]
}

/// One to three mutations, applied in order.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..=3)
}

fn apply(m: &Mutation, bytes: &mut Vec<u8>) {
    let len = bytes.len();
    match m {
        Mutation::Truncate(i) if len > 0 => bytes.truncate(i.index(len)),
        Mutation::Flip(i, mask) if len > 0 => bytes[i.index(len)] ^= mask,
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
        Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
        Mutation::Remove(i) if len > 0 => {
            bytes.remove(i.index(len));
        }
        Mutation::Truncate(_) | Mutation::Flip(..) | Mutation::Remove(_) => {}
    }
}

fn mutated(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        apply(m, &mut bytes);
    }
    bytes
}

/// Arbitrary bytes, mostly short.
fn junk(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

/// Arbitrary bytes behind a plausible header (a right or wrong version
/// byte, then a registered or random type byte), so decoding gets past
/// the header checks into the body parsers.
fn with_header(types: Vec<u8>, max_body: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![4 => Just(1u8), 1 => any::<u8>()],
        prop_oneof![4 => proptest::sample::select(types), 1 => any::<u8>()],
        junk(max_body),
    )
        .prop_map(|(version, kind, body)| {
            let mut b = vec![version, kind];
            b.extend(body);
            b
        })
}

// ---------------------------------------------------------------------------
// Relay frames
// ---------------------------------------------------------------------------

fn frame_type_bytes() -> Vec<u8> {
    FrameType::ALL.iter().map(|t| *t as u8).collect()
}

/// Decode `bytes` and check the answer against what the header alone says.
fn check_frame(bytes: &[u8]) -> Result<(), TestCaseError> {
    let result = Frame::decode(bytes);
    if let Err(e) = &result {
        // Reporting an error must not panic either.
        let _ = (e.to_string(), e.code());
    }
    if bytes.len() > MAX_FRAME_LEN {
        prop_assert_eq!(result, Err(FrameError::TooLarge(bytes.len())));
    } else if bytes.len() < 2 {
        prop_assert_eq!(result, Err(FrameError::TooShort));
    } else if bytes[0] != VERSION {
        prop_assert_eq!(result, Err(FrameError::UnsupportedVersion(bytes[0])));
    } else if FrameType::from_byte(bytes[1]).is_none() {
        prop_assert_eq!(result, Err(FrameError::UnknownType(bytes[1])));
    } else {
        match result {
            Ok(frame) => {
                prop_assert_eq!(frame.frame_type() as u8, bytes[1]);
                let again = frame.encode();
                prop_assert_eq!(
                    again.as_deref(),
                    Ok(bytes),
                    "decode accepted a non-canonical encoding of {:?}",
                    frame
                );
            }
            Err(FrameError::Malformed { kind, .. }) => prop_assert_eq!(kind as u8, bytes[1]),
            // A payload over MAX_PAYLOAD_LEN in a frame within MAX_FRAME_LEN.
            Err(FrameError::TooLarge(n)) => {
                prop_assert_eq!(n, bytes.len());
                prop_assert!(bytes.len() > MAX_PAYLOAD_LEN);
            }
            Err(other) => {
                return Err(TestCaseError::fail(format!(
                    "unexpected error {other:?} for a valid header"
                )));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frame_decode_never_panics_on_arbitrary_bytes(bytes in prop_oneof![
        junk(96),
        with_header(frame_type_bytes(), 96),
    ]) {
        check_frame(&bytes)?;
    }

    #[test]
    fn frame_decode_never_panics_on_mutated_encodings(frame in small_frame(), ms in mutations()) {
        let bytes = mutated(frame.encode().expect("a small frame encodes"), &ms);
        check_frame(&bytes)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn frame_decode_refuses_oversized_input_before_parsing(
        len in (MAX_FRAME_LEN - 2)..=(MAX_FRAME_LEN + 2),
        kind in proptest::sample::select(frame_type_bytes()),
    ) {
        let mut bytes = vec![0u8; len];
        bytes[0] = VERSION;
        bytes[1] = kind;
        check_frame(&bytes)?;
    }
}

/// A valid `PushSubscribe` `kind ‖ data`, so mutations start from something the parser takes.
fn push_subscription() -> impl Strategy<Value = tandem_proto::frame::PushSubscription> {
    use tandem_proto::frame::PushSubscription as S;
    prop_oneof![
        Just(S::Remove),
        ("[a-z]{1,12}", "[a-z0-9/_-]{0,40}", any::<[u8; 16]>()).prop_map(|(host, path, auth)| {
            let mut p256dh = [7u8; 65];
            p256dh[0] = 4;
            S::WebPush { endpoint: format!("https://{host}.example/{path}"), p256dh, auth }
        }),
        vec(any::<u8>(), 1..=200).prop_map(|token| S::Apns { token }),
        "[A-Za-z0-9:_-]{1,200}".prop_map(|token| S::Fcm { token }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever a device puts in a `PushSubscribe` (the relay parses it
    /// after the frame decoded), parsing answers and what it takes is
    /// canonical: stored and read back, the same bytes.
    #[test]
    fn push_subscription_parse_never_panics_and_is_canonical(
        sub in push_subscription(),
        ms in mutations(),
        kind in any::<u8>(),
        junk_data in junk(300),
    ) {
        use tandem_proto::frame::PushSubscription;
        for bytes in [mutated(sub.to_bytes(), &ms), [&[kind][..], &junk_data].concat()] {
            if let Ok(parsed) = PushSubscription::from_bytes(&bytes) {
                prop_assert_eq!(parsed.to_bytes(), bytes);
            }
        }
        prop_assert_eq!(PushSubscription::from_bytes(&sub.to_bytes()), Ok(sub));
    }
}

// ---------------------------------------------------------------------------
// Envelopes and record contents
// ---------------------------------------------------------------------------

fn check_envelope(bytes: &[u8]) -> Result<(), TestCaseError> {
    let result = Envelope::decode(bytes);
    if let Err(e) = &result {
        let _ = e.to_string();
    }
    match bytes {
        [] => prop_assert_eq!(result, Err(EnvelopeError::TooShort)),
        [v, ..] if *v != 1 => prop_assert_eq!(result, Err(EnvelopeError::UnsupportedVersion(*v))),
        [_] => prop_assert_eq!(result, Err(EnvelopeError::TooShort)),
        [_, k, ..] if !(1..=5).contains(k) => {
            prop_assert_eq!(result, Err(EnvelopeError::UnknownKind(*k)));
        }
        _ => match result {
            Ok(e) => prop_assert_eq!(e.encode(), bytes, "non-canonical envelope accepted"),
            Err(e) => prop_assert!(matches!(e, EnvelopeError::Malformed(_)), "{e:?}"),
        },
    }
    Ok(())
}

fn check_content(bytes: &[u8]) -> Result<(), TestCaseError> {
    let result = Content::decode(bytes);
    if let Err(e) = &result {
        let _ = e.to_string();
    }
    match bytes.first() {
        None => prop_assert_eq!(result, Err(ContentError::Empty)),
        Some(t) if ![0x01, 0x02, 0x03, 0x10, 0x11].contains(t) => {
            prop_assert_eq!(result, Err(ContentError::UnknownType(*t)));
        }
        Some(_) => match result {
            Ok(c) => prop_assert_eq!(c.encode(), bytes, "non-canonical content accepted"),
            Err(e) => prop_assert!(matches!(e, ContentError::Malformed(_)), "{e:?}"),
        },
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn envelope_decode_never_panics_on_arbitrary_bytes(bytes in prop_oneof![
        junk(64),
        with_header(vec![1, 2, 3, 4, 5], 64),
    ]) {
        check_envelope(&bytes)?;
    }

    #[test]
    fn envelope_decode_never_panics_on_mutated_encodings(e in small_envelope(), ms in mutations()) {
        check_envelope(&mutated(e.encode(), &ms))?;
    }

    #[test]
    fn content_decode_never_panics_on_arbitrary_bytes(bytes in prop_oneof![
        junk(64),
        (
            proptest::sample::select(vec![0x01u8, 0x02, 0x03, 0x10, 0x11]),
            junk(64),
        ).prop_map(|(t, mut body)| { body.insert(0, t); body }),
    ]) {
        check_content(&bytes)?;
    }

    #[test]
    fn content_decode_never_panics_on_mutated_encodings(c in small_content(), ms in mutations()) {
        check_content(&mutated(c.encode(), &ms))?;
    }
}

// ---------------------------------------------------------------------------
// QR payloads and pairing links
// ---------------------------------------------------------------------------

fn check_qr(bytes: &[u8]) -> Result<(), TestCaseError> {
    match QrPayload::decode(bytes) {
        Ok(p) => {
            prop_assert_eq!(bytes[0], QR_VERSION);
            prop_assert!(bytes.len() >= QR_FIXED_LEN);
            prop_assert_eq!(p.encode(), bytes, "non-canonical QR payload accepted");
        }
        Err(e) => {
            let _ = e.to_string();
            if let Some(&v) = bytes.first().filter(|v| **v != QR_VERSION) {
                prop_assert_eq!(e, QrError::WrongVersion(v));
            }
        }
    }
    Ok(())
}

/// Raw QR bytes: the fixed part, then nothing, a well-formed relay section,
/// or a relay section whose length byte or URL is wrong.
fn qr_bytes() -> impl Strategy<Value = Vec<u8>> {
    let relay = prop_oneof![
        Just(Vec::new()),
        any_relay_url().prop_map(|u| {
            let mut b = vec![u8::try_from(u.len()).expect("short")];
            b.extend_from_slice(u.as_bytes());
            b
        }),
        (any::<u8>(), any_relay_url()).prop_map(|(len, u)| {
            let mut b = vec![len];
            b.extend_from_slice(u.as_bytes());
            b
        }),
        (any::<u8>(), junk(40)).prop_map(|(len, junk)| {
            let mut b = vec![len];
            b.extend(junk);
            b
        }),
    ];
    (
        prop_oneof![4 => Just(QR_VERSION), 1 => any::<u8>()],
        vec(any::<u8>(), (QR_FIXED_LEN - 3)..=(QR_FIXED_LEN - 1)),
        relay,
    )
        .prop_map(|(version, fixed, relay)| {
            let mut b = vec![version];
            b.extend(fixed);
            b.extend(relay);
            b
        })
}

/// Parse `link` at `now` and check the answer: a link that parses has not
/// expired and is exactly what the parsed payload shows as a link (up to
/// the case of the base32 payload, which scanners may lower).
fn check_link(link: &str, now: u64) -> Result<(), TestCaseError> {
    let _ = link_segments(link);
    match PairingLink::parse(link, now) {
        Ok(l) => {
            prop_assert!(now < u64::from(l.payload.expires_at));
            let again = l.payload.to_link(&l.base());
            let (head, fragment) = link.trim().split_once('#').expect("it parsed, so it has a #");
            prop_assert_eq!(
                again,
                format!("{head}#{}", fragment.to_ascii_uppercase()),
                "non-canonical link accepted"
            );
            let _ = l.relay_origin();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn qr_decode_never_panics_on_arbitrary_bytes(bytes in prop_oneof![junk(200), qr_bytes()]) {
        check_qr(&bytes)?;
    }

    #[test]
    fn qr_decode_never_panics_on_mutated_encodings(p in any_qr_payload(), ms in mutations()) {
        check_qr(&mutated(p.encode(), &ms))?;
    }

    #[test]
    fn pairing_link_parse_never_panics_on_arbitrary_text(
        link in prop_oneof![
            text(64),
            // Well-formed up to the fragment, then arbitrary base32-ish text.
            (any_relay_url(), "(/[A-Za-z0-9_.~-]{0,6}){0,2}", "[A-Za-z0-9=]{0,140}")
                .prop_map(|(o, p, f)| format!("{o}{p}#{f}")),
            // Arbitrary bytes as a well-formed fragment.
            junk(120).prop_map(|b| format!(
                "https://relay.example.com/p#{}",
                data_encoding::BASE32_NOPAD.encode(&b)
            )),
        ],
        now in any::<u64>(),
    ) {
        check_link(&link, now)?;
    }

    #[test]
    fn pairing_link_parse_never_panics_on_mutated_links(
        p in any_qr_payload(),
        base in prop_oneof![
            Just("https://relay.example.com/p".to_owned()),
            any_relay_url(),
        ],
        ms in mutations(),
        now in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let bytes = mutated(p.to_link(&base).into_bytes(), &ms);
        check_link(&String::from_utf8_lossy(&bytes), now)?;
    }

    #[test]
    fn pairing_link_parse_never_panics_on_links_carrying_damaged_payloads(
        p in any_qr_payload(),
        ms in mutations(),
        now in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let payload = mutated(p.encode(), &ms);
        let link = format!(
            "https://relay.example.com/p#{}",
            data_encoding::BASE32_NOPAD.encode(&payload)
        );
        check_link(&link, now)?;
        // The link answers exactly as its payload does.
        if let Err(e) = QrPayload::decode(&payload) {
            prop_assert_eq!(PairingLink::parse(&link, now), Err(e));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Splitting a link for QR encoding never panics, and a split is exact:
    /// the two segments are the whole link, the first ends at the first `#`,
    /// the second is upper-case base32 only.
    #[test]
    fn link_segments_never_panics_and_splits_exactly(link in prop_oneof![
        text(48),
        ("[a-z:/.#]{0,24}", "[A-Z2-7a-z0-9#=]{0,24}").prop_map(|(a, b)| format!("{a}#{b}")),
    ]) {
        if let Some((head, payload)) = link_segments(&link) {
            prop_assert_eq!(format!("{head}{payload}"), link.clone());
            prop_assert_eq!(head.find('#'), Some(head.len() - 1));
            prop_assert!(payload.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        } else {
            let upper_b32 = |p: &str| {
                p.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
            };
            prop_assert!(link.split_once('#').is_none_or(|(_, p)| !upper_b32(p)));
        }
    }
}

// ---------------------------------------------------------------------------
// Application messages and device info
// ---------------------------------------------------------------------------

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        Value::Null | Value::Bool(_) | Value::String(_) => false,
    }
}

fn valid_device_info(d: &DeviceInfo) -> bool {
    d.name.chars().count() <= MAX_DEVICE_NAME_CHARS
        && !d.name.chars().any(char::is_control)
        && [&d.platform, &d.app_version]
            .iter()
            .all(|s| s.len() <= 32 && !s.chars().any(char::is_control))
}

/// Decode `bytes` as a message and check the answer: what decodes as known
/// decodes the same after encoding it again; what decodes as unknown really
/// is a kind (or event type) this build does not list.
fn check_message(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Message::decode(bytes) {
        Ok(Decoded::Known(m)) => {
            if let Message::DeviceInfo(d) = &m {
                prop_assert!(valid_device_info(d), "accepted {d:?}");
            }
            // Floats need not survive a text round trip bit for bit.
            let floats = has_float(&serde_json::to_value(&m).expect("to_value"));
            if let (false, Ok(again)) = (floats, m.encode()) {
                prop_assert_eq!(Message::decode(&again), Ok(Decoded::Known(m)));
            }
        }
        Ok(Decoded::Unknown { v, kind }) => {
            let obj: Value = serde_json::from_slice(bytes).expect("it decoded, so it is JSON");
            prop_assert_eq!(obj["v"].as_u64(), Some(v));
            prop_assert!(v >= 1);
            let top = obj["kind"].as_str().expect("it decoded, so it has a kind");
            if top == kind {
                // An unknown kind.
                prop_assert!(!KNOWN_KINDS.contains(&top), "{kind}");
            } else {
                // A known task event of an unknown type.
                let ty = obj["event"]["type"].as_str().expect("an event type");
                prop_assert_eq!(top, "task_event");
                prop_assert_eq!(&kind, &format!("task_event/{ty}"));
                prop_assert!(!KNOWN_EVENT_TYPES.contains(&ty), "{kind}");
            }
        }
        Err(e) => {
            let _ = e.to_string();
            if bytes.len() > MAX_MESSAGE_LEN {
                prop_assert!(matches!(e, MessageError::TooLarge(_)));
            }
        }
    }
    Ok(())
}

/// JSON objects shaped like messages: a `v` (good or bad), a known or
/// unknown `kind`, and fields under the names messages use, holding values
/// of any type — so decoding reaches every kind's field checks.
fn message_like() -> impl Strategy<Value = Value> {
    let field_names = vec![
        "task_id",
        "text",
        "workspace",
        "executor",
        "approval_id",
        "allow",
        "from_offset",
        "offset",
        "at_ms",
        "next_offset",
        "requested_from",
        "earliest",
        "name",
        "platform",
        "app_version",
        "code",
        "message",
    ];
    let event_fields = vec![
        "executor",
        "text",
        "call_id",
        "name",
        "input",
        "output",
        "is_error",
        "approval_id",
        "summary",
        "detail",
        "expires_at_ms",
        "allow",
        "by",
        "status",
    ];
    let scalar = || {
        prop_oneof![
            // Null, bool, integer or string, each as often as the two below.
            5 => float_free_json_leaf(),
            1 => proptest::sample::select(vec!["succeeded", "failed", "cancelled", "rejected"])
                .prop_map(Value::from),
            1 => any_json_value(),
        ]
    };
    let kind = prop_oneof![
        4 => proptest::sample::select(KNOWN_KINDS.to_vec()).prop_map(Value::from),
        1 => text(8).prop_map(Value::String),
        1 => scalar(),
    ];
    let version = prop_oneof![
        4 => Just(json!(1)),
        1 => any::<u64>().prop_map(Value::from),
        1 => scalar(),
    ];
    let event_type = prop_oneof![
        4 => proptest::sample::select(KNOWN_EVENT_TYPES.to_vec()).prop_map(Value::from),
        1 => scalar(),
    ];
    let event = (event_type, btree_map(proptest::sample::select(event_fields), scalar(), 0..6))
        .prop_map(|(ty, fields)| {
            let mut o: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            o.insert("type".into(), ty);
            Value::Object(o)
        });
    (
        proptest::option::weighted(0.9, version),
        proptest::option::weighted(0.95, kind),
        btree_map(proptest::sample::select(field_names), scalar(), 0..8),
        proptest::option::of(prop_oneof![4 => event, 1 => scalar()]),
    )
        .prop_map(|(v, kind, fields, event)| {
            let mut o: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Some(v) = v {
                o.insert("v".into(), v);
            }
            if let Some(k) = kind {
                o.insert("kind".into(), k);
            }
            if let Some(e) = event {
                o.insert("event".into(), e);
            }
            Value::Object(o)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn message_decode_never_panics_on_arbitrary_bytes(bytes in junk(128)) {
        check_message(&bytes)?;
    }

    #[test]
    fn message_decode_never_panics_on_arbitrary_json(v in prop_oneof![
        any_json_value(),
        message_like(),
    ]) {
        check_message(&serde_json::to_vec(&v).expect("to_vec"))?;
    }

    #[test]
    fn message_decode_never_panics_on_mutated_encodings(m in message(), ms in mutations()) {
        check_message(&mutated(m.encode().expect("encode"), &ms))?;
    }

    #[test]
    fn device_info_from_json_never_panics_and_accepts_only_valid_info(bytes in prop_oneof![
        junk(96),
        (
            proptest::option::of(prop_oneof![Just(json!(1)), any_json_value()]),
            text(70),
            text(34),
            prop_oneof![text(8).prop_map(Value::String), any_json_value()],
        ).prop_map(|(v, name, platform, app_version)| {
            let mut o = json!({ "name": name, "platform": platform, "app_version": app_version });
            if let Some(v) = v {
                o["v"] = v;
            }
            serde_json::to_vec(&o).expect("to_vec")
        }),
        (device_info(), mutations()).prop_map(|(d, ms)| mutated(d.to_json(), &ms)),
    ]) {
        match DeviceInfo::from_json(&bytes) {
            Ok(d) => {
                prop_assert!(valid_device_info(&d), "accepted {d:?}");
                prop_assert_eq!(DeviceInfo::from_json(&d.to_json()), Ok(d));
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
}

#[test]
fn message_decode_refuses_oversized_and_deeply_nested_input() {
    let big = vec![b' '; MAX_MESSAGE_LEN + 1];
    assert!(matches!(Message::decode(&big), Err(MessageError::TooLarge(_))));
    // Nesting far beyond serde_json's recursion limit is an error, not a stack overflow.
    let deep = format!(
        "{{\"v\":1,\"kind\":\"task_event\",\"event\":{}{}}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    assert!(Message::decode(deep.as_bytes()).is_err());
    assert!(DeviceInfo::from_json(deep.as_bytes()).is_err());
}

// ---------------------------------------------------------------------------
// Identities
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Only canonical text parses: whatever parses displays as the input.
    #[test]
    fn device_id_from_str_never_panics_and_accepts_only_canonical_text(s in prop_oneof![
        text(30),
        "[a-z2-7]{26}",
        "[A-Za-z0-9=]{24,28}",
    ]) {
        if let Ok(id) = s.parse::<DeviceId>() {
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn public_key_from_str_never_panics_and_accepts_only_canonical_text(s in prop_oneof![
        text(50),
        "[A-Za-z0-9_-]{43}",
        "[A-Za-z0-9_+/=-]{40,46}",
    ]) {
        if let Ok(key) = s.parse::<PublicKey>() {
            prop_assert_eq!(key.to_string(), s);
        }
    }
}

// ---------------------------------------------------------------------------
// The byte reader every binary codec uses
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Read {
    Bytes(usize),
    U8,
    U16,
    U32,
    U64,
    Array16,
    Str16(usize),
    Rest,
}

fn read() -> impl Strategy<Value = Read> {
    prop_oneof![
        (0usize..80).prop_map(Read::Bytes),
        Just(Read::U8),
        Just(Read::U16),
        Just(Read::U32),
        Just(Read::U64),
        Just(Read::Array16),
        (0usize..300).prop_map(Read::Str16),
        Just(Read::Rest),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Reads consume exactly their width on success, nothing on a truncated
    /// read, and `finish` succeeds only when everything was read.
    #[test]
    fn reader_never_panics_and_consumes_exactly_what_it_reads(
        bytes in junk(128),
        reads in vec(read(), 0..16),
    ) {
        let mut r = Reader::new(&bytes);
        for op in &reads {
            let before = r.remaining();
            let consumed = match op {
                Read::Bytes(n) => r.bytes(*n, "f").map(|b| b.len()),
                Read::U8 => r.u8("f").map(|_| 1),
                Read::U16 => r.u16("f").map(|_| 2),
                Read::U32 => r.u32("f").map(|_| 4),
                Read::U64 => r.u64("f").map(|_| 8),
                Read::Array16 => r.array::<16>("f").map(|_| 16),
                Read::Str16(max) => r.str16(*max, "f").map(|s| 2 + s.len()),
                Read::Rest => Ok(r.rest().len()),
            };
            match consumed {
                Ok(n) => prop_assert_eq!(r.remaining(), before - n),
                Err(_) if !matches!(op, Read::Str16(_)) => prop_assert_eq!(r.remaining(), before),
                // A string's length prefix is consumed before its limit is checked.
                Err(_) => prop_assert!(r.remaining() <= before),
            }
        }
        let left = r.remaining();
        prop_assert_eq!(r.finish().is_ok(), left == 0);
    }
}

// ---------------------------------------------------------------------------
// Records: damaged in transit, never opened, and nothing changes
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn damaged_records_never_open_and_leave_the_receiver_unchanged(
        id in any::<[u8; 8]>(),
        tx in any::<[u8; 32]>(),
        rx in any::<[u8; 32]>(),
        // Records sent before, and how many of them the receiver has opened.
        earlier in 0usize..4,
        opened in 0usize..4,
        // Sometimes the damaged record is the first of a new key epoch.
        rekey in any::<bool>(),
        plaintext in vec(any::<u8>(), 0..128),
        damage in proptest::option::weighted(0.9, mutation()),
    ) {
        let mut sender = Session::new(id, tx, rx);
        let mut receiver = Session::new(id, rx, tx);
        for i in 0..earlier {
            let r = sender.seal(&[i as u8]).expect("seal");
            if i < opened {
                let e = Envelope::decode(&r).expect("a sealed record decodes");
                prop_assert_eq!(receiver.open(&e), Ok(vec![i as u8]));
            }
        }
        if rekey {
            sender.rekey_now();
        }
        let sealed = sender.seal(&plaintext).expect("seal");
        let mut wire = sealed.clone();
        if let Some(m) = &damage {
            apply(m, &mut wire);
        }
        let before = serde_json::to_string(&receiver).expect("serialize");
        let opened_now = Envelope::decode(&wire)
            .map_err(|e| e.to_string())
            .and_then(|e| receiver.open(&e).map_err(|e| e.to_string()));
        if wire == sealed {
            prop_assert_eq!(opened_now, Ok(plaintext));
        } else {
            prop_assert!(opened_now.is_err(), "a damaged record opened: {damage:?}");
            prop_assert_eq!(serde_json::to_string(&receiver).expect("serialize"), before);
            // And the genuine record still opens afterwards.
            let e = Envelope::decode(&sealed).expect("a sealed record decodes");
            prop_assert_eq!(receiver.open(&e), Ok(plaintext));
        }
    }
}
