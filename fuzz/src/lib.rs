//! Shared fixtures for the fuzz targets and the seed generator
//! (`examples/gen_seeds.rs`): a deterministic, fully paired desktop/phone pair
//! built through the public pairing API, kept as JSON so each fuzz iteration
//! starts from the same state without redoing the handshakes.

pub mod pairing;

use std::sync::OnceLock;

use tandem_proto::DeviceKey;
use tandem_proto::delivery::OutboxLimits;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::link::Link;
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PhonePairing};
use tandem_proto::record::Session;

/// The Unix time the fixture pairs at (and `pairing_link_parse` parses at).
pub const NOW: u64 = 1_800_000_000;

/// The session `record_open` opens records with.
#[must_use]
pub fn record_session() -> Session {
    Session::new([1; 8], [2; 32], [3; 32])
}

/// The other end of [`record_session`]: seals records it can open.
#[must_use]
pub fn record_peer() -> Session {
    Session::new([1; 8], [3; 32], [2; 32])
}

/// A paired desktop and phone, serialized.
pub struct Fixture {
    /// The desktop's secret key (the receiving side in the link targets).
    pub desktop_key: [u8; 32],
    /// The desktop's link, after it sent [`DESKTOP_SENT`] messages the phone
    /// has not acknowledged (so acks, nacks and resends have something to act on).
    pub desktop_link: String,
    /// The phone's secret key.
    pub phone_key: [u8; 32],
    /// The phone's link (has received the desktop's messages).
    pub phone_link: String,
    /// A copy of the phone's current session, to seal arbitrary plaintexts
    /// the desktop link will accept as authentic.
    pub phone_session: String,
}

/// How many messages the fixture's desktop sent before the fuzzing starts.
pub const DESKTOP_SENT: u64 = 3;

fn info(name: &str, platform: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: platform.into(),
        app_version: "0.1.0".into(),
        ephemeral: false,
    }
}

fn env(b: &[u8]) -> Envelope {
    Envelope::decode(b).expect("fixture envelope decodes")
}

fn build() -> Fixture {
    let mut e = Entropy::deterministic([42; 32]);
    let desktop_key = DeviceKey::generate(&mut e).expect("entropy");
    let phone_key = DeviceKey::generate(&mut e).expect("entropy");
    let offer = DesktopPairing::new(desktop_key.clone(), NOW, 120, None, &mut e).expect("offer");
    let (phone, hello) =
        PhonePairing::start(&phone_key, offer.payload(), &info("phone", "ios"), &mut e)
            .expect("hello");
    let (awaiting_confirm, welcome) =
        offer.on_hello(&env(&hello), &info("desktop", "linux"), NOW + 1, &mut e).expect("welcome");
    let (phone_waiting, confirm) = phone.on_welcome(&env(&welcome)).expect("confirm");
    let awaiting_user = awaiting_confirm.on_confirm(&env(&confirm)).expect("on_confirm");
    let (desktop_paired, result) = awaiting_user.accept(&mut e).expect("accept");
    let phone_paired = phone_waiting.on_result(&env(&result)).expect("on_result");

    let phone_session = serde_json::to_string(&phone_paired.session).expect("json");
    let mut desktop = Link::from_paired(desktop_paired, OutboxLimits::default());
    let mut phone = Link::from_paired(phone_paired, OutboxLimits::default());
    for i in 0..DESKTOP_SENT {
        let (_, record) = desktop.send(format!("desktop message {i}").into_bytes()).expect("send");
        phone.receive(&phone_key, &record, &mut e).expect("phone receives");
    }
    Fixture {
        desktop_key: desktop_key.to_bytes(),
        desktop_link: serde_json::to_string(&desktop).expect("json"),
        phone_key: phone_key.to_bytes(),
        phone_link: serde_json::to_string(&phone).expect("json"),
        phone_session,
    }
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// Deserialize a link from the fixture.
#[must_use]
pub fn link(json: &str) -> Link {
    serde_json::from_str(json).expect("fixture link deserializes")
}

/// Deserialize a session from the fixture.
#[must_use]
pub fn session(json: &str) -> Session {
    serde_json::from_str(json).expect("fixture session deserializes")
}

/// Hex for panic messages.
#[must_use]
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
