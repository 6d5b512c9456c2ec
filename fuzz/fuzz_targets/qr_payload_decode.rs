//! `QrPayload::decode` never panics; a decoded payload re-encodes to exactly
//! the input bytes and decodes back to an equal payload (what the desktop
//! shows is what the phone reads).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::hex;
use tandem_proto::qr::QrPayload;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = QrPayload::decode(data) else {
        return;
    };
    let _ = payload.pairing_id();
    let bytes = payload.encode();
    assert_eq!(
        QrPayload::decode(&bytes).as_ref(),
        Ok(&payload),
        "QR payload does not round-trip: input {} re-encodes as {}",
        hex(data),
        hex(&bytes)
    );
    assert!(
        bytes == data,
        "QR payload is not canonical: input {} re-encodes as {}",
        hex(data),
        hex(&bytes)
    );
});
