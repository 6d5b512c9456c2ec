//! The pairing handshake (PROTOCOL.md §9.4) in every state that anyone
//! holding the QR code (or sitting on the relay's mailbox) can send into:
//! input `stage u8 ‖ envelope bytes`, the envelope handed to
//!
//! * stage 0: the desktop's offer, `DesktopPairing::on_hello` (a `PairHello`
//!   from whoever scanned the QR code);
//! * stage 1: the desktop after the real phone's hello, `on_confirm`;
//! * stage 2: the phone after its hello, `PhonePairing::on_welcome`;
//! * stage 3: the phone after its confirm, `PhoneAwaitingResult::on_result`.
//!
//! Nothing panics, and in stages 1 and 3 (messages bound to the real
//! handshake's keys, which a QR holder does not have) only the real
//! message, byte for byte, is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::pairing::Handshake;
use tandem_proto::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    let Some((&stage, rest)) = data.split_first() else { return };
    let Ok(env) = Envelope::decode(rest) else { return };
    let mut h = Handshake::new();
    match stage % 4 {
        0 => {
            let _ = h.offer.on_hello(&env, &tandem_fuzz::pairing::info(), h.now, &mut h.entropy);
        }
        1 => {
            let ok = h.awaiting_confirm.on_confirm(&env).is_ok();
            assert!(
                !ok || rest == h.confirm,
                "a forged confirm passed: {}",
                tandem_fuzz::hex(rest)
            );
        }
        2 => {
            let _ = h.phone.on_welcome(&env);
        }
        _ => {
            let ok = h.phone_waiting.on_result(&env).is_ok();
            assert!(!ok || rest == h.result, "a forged result passed: {}", tandem_fuzz::hex(rest));
        }
    }
});
