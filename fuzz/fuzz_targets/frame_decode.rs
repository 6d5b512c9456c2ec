//! `Frame::decode` never panics; a decoded frame re-encodes, decodes back to
//! an equal frame, and re-encodes to exactly the input bytes (frames are canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::hex;
use tandem_proto::frame::Frame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    let bytes = match frame.encode() {
        Ok(b) => b,
        Err(e) => panic!("decoded frame {frame:?} does not encode: {e}"),
    };
    assert_eq!(Frame::decode(&bytes).as_ref(), Ok(&frame), "frame does not round-trip");
    assert!(
        bytes == data,
        "frame is not canonical: input {} re-encodes as {}",
        hex(data),
        hex(&bytes)
    );
});
