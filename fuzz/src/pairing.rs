//! A pairing handshake stopped in each state a QR holder can send into
//! (`fuzz_targets/pairing_states.rs`), rebuilt deterministically for every
//! input, with the honest messages of the run it stands for.

use std::sync::OnceLock;

use tandem_proto::DeviceKey;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{
    DesktopAwaitingConfirm, DesktopPairing, PhoneAwaitingResult, PhonePairing,
};

use crate::NOW;

/// The device info both sides give.
#[must_use]
pub fn info() -> DeviceInfo {
    DeviceInfo {
        name: "fuzz".into(),
        platform: "linux".into(),
        app_version: "0.1.0".into(),
        ephemeral: false,
    }
}

/// Every state at once, from the same deterministic run.
pub struct Handshake {
    /// The desktop's offer, before any hello.
    pub offer: DesktopPairing,
    /// The desktop after the phone's hello (waiting for `PairConfirm`).
    pub awaiting_confirm: DesktopAwaitingConfirm,
    /// The phone after sending its hello (waiting for `PairWelcome`).
    pub phone: PhonePairing,
    /// The phone after sending its confirm (waiting for `PairResult`).
    pub phone_waiting: PhoneAwaitingResult,
    /// The honest `PairConfirm` envelope of this run.
    pub confirm: &'static [u8],
    /// The honest `PairResult` envelope of this run.
    pub result: &'static [u8],
    /// The time the handshake runs at.
    pub now: u64,
    /// Entropy for the calls the target makes.
    pub entropy: Entropy,
}

fn env(b: &[u8]) -> Envelope {
    Envelope::decode(b).expect("handshake envelope decodes")
}

struct Run {
    offer: DesktopPairing,
    awaiting_confirm: DesktopAwaitingConfirm,
    phone: PhonePairing,
    phone_waiting: PhoneAwaitingResult,
    hello: Vec<u8>,
    welcome: Vec<u8>,
    confirm: Vec<u8>,
}

fn run() -> Run {
    let mut e = Entropy::deterministic([5; 32]);
    let desktop_key = DeviceKey::generate(&mut e).expect("entropy");
    let phone_key = DeviceKey::generate(&mut e).expect("entropy");
    let offer = DesktopPairing::new(desktop_key.clone(), NOW, 120, None, &mut e).expect("offer");
    let (phone, hello) =
        PhonePairing::start(&phone_key, offer.payload(), &info(), &mut e).expect("hello");
    let (awaiting_confirm, welcome) =
        offer.on_hello(&env(&hello), &info(), NOW + 1, &mut e).expect("welcome");
    // The phone that received the welcome, and a twin still waiting for it.
    let twin = {
        let mut e2 = Entropy::deterministic([5; 32]);
        let _ = DeviceKey::generate(&mut e2);
        let pk = DeviceKey::generate(&mut e2).expect("entropy");
        let o = DesktopPairing::new(desktop_key, NOW, 120, None, &mut e2).expect("offer");
        let (p, _) = PhonePairing::start(&pk, o.payload(), &info(), &mut e2).expect("hello");
        p
    };
    let (phone_waiting, confirm) = phone.on_welcome(&env(&welcome)).expect("confirm");
    Run { offer, awaiting_confirm, phone: twin, phone_waiting, hello, welcome, confirm }
}

/// The honest run's envelopes: `[hello, welcome, confirm, result]`, one
/// for each stage of `pairing_states` (the seeds).
#[must_use]
pub fn honest() -> &'static [Vec<u8>; 4] {
    static H: OnceLock<[Vec<u8>; 4]> = OnceLock::new();
    H.get_or_init(|| {
        let r = run();
        let awaiting_user = r.awaiting_confirm.on_confirm(&env(&r.confirm)).expect("on_confirm");
        let mut e = Entropy::deterministic([6; 32]);
        let (_, result) = awaiting_user.accept(&mut e).expect("accept");
        [r.hello, r.welcome, r.confirm, result]
    })
}

impl Handshake {
    /// A fresh copy of every state.
    #[must_use]
    pub fn new() -> Self {
        let [_, _, confirm, result] = honest();
        let r = run();
        Self {
            offer: r.offer,
            awaiting_confirm: r.awaiting_confirm,
            phone: r.phone,
            phone_waiting: r.phone_waiting,
            confirm,
            result,
            now: NOW + 1,
            entropy: Entropy::deterministic([7; 32]),
        }
    }
}

impl Default for Handshake {
    fn default() -> Self {
        Self::new()
    }
}
