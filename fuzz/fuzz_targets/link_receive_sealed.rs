//! Stateful `Link::receive` past the crypto: the input is a list of operations
//! whose plaintexts the phone seals under the real session, so the desktop's
//! content decoding and delivery logic (acks, nacks, gaps, resyncs, replays)
//! see attacker-chosen but authentic records. Never panics, and every
//! refused record leaves the link unchanged.
//!
//! Operations, one after another until the input ends:
//! * `0xff`: deliver the previous sealed record again (a replay);
//! * any other byte `b`: if `b & 0x80`, the phone ratchets its sending key
//!   first (`rekey_now`); then the next `b & 0x7f` bytes (fewer at the end of
//!   the input) are sealed as one record's plaintext and delivered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::DeviceKey;
use tandem_proto::entropy::Entropy;

fuzz_target!(|data: &[u8]| {
    let f = tandem_fuzz::fixture();
    let key = DeviceKey::from_bytes(f.desktop_key);
    let mut link = tandem_fuzz::link(&f.desktop_link);
    let mut phone = tandem_fuzz::session(&f.phone_session);
    let mut entropy = Entropy::deterministic([7; 32]);
    let mut last: Option<Vec<u8>> = None;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let record = if op == 0xff {
            match &last {
                Some(r) => r.clone(),
                None => continue,
            }
        } else {
            if op & 0x80 != 0 {
                phone.rekey_now();
            }
            let n = usize::from(op & 0x7f).min(rest.len());
            let (plain, tail) = rest.split_at(n);
            rest = tail;
            match phone.seal(plain) {
                Ok(r) => r,
                Err(_) => return,
            }
        };
        let before = serde_json::to_string(&link).expect("link serializes");
        if let Err(e) = link.receive(&key, &record, &mut entropy) {
            let after = serde_json::to_string(&link).expect("link serializes");
            assert_eq!(before, after, "failed receive ({e}) changed the link");
        }
        last = Some(record);
    }
});
