//! Relay authentication (PROTOCOL.md §6.2) from the relay's side:
//! `RelayChallenge::verify` on attacker-chosen keys and proofs, and on real
//! proofs (`relay_auth::prove`) made for attacker-chosen names, roles and
//! keys, with a bit of the proof flipped or not.
//!
//! Input: `mode u8 ‖ role u8 ‖ key [32] ‖ proof [32] ‖ dialed name (lossy UTF-8)`.
//! Mode bit 0 clear: `key` and `proof` go to `verify` as they are (a forged
//! `Auth`); they must never verify. Set: `key` is a device's secret, which
//! proves for the dialed name as role bit 0 and the relay checks as role bit
//! 1, after flipping proof bit `proof[0]` when mode bit 1 is set: it must
//! verify exactly when the names normalise alike, the roles match and
//! nothing was flipped, and then name the key's device id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::entropy::Entropy;
use tandem_proto::frame::Frame;
use tandem_proto::relay_auth::{RelayAuthError, RelayChallenge, normalize_name, prove};
use tandem_proto::{DeviceKey, PublicKey, Role};

const RELAY: &str = "relay.example.com";

fn role(bit: u8) -> Role {
    if bit & 1 == 0 { Role::Desktop } else { Role::Phone }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, roles], rest)) = data.split_first_chunk::<2>() else { return };
    let Some((key, rest)) = rest.split_first_chunk::<32>() else { return };
    let Some((proof, name)) = rest.split_first_chunk::<32>() else { return };
    let challenge =
        RelayChallenge::new(&mut Entropy::deterministic([9; 32]), RELAY).expect("challenge");
    if mode & 1 == 0 {
        let got = challenge.verify(role(roles), &PublicKey(*key), proof);
        assert!(got.is_err(), "a forged proof verified: {}", tandem_fuzz::hex(data));
        return;
    }
    let device = DeviceKey::from_bytes(*key);
    let dialed = String::from_utf8_lossy(name);
    let (proving, checking) = (role(roles), role(roles >> 1));
    let same_name = normalize_name(&dialed).as_deref() == Some(RELAY);
    match prove(&device, proving, &dialed, &challenge.frame()) {
        Ok(Frame::Auth { public_key, proof }) => {
            assert!(same_name, "proved for another relay's name {dialed:?}");
            let mut proof = proof;
            let flipped = mode & 2 != 0;
            if flipped {
                let bit = proof[0] % 8;
                proof[usize::from(proof[1] % 32)] ^= 1 << bit;
            }
            let got = challenge.verify(checking, &public_key, &proof);
            if proving == checking && !flipped {
                assert_eq!(got, Ok(device.public().device_id()), "a real proof did not verify");
            } else {
                assert_eq!(got, Err(RelayAuthError::BadProof), "a wrong proof verified");
            }
        }
        Ok(other) => panic!("prove returned {other:?}"),
        Err(RelayAuthError::WrongRelay { .. } | RelayAuthError::NameTooLong) => {
            assert!(!same_name, "refused to prove for the relay's own name {dialed:?}");
        }
        Err(e) => panic!("prove failed: {e}"),
    }
});
