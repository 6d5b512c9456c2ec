//! Writes a small seed corpus for every target, made with tandem-proto's own
//! encoders, into `corpus/<target>/` (or the directory given as the first
//! argument). Run from `fuzz/`: `cargo run --example gen_seeds`.

use std::path::{Path, PathBuf};

use tandem_fuzz::{DESKTOP_SENT, NOW, fixture, link, record_peer, session};
use tandem_proto::content::Content;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::frame::{Frame, OkRun};
use tandem_proto::message::{DeviceInfo, FinishStatus, Message, TaskEvent};
use tandem_proto::qr::QrPayload;
use tandem_proto::{DeviceId, DeviceKey, ErrorCode, PublicKey, Role};

fn write(root: &Path, target: &str, seeds: &[Vec<u8>]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:03}")), s).expect("write seed");
    }
    println!("{target}: {} seeds", seeds.len());
}

fn frames() -> Vec<Vec<u8>> {
    let id = DeviceId([7; 16]);
    let frames = [
        Frame::Hello { min_version: 1, max_version: 1, role: Role::Phone },
        Frame::Challenge {
            relay_ephemeral: PublicKey([1; 32]),
            nonce: [2; 32],
            relay_name: "relay.example.com:8443".into(),
        },
        Frame::Auth { public_key: PublicKey([3; 32]), proof: [4; 32] },
        Frame::AuthOk { device_id: id, queued: 3, ping_interval_ms: 30_000, store_epoch: 7 },
        Frame::Send { send_id: 1, to: id, payload: vec![1, 5, 0, 1] },
        Frame::Deliver { delivery_id: 9, from: id, payload: vec![1, 1, 9] },
        Frame::Ack { up_to: 9 },
        Frame::Ok { ref_id: 1 },
        Frame::Oks { runs: vec![OkRun { first: 1, count: 3 }, OkRun { first: 9, count: 1 }] },
        Frame::Presence { peer: id, online: true },
        Frame::Ping { nonce: 5 },
        Frame::Pong { nonce: 5 },
        Frame::PairOpen { request_id: 2, pairing_id: [8; 16], ttl_secs: 120 },
        Frame::PairClaim { request_id: 3, pairing_id: [8; 16], payload: vec![1, 1, 0] },
        Frame::PairMessage { pairing_id: [8; 16], peer: id, payload: vec![1, 2, 0] },
        Frame::PairClose { request_id: 4, pairing_id: [8; 16] },
        Frame::Authorize { request_id: 5, peer: id },
        Frame::Revoke { request_id: 6, peer: id },
        Frame::Error { code: ErrorCode::Internal, ref_id: 7, message: "déjà vu".into() },
        Frame::Restarting { reconnect_after_ms: 1000 },
        tandem_proto::frame::PushSubscription::WebPush {
            endpoint: "https://push.example.com/w/1".into(),
            p256dh: [4; 65],
            auth: [5; 16],
        }
        .frame(8),
        tandem_proto::frame::PushSubscription::Apns { token: vec![6; 32] }.frame(9),
        Frame::PushSubscribe { request_id: 10, kind: 9, data: vec![1, 2] },
        Frame::Notify { request_id: 11, to: id, urgency: 3, topic: [9; 16], blob: vec![1, 2, 3] },
        Frame::Active { active: false },
    ];
    frames.iter().map(|f| f.encode().expect("seed frame encodes")).collect()
}

fn envelopes() -> Vec<Vec<u8>> {
    let mut peer = record_peer();
    let mut v = vec![
        Envelope::PairHello { noise: vec![0; 96] }.encode(),
        Envelope::PairWelcome { noise: vec![0; 48] }.encode(),
        Envelope::SessionInit { handshake_id: [1; 8], noise: vec![0; 64] }.encode(),
        Envelope::SessionAccept { handshake_id: [1; 8], noise: vec![0; 48] }.encode(),
    ];
    // Records `record_open`'s session really opens, across an epoch boundary.
    v.push(peer.seal(b"\x02\0\0\0\0\0\0\0\x01").expect("seal"));
    v.push(peer.seal(b"").expect("seal"));
    peer.rekey_now();
    v.push(peer.seal(b"next epoch").expect("seal"));
    v
}

fn contents() -> Vec<Vec<u8>> {
    [
        Content::Data { seq: 1, oldest: 1, ack: 0, message: b"{\"v\":1}".to_vec() },
        Content::Ack { ack: 1 },
        Content::Nack { expected: 1 },
        Content::PairConfirm,
        Content::PairResult { accepted: true, session_psk: [9; 32], reason: String::new() },
        Content::PairResult { accepted: false, session_psk: [0; 32], reason: "refusé".into() },
    ]
    .iter()
    .map(Content::encode)
    .collect()
}

fn qr_payloads() -> Vec<QrPayload> {
    let base = QrPayload {
        desktop: PublicKey([4; 32]),
        secret: [5; 32],
        expires_at: u32::try_from(NOW + 120).expect("fits"),
        relay: None,
    };
    let mut with_relay = base.clone();
    with_relay.relay = Some("https://relay.example.net:8443".into());
    let mut local = base.clone();
    local.relay = Some("http://[::1]:8080".into());
    // At the length limit, so that longer (refused) URLs are one mutation away.
    let mut longest = base.clone();
    longest.relay = Some(format!("https://{}.net", "r".repeat(116)));
    vec![base, with_relay, local, longest]
}

fn messages() -> Vec<Vec<u8>> {
    let messages = [
        Message::TaskSubmit {
            task_id: "t1".into(),
            text: "fix the failing test".into(),
            workspace: Some("main".into()),
            executor: Some("claude".into()),
        },
        Message::FollowUp { task_id: "t1".into(), text: "and the docs".into() },
        Message::Cancel { task_id: "t1".into() },
        Message::ApprovalDecision { task_id: "t1".into(), approval_id: "a1".into(), allow: true },
        Message::HistoryRequest { task_id: None, from_offset: 0 },
        Message::TaskEvent {
            task_id: "t1".into(),
            offset: 3,
            at_ms: 5,
            event: TaskEvent::ToolCall {
                call_id: "c".into(),
                name: "bash".into(),
                input: serde_json::json!({"cmd": "ls", "n": [1, -2, 3.5, null, true]}),
            },
        },
        Message::TaskEvent {
            task_id: "t1".into(),
            offset: 4,
            at_ms: 6,
            event: TaskEvent::ApprovalRequest {
                approval_id: "a1".into(),
                summary: "rm -rf build".into(),
                detail: "in /tmp/x".into(),
                expires_at_ms: 9,
            },
        },
        Message::TaskEvent {
            task_id: "t1".into(),
            offset: 5,
            at_ms: 7,
            event: TaskEvent::Finished {
                status: FinishStatus::Succeeded,
                summary: "done".into(),
                denied: Vec::new(),
            },
        },
        Message::HistoryEnd { task_id: "t1".into(), next_offset: 6, more: false },
        Message::HistoryUnavailable { task_id: "t1".into(), requested_from: 0, earliest: 3 },
        Message::DeviceInfo(DeviceInfo {
            name: "Ana's phone".into(),
            platform: "ios".into(),
            app_version: "1.0".into(),
            ephemeral: false,
        }),
        Message::Refused { task_id: None, code: "busy".into(), message: "try later".into() },
    ];
    let mut v: Vec<Vec<u8>> =
        messages.iter().map(|m| m.encode().expect("seed message encodes")).collect();
    v.push(br#"{"v":2,"kind":"screen_share","x":1}"#.to_vec());
    v
}

fn link_envelopes() -> Vec<Vec<u8>> {
    let f = fixture();
    let phone_key = DeviceKey::from_bytes(f.phone_key);
    let mut phone = link(&f.phone_link);
    let mut e = Entropy::deterministic([11; 32]);
    let mut v = Vec::new();
    v.push(phone.ack().expect("ack"));
    v.push(
        phone.send(b"{\"v\":1,\"kind\":\"cancel\",\"task_id\":\"t\"}".to_vec()).expect("send").1,
    );
    v.extend(phone.resend(0).expect("resend"));
    v.push(phone.start_renewal(&phone_key, 1_000, &mut e).expect("renewal"));
    v.push(Envelope::PairHello { noise: vec![0; 96] }.encode());
    v
}

fn link_ops() -> Vec<Vec<u8>> {
    let plain = |c: Content| c.encode();
    let op = |p: Vec<u8>| {
        let mut v = vec![u8::try_from(p.len()).expect("short")];
        v.extend(p);
        v
    };
    let data =
        |seq, oldest, ack| plain(Content::Data { seq, oldest, ack, message: b"hi".to_vec() });
    vec![
        // In order, then a replay.
        [op(data(1, 1, 0)), op(data(2, 1, DESKTOP_SENT)), vec![0xff]].concat(),
        // A gap (nack back), then the missing one.
        [op(data(2, 1, 1)), op(data(1, 1, 1))].concat(),
        // Resync: the phone no longer holds 1..=4.
        op(data(6, 5, 0)),
        // Acks, nacks (resend), an ack beyond what was sent.
        [
            op(plain(Content::Ack { ack: 2 })),
            op(plain(Content::Nack { expected: 1 })),
            op(plain(Content::Ack { ack: 99 })),
        ]
        .concat(),
        // A pairing content on an established link; a rekeyed record.
        [op(plain(Content::PairConfirm)), {
            let mut o = op(data(1, 1, 0));
            o[0] |= 0x80;
            o
        }]
        .concat(),
    ]
}

fn main() {
    let root: PathBuf =
        std::env::args_os().nth(1).map_or_else(|| PathBuf::from("corpus"), PathBuf::from);
    let _ = session(&fixture().phone_session);
    write(&root, "frame_decode", &frames());
    write(&root, "envelope_decode", &envelopes());
    write(&root, "content_decode", &contents());
    write(
        &root,
        "qr_payload_decode",
        &qr_payloads().iter().map(QrPayload::encode).collect::<Vec<_>>(),
    );
    write(
        &root,
        "pairing_link_parse",
        &qr_payloads()
            .iter()
            .map(|p| p.to_link("https://relay.example.com/p").into_bytes())
            .collect::<Vec<_>>(),
    );
    write(&root, "message_decode", &messages());
    write(
        &root,
        "device_info_from_json",
        &[
            DeviceInfo {
                name: "build-box".into(),
                platform: "linux".into(),
                app_version: "0.1.0".into(),
                ephemeral: false,
            }
            .to_json(),
            br#"{"v":1,"name":"x","platform":"web","app_version":"1","extra":[1]}"#.to_vec(),
        ],
    );
    write(&root, "record_open", &envelopes());
    write(&root, "link_receive", &link_envelopes());
    write(&root, "link_receive_sealed", &link_ops());
    write(
        &root,
        "pairing_states",
        &(0u8..4)
            .zip(tandem_fuzz::pairing::honest())
            .map(|(stage, m)| [vec![stage], m.clone()].concat())
            .collect::<Vec<_>>(),
    );
    write(&root, "frame_peek_send", &frames());
    write(&root, "relay_auth_verify", &relay_auth());
}

/// `mode ‖ roles ‖ key ‖ proof ‖ name` inputs for `relay_auth_verify`.
fn relay_auth() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (mode, roles, name) in [
        (1u8, 0u8, "relay.example.com"),
        (1, 3, "Relay.Example.COM."),
        (1, 1, " relay.example.com "),
        (3, 0, "relay.example.com"),
        (1, 0, "relay.example.com:443"),
        (0, 0, "relay.example.com"),
    ] {
        out.push(
            [vec![mode, roles], vec![0x42; 32], vec![0x17; 32], name.as_bytes().to_vec()].concat(),
        );
    }
    out
}
