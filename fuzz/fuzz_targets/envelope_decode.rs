//! `Envelope::decode` never panics; a decoded envelope re-encodes to exactly
//! the input bytes and decodes back to an equal envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::hex;
use tandem_proto::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::decode(data) else {
        return;
    };
    let bytes = envelope.encode();
    assert_eq!(Envelope::decode(&bytes).as_ref(), Ok(&envelope), "envelope does not round-trip");
    assert!(
        bytes == data,
        "envelope is not canonical: input {} re-encodes as {}",
        hex(data),
        hex(&bytes)
    );
});
