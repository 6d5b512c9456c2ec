//! `Link::receive` on the desktop side of a freshly paired link, with the raw
//! input as the envelope: never panics, and an error changes nothing (the
//! link's serde_json form is unchanged).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::DeviceKey;
use tandem_proto::entropy::Entropy;

fuzz_target!(|data: &[u8]| {
    let f = tandem_fuzz::fixture();
    let key = DeviceKey::from_bytes(f.desktop_key);
    let mut link = tandem_fuzz::link(&f.desktop_link);
    let before = serde_json::to_string(&link).expect("link serializes");
    let mut entropy = Entropy::deterministic([7; 32]);
    if let Err(e) = link.receive(&key, data, &mut entropy) {
        let after = serde_json::to_string(&link).expect("link serializes");
        assert_eq!(before, after, "failed receive ({e}) changed the link");
    }
});
