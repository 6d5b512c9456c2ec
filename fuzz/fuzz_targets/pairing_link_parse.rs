//! `PairingLink::parse` (and `link_segments`) never panic on any string (the
//! input as lossy UTF-8, parsed at the fixed time `NOW`); a parsed link, shown
//! again with `to_link(origin + path)`, parses back to an equal link and
//! splits into the two QR segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::NOW;
use tandem_proto::qr::{PairingLink, link_segments};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = link_segments(&text);
    let Ok(link) = PairingLink::parse(&text, NOW) else {
        return;
    };
    assert!(!link.relay_origin().is_empty(), "empty relay origin");
    let shown = link.payload.to_link(&link.base());
    assert_eq!(
        PairingLink::parse(&shown, NOW).as_ref(),
        Ok(&link),
        "pairing link does not round-trip: {text:?} is shown again as {shown:?}"
    );
    assert!(link_segments(&shown).is_some(), "{shown:?} has no QR segments");
});
