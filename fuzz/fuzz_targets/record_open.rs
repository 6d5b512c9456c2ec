//! `Session::open` on any decodable envelope: never panics, and a failed open
//! changes nothing (the session's serde_json form is unchanged).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::decode(data) else {
        return;
    };
    let mut session = tandem_fuzz::record_session();
    let before = serde_json::to_string(&session).expect("session serializes");
    if let Err(e) = session.open(&envelope) {
        let after = serde_json::to_string(&session).expect("session serializes");
        assert_eq!(before, after, "failed open ({e}) changed the session");
    }
});
