//! Pairing through an untrusted relay, end to end at the protocol level:
//! success, the codes match, a relay that swaps keys is caught, a wrong
//! secret or a tampered message fails, refusal and expiry are reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use tandem_proto::content::Content;
use tandem_proto::entropy::Entropy;
use tandem_proto::envelope::Envelope;
use tandem_proto::message::DeviceInfo;
use tandem_proto::pairing::{DesktopPairing, PairingError, PhonePairing};
use tandem_proto::qr::PairingLink;
use tandem_proto::{DeviceKey, frame::Frame};

const NOW: u64 = 1_800_000_000;

fn info(name: &str, platform: &str) -> DeviceInfo {
    DeviceInfo {
        name: name.into(),
        platform: platform.into(),
        app_version: "0.1.0".into(),
        ephemeral: false,
    }
}

fn env(b: &[u8]) -> Envelope {
    Envelope::decode(b).unwrap()
}

struct Setup {
    desktop_key: DeviceKey,
    phone_key: DeviceKey,
    offer: DesktopPairing,
    e: Entropy,
}

fn setup() -> Setup {
    let mut e = Entropy::deterministic([42; 32]);
    let desktop_key = DeviceKey::generate(&mut e).unwrap();
    let phone_key = DeviceKey::generate(&mut e).unwrap();
    let offer = DesktopPairing::new(desktop_key.clone(), NOW, 120, None, &mut e).unwrap();
    Setup { desktop_key, phone_key, offer, e }
}

#[test]
fn phone_and_desktop_pair_show_the_same_code_and_can_talk() {
    let Setup { desktop_key, phone_key, offer, mut e } = setup();
    // The desktop shows a link; the phone scans and parses it.
    let link = offer.payload().to_link("https://relay.example.com/p");
    let scanned = PairingLink::parse(&link, NOW + 5).unwrap();
    assert_eq!(scanned.payload.pairing_id(), offer.pairing_id());

    // Through the relay: PairClaim carries the hello, PairMessage the rest.
    let (phone, hello) =
        PhonePairing::start(&phone_key, &scanned.payload, &info("Ana's phone", "ios"), &mut e)
            .unwrap();
    let claim = Frame::PairClaim { request_id: 1, pairing_id: offer.pairing_id(), payload: hello };
    let Frame::PairClaim { payload: hello, .. } = Frame::decode(&claim.encode().unwrap()).unwrap()
    else {
        unreachable!()
    };
    let (awaiting_confirm, welcome) =
        offer.on_hello(&env(&hello), &info("build-box", "linux"), NOW + 6, &mut e).unwrap();
    let (phone_waiting, confirm) = phone.on_welcome(&env(&welcome)).unwrap();
    let awaiting_user = awaiting_confirm.on_confirm(&env(&confirm)).unwrap();

    // Both screens show the same code and the right names.
    assert_eq!(awaiting_user.sas(), phone_waiting.sas());
    assert_eq!(awaiting_user.phone_info().name, "Ana's phone");
    assert_eq!(phone_waiting.desktop_info().platform, "linux");
    assert_eq!(awaiting_user.phone_public(), phone_key.public());

    let (mut desktop_side, result) = awaiting_user.accept(&mut e).unwrap();
    let mut phone_side = phone_waiting.on_result(&env(&result)).unwrap();
    assert_eq!(desktop_side.public_key, phone_key.public());
    assert_eq!(phone_side.public_key, desktop_key.public());
    assert_eq!(*desktop_side.session_psk, *phone_side.session_psk);
    assert_ne!(*desktop_side.session_psk, [0; 32]);

    // The pairing session is live at once, both ways.
    let r = phone_side.session.seal(&Content::Ack { ack: 0 }.encode()).unwrap();
    assert_eq!(
        Content::decode(&desktop_side.session.open(&env(&r)).unwrap()).unwrap(),
        Content::Ack { ack: 0 }
    );
    let r = desktop_side.session.seal(b"\x02\0\0\0\0\0\0\0\x01").unwrap();
    assert!(phone_side.session.open(&env(&r)).is_ok());
}

#[test]
fn a_relay_that_substitutes_its_own_keys_is_caught() {
    // A malicious relay sees the pairing id but not the secret. It answers the
    // phone's hello as if it were the desktop, with its own static key: the
    // phone pinned the desktop's key from the QR, so the welcome fails.
    let Setup { phone_key, offer, mut e, .. } = setup();
    let (phone, hello) =
        PhonePairing::start(&phone_key, offer.payload(), &info("p", "ios"), &mut e).unwrap();
    let mallory = DeviceKey::generate(&mut e).unwrap();
    let mut fake_qr = offer.payload().clone();
    fake_qr.desktop = mallory.public();
    let fake_offer = DesktopPairing::new(mallory, NOW, 120, None, &mut e).unwrap();
    // Without the secret the relay cannot even read the hello as the desktop…
    assert!(matches!(
        fake_offer.on_hello(&env(&hello), &info("d", "linux"), NOW, &mut e),
        Err(PairingError::Handshake(_))
    ));
    // …and a welcome made with another secret does not authenticate at the phone.
    let (_, other_hello) =
        PhonePairing::start(&phone_key, fake_offer.payload(), &info("p", "ios"), &mut e).unwrap();
    let (_, fake_welcome) =
        fake_offer.on_hello(&env(&other_hello), &info("d", "linux"), NOW, &mut e).unwrap();
    assert!(matches!(phone.on_welcome(&env(&fake_welcome)), Err(PairingError::Handshake(_))));
}

#[test]
fn a_relay_cannot_complete_pairing_in_the_phones_place() {
    // The relay knows the desktop's public key (it is in every QR link it
    // serves), the pairing id and the expiry, but not the secret. It builds a
    // hello with the right prologue and a guessed PSK.
    let Setup { offer, mut e, .. } = setup();
    let attacker = DeviceKey::generate(&mut e).unwrap();
    let mut prologue = b"tandem pair v1".to_vec();
    prologue.extend_from_slice(&offer.pairing_id());
    prologue.extend_from_slice(&offer.payload().expires_at.to_be_bytes());
    let mut hs = snow::Builder::with_resolver(
        tandem_proto::crypto::PAIRING_NOISE.parse().unwrap(),
        Box::new(tandem_proto::crypto::TandemResolver::new(Entropy::os())),
    )
    .local_private_key(&attacker.to_bytes())
    .unwrap()
    .remote_public_key(&offer.payload().desktop.0)
    .unwrap()
    .psk(2, &[0; 32])
    .unwrap()
    .prologue(&prologue)
    .unwrap()
    .build_initiator()
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = hs.write_message(&info("x", "web").to_json(), &mut buf).unwrap();
    let hello = Envelope::PairHello { noise: buf[..n].to_vec() };
    // IKpsk2 mixes the PSK into message 2, so the desktop answers…
    let (awaiting_confirm, welcome) =
        offer.on_hello(&hello, &info("d", "linux"), NOW, &mut e).unwrap();
    // …but the attacker cannot read the answer,
    let Envelope::PairWelcome { noise } = env(&welcome) else { unreachable!() };
    assert!(hs.read_message(&noise, &mut buf).is_err());
    // and anything it sends as a confirm is refused.
    let forged = Envelope::Record { session_id: [0; 8], counter: 0, ciphertext: vec![0; 17] };
    assert!(awaiting_confirm.on_confirm(&forged).is_err());
}

#[test]
fn a_hello_for_another_qr_code_is_refused() {
    // The prologue binds the pairing id and expiry: a hello made from another
    // QR code (or a guessed secret) does not even decrypt.
    let Setup { phone_key, offer, mut e, .. } = setup();
    let mut guessed = offer.payload().clone();
    guessed.secret = [0; 32];
    let (_, hello) = PhonePairing::start(&phone_key, &guessed, &info("x", "web"), &mut e).unwrap();
    assert!(matches!(
        offer.on_hello(&env(&hello), &info("d", "linux"), NOW, &mut e),
        Err(PairingError::Handshake(_))
    ));
}

#[test]
fn tampered_pairing_messages_fail() {
    let Setup { phone_key, offer, mut e, .. } = setup();
    let (_, hello) =
        PhonePairing::start(&phone_key, offer.payload(), &info("p", "ios"), &mut e).unwrap();
    for i in 2..hello.len() {
        let mut t = hello.clone();
        t[i] ^= 0x80;
        assert!(offer.on_hello(&env(&t), &info("d", "linux"), NOW, &mut e).is_err(), "byte {i}");
    }
    let (phone, hello) =
        PhonePairing::start(&phone_key, offer.payload(), &info("p", "ios"), &mut e).unwrap();
    let (_, welcome) = offer.on_hello(&env(&hello), &info("d", "linux"), NOW, &mut e).unwrap();
    let mut t = welcome.clone();
    *t.last_mut().unwrap() ^= 1;
    assert!(phone.on_welcome(&env(&t)).is_err());
}

#[test]
fn refusal_and_expiry_are_reported() {
    let Setup { phone_key, offer, mut e, .. } = setup();
    let (phone, hello) =
        PhonePairing::start(&phone_key, offer.payload(), &info("p", "ios"), &mut e).unwrap();
    assert_eq!(
        offer.on_hello(&env(&hello), &info("d", "linux"), NOW + 120, &mut e).err(),
        Some(PairingError::Expired)
    );
    let (waiting, welcome) =
        offer.on_hello(&env(&hello), &info("d", "linux"), NOW + 1, &mut e).unwrap();
    let (phone_waiting, confirm) = phone.on_welcome(&env(&welcome)).unwrap();
    let user = waiting.on_confirm(&env(&confirm)).unwrap();
    let refusal = user.refuse("the codes did not match").unwrap();
    assert_eq!(
        phone_waiting.on_result(&env(&refusal)).err(),
        Some(PairingError::Refused("the codes did not match".into()))
    );
}

#[test]
fn a_confirm_replayed_from_another_pairing_is_refused() {
    let Setup { phone_key, offer, mut e, .. } = setup();
    let run = |e: &mut Entropy| {
        let (phone, hello) =
            PhonePairing::start(&phone_key, offer.payload(), &info("p", "ios"), e).unwrap();
        let (waiting, welcome) = offer.on_hello(&env(&hello), &info("d", "linux"), NOW, e).unwrap();
        let (_, confirm) = phone.on_welcome(&env(&welcome)).unwrap();
        (waiting, confirm)
    };
    let (_, old_confirm) = run(&mut e);
    let (waiting, _) = run(&mut e);
    assert!(waiting.on_confirm(&env(&old_confirm)).is_err());
}
