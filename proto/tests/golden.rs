//! Golden byte vectors, committed under `proto/vectors/`, so that other
//! implementations (the web client's TypeScript, the mobile SDK's bindings)
//! can be checked against this crate byte for byte.
//!
//! This test regenerates every vector from fixed keys and a deterministic
//! entropy stream and compares with the committed files. After an
//! intentional protocol change, rewrite them with
//! `TANDEM_WRITE_VECTORS=1 cargo test -p tandem-proto --test golden`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use serde_json::{Value, json};
use tandem_proto::content::Content;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::frame::{Frame, OkRun};
use tandem_proto::kdf::{label, mac};
use tandem_proto::message::{
    DeviceInfo, ExecutorChoice, FinishStatus, Message, ProjectChoice, SessionSummary, TaskEvent,
    TaskState, TaskSummary,
};
use tandem_proto::pairing::{DesktopPairing, PhonePairing};
use tandem_proto::qr::PairingLink;
use tandem_proto::record::{Session, rekey};
use tandem_proto::relay_auth::{RelayChallenge, prove};
use tandem_proto::sas::Sas;
use tandem_proto::session::{PeerSecrets, SessionInitiator, respond};
use tandem_proto::{DeviceId, DeviceKey, ErrorCode, PublicKey, Role};

fn h(b: &[u8]) -> String {
    hex::encode(b)
}

/// The 32 bytes the deterministic stream `seed` yields at block `index`
/// (what snow draws for an ephemeral key when handed that stream).
fn block(seed: [u8; 32], index: u64) -> [u8; 32] {
    mac(&seed, label::TEST_ENTROPY, &[&index.to_be_bytes()])
}

fn frames() -> Value {
    let a = DeviceId([0xa1; 16]);
    let b = DeviceId([0xb2; 16]);
    let cases: Vec<(&str, Frame)> = vec![
        ("hello", Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone }),
        (
            "challenge",
            Frame::Challenge {
                relay_ephemeral: PublicKey([0x11; 32]),
                nonce: [0x22; 32],
                relay_name: "relay.example.com".into(),
            },
        ),
        ("auth", Frame::Auth { public_key: PublicKey([0x33; 32]), proof: [0x44; 32] }),
        (
            "auth_ok",
            Frame::AuthOk {
                device_id: a,
                queued: 3,
                ping_interval_ms: 20_000,
                store_epoch: 0x0123_4567_89ab_cdef,
            },
        ),
        ("send", Frame::Send { send_id: 7, to: b, payload: b"opaque".to_vec() }),
        ("deliver", Frame::Deliver { delivery_id: 42, from: a, payload: b"opaque".to_vec() }),
        ("ack", Frame::Ack { up_to: 42 }),
        ("ok", Frame::Ok { ref_id: 7 }),
        (
            "oks",
            Frame::Oks {
                runs: vec![
                    OkRun { first: 7, count: 3 },
                    OkRun { first: 0x0102_0304_0506_0708, count: 1 },
                ],
            },
        ),
        ("presence", Frame::Presence { peer: b, online: true }),
        ("ping", Frame::Ping { nonce: 0x0102_0304_0506_0708 }),
        ("pong", Frame::Pong { nonce: 0x0102_0304_0506_0708 }),
        ("pair_open", Frame::PairOpen { request_id: 1, pairing_id: [0x55; 16], ttl_secs: 120 }),
        (
            "pair_claim",
            Frame::PairClaim { request_id: 2, pairing_id: [0x55; 16], payload: vec![1, 1, 9] },
        ),
        (
            "pair_message",
            Frame::PairMessage { pairing_id: [0x55; 16], peer: a, payload: vec![1, 2, 9] },
        ),
        ("pair_close", Frame::PairClose { request_id: 3, pairing_id: [0x55; 16] }),
        ("authorize", Frame::Authorize { request_id: 4, peer: b }),
        ("revoke", Frame::Revoke { request_id: 5, peer: b }),
        (
            "error",
            Frame::Error { code: ErrorCode::NotAuthorized, ref_id: 7, message: "no route".into() },
        ),
        ("restarting", Frame::Restarting { reconnect_after_ms: 1500 }),
        (
            "push_subscribe",
            Frame::PushSubscribe {
                request_id: 8,
                kind: 1,
                data: tandem_proto::frame::PushSubscription::WebPush {
                    endpoint: "https://push.example.com/w/1".into(),
                    p256dh: {
                        let mut k = [0x66; 65];
                        k[0] = 4;
                        k
                    },
                    auth: [0x77; 16],
                }
                .data(),
            },
        ),
        (
            "notify",
            Frame::Notify {
                request_id: 9,
                to: b,
                urgency: 3,
                topic: [0x88; 16],
                blob: vec![1, 0x99, 0x99],
            },
        ),
        ("active", Frame::Active { active: false }),
    ];
    Value::Array(
        cases
            .into_iter()
            .map(|(name, f)| json!({"name": name, "debug": format!("{f:?}"), "hex": h(&f.encode().unwrap())}))
            .collect(),
    )
}

fn identity_and_kdf() -> Value {
    let key = DeviceKey::from_bytes([0x5a; 32]);
    let public = key.public();
    let other = DeviceKey::from_bytes([0x6b; 32]);
    let challenge_entropy = [0x77; 32];
    let ch =
        RelayChallenge::new(&mut Entropy::deterministic(challenge_entropy), "relay.example.com")
            .unwrap();
    let Frame::Challenge { relay_ephemeral, nonce, .. } = ch.frame() else { unreachable!() };
    let auth = prove(&key, Role::Desktop, "relay.example.com", &ch.frame()).unwrap();
    let Frame::Auth { proof, .. } = &auth else { unreachable!() };
    assert!(ch.verify(Role::Desktop, &public, proof).is_ok());
    json!({
        "device_secret": h(&key.to_bytes()),
        "device_public": h(&public.0),
        "device_public_display": public.to_string(),
        "device_id": h(&public.device_id().0),
        "device_id_display": public.device_id().to_string(),
        "fingerprint": public.fingerprint(),
        "x25519_with_other": h(&key.diffie_hellman(&other.public()).unwrap()),
        "other_public": h(&other.public().0),
        "pairing_secret": h(&[0x99; 32]),
        "pairing_id": h(&tandem_proto::qr::pairing_id(&[0x99; 32])),
        "sas_for_hash_of_0x07": Sas::from_handshake_hash(&[0x07; 32]).digits(),
        "relay_auth": {
            "relay_ephemeral_secret": h(&block(challenge_entropy, 0)),
            "relay_ephemeral_public": h(&relay_ephemeral.0),
            "nonce": h(&nonce),
            "role": "desktop",
            "relay_name": "relay.example.com",
            "challenge_frame": h(&ch.frame().encode().unwrap()),
            "proof": h(proof),
            "auth_frame": h(&auth.encode().unwrap()),
        },
    })
}

fn records() -> Value {
    let id = [0x0c; 8];
    let k = [0x2b; 32];
    let mut s = Session::new(id, k, [0; 32]);
    let first = s.seal(b"hello tandem").unwrap();
    let second = s.seal(&Content::Ack { ack: 1 }.encode()).unwrap();
    s.rekey_now();
    let after_rekey = s.seal(b"epoch 1").unwrap();
    json!({
        "session_id": h(&id),
        "tx_key": h(&k),
        "rekeyed_key": h(&rekey(&k)),
        "records": [
            {"counter": 0, "plaintext": h(b"hello tandem"), "envelope": h(&first)},
            {"counter": 1, "plaintext": h(&Content::Ack { ack: 1 }.encode()), "envelope": h(&second)},
            {"counter": 1u64 << 20, "plaintext": h(b"epoch 1"), "envelope": h(&after_rekey)},
        ],
        "contents": [
            {"name": "data", "hex": h(&Content::Data { seq: 5, oldest: 3, ack: 9, message: b"{}".to_vec() }.encode())},
            {"name": "ack", "hex": h(&Content::Ack { ack: 9 }.encode())},
            {"name": "nack", "hex": h(&Content::Nack { expected: 4 }.encode())},
            {"name": "pair_confirm", "hex": h(&Content::PairConfirm.encode())},
            {"name": "pair_result", "hex": h(&Content::PairResult { accepted: true, session_psk: [0x3c; 32], reason: String::new() }.encode())},
        ],
    })
}

fn pairing_transcript() -> Value {
    let desktop_key = DeviceKey::from_bytes([0xd1; 32]);
    let phone_key = DeviceKey::from_bytes([0xe2; 32]);
    let (ds, ps) = ([0xd5; 32], [0xe5; 32]);
    let mut de = Entropy::deterministic(ds);
    let mut pe = Entropy::deterministic(ps);
    let now = 1_800_000_000u64;
    let offer = DesktopPairing::new(desktop_key.clone(), now, 120, None, &mut de).unwrap();
    let link = offer.payload().to_link("https://relay.example.com/p");
    let parsed = PairingLink::parse(&link, now + 1).unwrap();
    let phone_info = DeviceInfo {
        name: "Ana's phone".into(),
        platform: "web".into(),
        app_version: "0.1.0".into(),
        ephemeral: false,
    };
    let desktop_info = DeviceInfo {
        name: "build-box".into(),
        platform: "linux".into(),
        app_version: "0.1.0".into(),
        ephemeral: false,
    };
    let (phone, hello) =
        PhonePairing::start(&phone_key, &parsed.payload, &phone_info, &mut pe).unwrap();
    let (waiting, welcome) = offer
        .on_hello(&Envelope::decode(&hello).unwrap(), &desktop_info, now + 2, &mut de)
        .unwrap();
    let (phone_waiting, confirm) = phone.on_welcome(&Envelope::decode(&welcome).unwrap()).unwrap();
    let user = waiting.on_confirm(&Envelope::decode(&confirm).unwrap()).unwrap();
    let sas = user.sas();
    let (mut dp, result) = user.accept(&mut de).unwrap();
    let mut pp = phone_waiting.on_result(&Envelope::decode(&result).unwrap()).unwrap();
    assert_eq!(pp.sas, sas);
    let task = Message::TaskSubmit {
        task_id: "t-1".into(),
        text: "fix the failing test".into(),
        workspace: None,
        executor: None,
        resume: None,
    }
    .encode()
    .unwrap();
    let data = Content::Data { seq: 1, oldest: 1, ack: 0, message: task.clone() }.encode();
    let phone_record = pp.session.seal(&data).unwrap();
    assert_eq!(dp.session.open(&Envelope::decode(&phone_record).unwrap()).unwrap(), data);

    // A session renewal (KKpsk2) right after, phone initiating.
    let (rs_p, rs_d) = ([0xf5; 32], [0xf6; 32]);
    let mut rpe = Entropy::deterministic(rs_p);
    let mut rde = Entropy::deterministic(rs_d);
    let (init, init_msg) = SessionInitiator::start(
        PeerSecrets { local: &phone_key, remote: &desktop_key.public(), psk: &pp.session_psk },
        1_800_000_005_000,
        &mut rpe,
    )
    .unwrap();
    let (mut d2, accept, _) = respond(
        PeerSecrets { local: &desktop_key, remote: &phone_key.public(), psk: &dp.session_psk },
        &Envelope::decode(&init_msg).unwrap(),
        0,
        &mut rde,
    )
    .unwrap();
    let mut p2 = init.finish(&Envelope::decode(&accept).unwrap()).unwrap();
    let renewed_record = p2.seal(b"\x02\0\0\0\0\0\0\0\0").unwrap();
    assert!(d2.open(&Envelope::decode(&renewed_record).unwrap()).is_ok());

    // The documented ephemeral secrets are the ones on the wire: each Noise
    // message starts with the sender's ephemeral public key.
    let eph_pub = |secret: [u8; 32]| DeviceKey::from_bytes(secret).public().0.to_vec();
    let noise_of = |b: &[u8], skip: usize| b[2 + skip..2 + skip + 32].to_vec();
    assert_eq!(noise_of(&hello, 0), eph_pub(block(ps, 0)));
    assert_eq!(noise_of(&welcome, 0), eph_pub(block(ds, 1)));
    assert_eq!(noise_of(&init_msg, 8), eph_pub(block(rs_p, 1)));
    assert_eq!(noise_of(&accept, 8), eph_pub(block(rs_d, 0)));

    json!({
        "note": "Entropy streams: block i of seed s is mac(s, \"tandem test entropy v1\", u64be(i)); snow draws each ephemeral as one 32-byte block.",
        "now_unix": now,
        "desktop_secret": h(&desktop_key.to_bytes()),
        "phone_secret": h(&phone_key.to_bytes()),
        "desktop_entropy_seed": h(&ds),
        "phone_entropy_seed": h(&ps),
        "qr_secret": h(&offer.payload().secret),
        "qr_expires_at": offer.payload().expires_at,
        "qr_link": link,
        "pairing_id": h(&offer.pairing_id()),
        "phone_ephemeral_secret": h(&block(ps, 0)),
        "desktop_ephemeral_secret": h(&block(ds, 1)),
        "phone_info_json": String::from_utf8(phone_info.to_json()).unwrap(),
        "desktop_info_json": String::from_utf8(desktop_info.to_json()).unwrap(),
        "pair_hello": h(&hello),
        "pair_welcome": h(&welcome),
        "pair_confirm": h(&confirm),
        "pair_result": h(&result),
        "session_psk": h(&*dp.session_psk),
        "session_id": h(&dp.session.id()),
        "sas": sas.digits(),
        "phone_first_data_record": h(&phone_record),
        "phone_first_data_plaintext": h(&data),
        "renewal": {
            "initiator": "phone",
            "timestamp_ms": 1_800_000_005_000u64,
            "phone_entropy_seed": h(&rs_p),
            "desktop_entropy_seed": h(&rs_d),
            "handshake_id": h(&block(rs_p, 0)[..8]),
            "phone_ephemeral_secret": h(&block(rs_p, 1)),
            "desktop_ephemeral_secret": h(&block(rs_d, 0)),
            "session_init": h(&init_msg),
            "session_accept": h(&accept),
            "new_session_id": h(&p2.id()),
            "first_record_from_phone": h(&renewed_record),
        },
    })
}

fn messages() -> Value {
    let msgs = vec![
        Message::TaskSubmit {
            task_id: "t-1".into(),
            text: "fix the failing test in crates/foo".into(),
            workspace: Some("tandem".into()),
            executor: Some("claude".into()),
            resume: None,
        },
        Message::FollowUp { task_id: "t-1".into(), text: "also run clippy".into() },
        Message::Cancel { task_id: "t-1".into() },
        Message::ApprovalDecision { task_id: "t-1".into(), approval_id: "a-1".into(), allow: true, remember: false },
        Message::HistoryRequest { task_id: Some("t-1".into()), from_offset: 4 },
        Message::TaskEvent {
            task_id: "t-1".into(),
            offset: 0,
            at_ms: 1,
            event: TaskEvent::Accepted { executor: "claude".into(), project: None, text: None, resumed: None },
        },
        Message::TaskEvent {
            task_id: "t-2".into(),
            offset: 0,
            at_ms: 1,
            event: TaskEvent::Accepted {
                executor: "claude".into(),
                project: Some("tandem".into()),
                text: Some("fix the failing test in crates/foo".into()),
                resumed: None,
            },
        },
        Message::TaskEvent {
            task_id: "t-2".into(),
            offset: 1,
            at_ms: 2,
            event: TaskEvent::FollowUp { text: "also run clippy".into() },
        },
        Message::Detached { idle_secs: 600 },
        Message::TaskEvent {
            task_id: "t-1".into(),
            offset: 1,
            at_ms: 2,
            event: TaskEvent::Progress { text: "reading crates/foo".into() },
        },
        Message::TaskEvent {
            task_id: "t-1".into(),
            offset: 2,
            at_ms: 3,
            event: TaskEvent::ToolCall {
                call_id: "c-1".into(),
                name: "bash".into(),
                input: json!({"command": "cargo test"}),
            },
        },
        Message::TaskEvent {
            task_id: "t-1".into(),
            offset: 3,
            at_ms: 4,
            event: TaskEvent::ToolResult {
                call_id: "c-1".into(),
                output: "1 failed".into(),
                is_error: true,
            },
        },
        Message::TaskEvent {
            task_id: "t-1".into(),
            offset: 4,
            at_ms: 5,
            event: TaskEvent::ApprovalRequest {
                approval_id: "a-1".into(),
                summary: "edit src/lib.rs".into(),
                detail: "--- a\n+++ b".into(),
                expires_at_ms: 600_005,
            },
        },
        Message::TaskEvent {
            task_id: "t-1".into(),
            offset: 5,
            at_ms: 6,
            event: TaskEvent::ApprovalResolved {
                approval_id: "a-1".into(),
                allow: true,
                by: "phone:abc".into(),
                rule: None,
            },
        },
        Message::TaskEvent {
            task_id: "t-1".into(),
            offset: 6,
            at_ms: 7,
            event: TaskEvent::Finished {
                status: FinishStatus::Succeeded,
                summary: "fixed".into(),
                denied: Vec::new(),
                expired: Vec::new(), failed: Vec::new(),
            },
        },
        Message::TaskEvent {
            task_id: "t-3".into(),
            offset: 4,
            at_ms: 9,
            event: TaskEvent::Finished {
                status: FinishStatus::Succeeded,
                summary: "fixed, without the edit".into(),
                denied: vec!["Bash".into(), "edit src/lib.rs".into()],
                failed: vec!["Bash".into()],
                expired: vec!["edit src/lib.rs".into()],
            },
        },
        Message::TaskEvent {
            task_id: "t-2".into(),
            offset: 2,
            at_ms: 9,
            event: TaskEvent::Diff {
                call_id: "c-2".into(),
                path: "src/lib.rs".into(),
                diff: "--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -12,1 +12,2 @@\n-    a - b\n+    // add, not subtract\n+    a + b\n".into(),
                added: 2,
                removed: 1,
            },
        },
        Message::HistoryEnd { task_id: "t-1".into(), next_offset: 7, more: false },
        Message::HistoryEnd { task_id: "t-2".into(), next_offset: 256, more: true },
        Message::TaskList {
            tasks: vec![
                TaskSummary {
                    task_id: "t-2".into(),
                    title: "fix the failing test in crates/foo".into(),
                    executor: "claude".into(),
                    project: Some("tandem".into()),
                    state: TaskState::Running,
                    status: None,
                    next_offset: 2,
                    updated_ms: 2,
                },
                TaskSummary {
                    task_id: "t-1".into(),
                    title: "fix the failing test in crates/foo".into(),
                    executor: "claude".into(),
                    project: None,
                    state: TaskState::Finished,
                    status: Some(FinishStatus::Succeeded),
                    next_offset: 7,
                    updated_ms: 7,
                },
            ],
        },
        Message::HistoryUnavailable { task_id: "t-1".into(), requested_from: 0, earliest: 100 },
        Message::DeviceInfo(DeviceInfo {
            name: "Ana's phone".into(),
            platform: "ios".into(),
            app_version: "1.0".into(),
            ephemeral: false,
        }),
        Message::Refused {
            task_id: Some("t-1".into()),
            code: "scope".into(),
            message: "this device may only view".into(),
        },
        Message::Choices {
            executors: vec![
                ExecutorChoice { name: "claude".into(), kind: "claude".into() },
                ExecutorChoice { name: "gemini".into(), kind: "acp".into() },
            ],
            projects: vec![
                ProjectChoice { name: "tandem".into() },
                ProjectChoice { name: "website".into() },
            ],
            default_executor: "claude".into(),
            default_project: Some("tandem".into()),
        },
        Message::Choices {
            executors: vec![ExecutorChoice { name: "shell".into(), kind: "command".into() }],
            projects: vec![],
            default_executor: "shell".into(),
            default_project: None,
        },
        Message::PushSetup {
            enabled: true,
            key_id: Some("0011223344556677".into()),
            key: Some(tandem_proto::message::Secret("ab".repeat(32))),
            approvals: Some(true),
            finished: Some(false),
            missing: None,
        },
        Message::PushSetup {
            enabled: false,
            key_id: None,
            key: None,
            approvals: None,
            finished: None,
            missing: None,
        },
        Message::SessionsRequest { executor: Some("claude".into()), workspace: None },
        Message::Sessions {
            executor: "claude".into(),
            workspace: Some("tandem".into()),
            sessions: vec![
                SessionSummary {
                    id: "4f9c2a1e-7b3d-4e8f-9a0b-1c2d3e4f5a6b".into(),
                    title: "why does the parser panic on empty input?".into(),
                    updated_ms: 1_765_000_000_000,
                    task_id: None,
                },
                SessionSummary {
                    id: "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d".into(),
                    title: "fix the failing test in crates/foo".into(),
                    updated_ms: 1_764_000_000_000,
                    task_id: Some("t-1".into()),
                },
            ],
        },
        Message::TaskSubmit {
            task_id: "t-4".into(),
            text: "and now add a test for it".into(),
            workspace: Some("tandem".into()),
            executor: Some("claude".into()),
            resume: Some("4f9c2a1e-7b3d-4e8f-9a0b-1c2d3e4f5a6b".into()),
        },
        Message::TaskEvent {
            task_id: "t-4".into(),
            offset: 0,
            at_ms: 10,
            event: TaskEvent::Accepted {
                executor: "claude".into(),
                project: Some("tandem".into()),
                text: Some("and now add a test for it".into()),
                resumed: Some("4f9c2a1e-7b3d-4e8f-9a0b-1c2d3e4f5a6b".into()),
            },
        },
        Message::ApprovalDecision {
            task_id: "t-4".into(),
            approval_id: "a-2".into(),
            allow: true,
            remember: true,
        },
        Message::TaskEvent {
            task_id: "t-4".into(),
            offset: 3,
            at_ms: 12,
            event: TaskEvent::ApprovalResolved {
                approval_id: "a-2".into(),
                allow: true,
                by: "phone:abc".into(),
                rule: Some("allow Bash(cargo test)".into()),
            },
        },
    ];
    Value::Array(
        msgs.into_iter()
            .map(|m| json!({"json": String::from_utf8(m.encode().unwrap()).unwrap()}))
            .collect(),
    )
}

fn all() -> Vec<(&'static str, Value)> {
    vec![
        ("frames.json", frames()),
        ("identity.json", identity_and_kdf()),
        ("records.json", records()),
        ("pairing.json", pairing_transcript()),
        ("messages.json", messages()),
        ("push.json", push()),
    ]
}

/// The inner seal of push notifications (PROTOCOL.md §15.6): a key from a
/// fixed stream, notifications sealed with fixed nonces, and topics.
fn push() -> Value {
    use tandem_proto::push::{Notification, NotificationKind, PushKey};
    let key = PushKey::generate(&mut Entropy::deterministic([0x51; 32])).unwrap();
    let approval = Notification {
        kind: NotificationKind::Approval,
        desktop: "build-box".into(),
        title: "Approve? Bash: cargo test".into(),
        body: "fix the failing test in crates/foo".into(),
        task_id: Some("t-1".into()),
        approval_id: Some("a-1".into()),
        expires_at_ms: Some(1_700_000_300_000),
        can_decide: true,
        at_ms: 1_700_000_000_000,
    };
    let finished = Notification {
        kind: NotificationKind::Finished,
        desktop: "build-box".into(),
        title: "Task succeeded".into(),
        body: "é🦀 ".repeat(40),
        task_id: Some("t-1".into()),
        approval_id: None,
        expires_at_ms: None,
        can_decide: false,
        at_ms: 1_700_000_100_000,
    };
    let sealed: Vec<Value> = [("approval", approval, 0x61u8), ("finished", finished, 0x62)]
        .into_iter()
        .map(|(name, n, seed)| {
            let blob = key.seal(&n, &mut Entropy::deterministic([seed; 32])).unwrap();
            json!({
                "name": name,
                "notification": serde_json::to_value(&n).unwrap(),
                "blob": h(&blob),
            })
        })
        .collect();
    json!({
        "key_id": key.id_hex(),
        "key": key.key_hex().as_str(),
        "topics": [
            {"task_id": "t-1", "topic": h(&key.topic("t-1"))},
            {"task_id": "", "topic": h(&key.topic(""))},
        ],
        "sealed": sealed,
    })
}

#[test]
fn golden_vectors_match_the_committed_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let write = std::env::var_os("TANDEM_WRITE_VECTORS").is_some();
    for (name, value) in all() {
        let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &text).unwrap();
        } else {
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (run with TANDEM_WRITE_VECTORS=1)", path.display())
            });
            assert_eq!(committed, text, "{name} differs from what the code produces");
        }
    }
}

#[test]
fn committed_vectors_decode_with_the_current_decoders() {
    // Independent of regeneration: every committed frame decodes and re-encodes identically.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let frames: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("frames.json")).unwrap()).unwrap();
    for f in frames.as_array().unwrap() {
        let bytes = hex::decode(f["hex"].as_str().unwrap()).unwrap();
        assert_eq!(Frame::decode(&bytes).unwrap().encode().unwrap(), bytes, "{}", f["name"]);
    }
    let msgs: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("messages.json")).unwrap()).unwrap();
    for m in msgs.as_array().unwrap() {
        assert!(matches!(
            Message::decode(m["json"].as_str().unwrap().as_bytes()).unwrap(),
            tandem_proto::message::Decoded::Known(_)
        ));
    }
}

#[test]
fn our_rekey_is_noise_rekey_as_snow_computes_it() {
    // Cross-check the record layer's REKEY against snow's transport rekey.
    let params: snow::params::NoiseParams = "Noise_NN_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
    let resolver = || Box::new(tandem_proto::crypto::TandemResolver::new(Entropy::os()));
    let mut i = snow::Builder::with_resolver(params.clone(), resolver()).build_initiator().unwrap();
    let mut r = snow::Builder::with_resolver(params, resolver()).build_responder().unwrap();
    let mut buf = [0u8; 256];
    let mut out = [0u8; 256];
    let n = i.write_message(&[], &mut buf).unwrap();
    r.read_message(&buf[..n], &mut out).unwrap();
    let n = r.write_message(&[], &mut buf).unwrap();
    i.read_message(&buf[..n], &mut out).unwrap();
    let (k1, _) = i.dangerously_get_raw_split();
    let mut t = i.into_stateless_transport_mode().unwrap();
    t.rekey_outgoing();
    let n = t.write_message(5, b"same bytes", &mut buf).unwrap();
    // Our record layer with the rekeyed key, same nonce, empty AD, must match.
    let ours = {
        use chacha20poly1305::aead::{AeadInOut, KeyInit};
        let c = chacha20poly1305::ChaCha20Poly1305::new(&rekey(&k1).into());
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&5u64.to_le_bytes());
        let mut b = b"same bytes".to_vec();
        let tag = c.encrypt_inout_detached(&nonce.into(), &[], (&mut b[..]).into()).unwrap();
        b.extend_from_slice(&tag);
        b
    };
    assert_eq!(&buf[..n], &ours[..]);
}
