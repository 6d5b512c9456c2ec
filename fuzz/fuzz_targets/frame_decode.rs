//! `Frame::decode` never panics; a decoded frame re-encodes, decodes back to
//! an equal frame, and re-encodes to exactly the input bytes (frames are canonical);
//! a refusal is `frame_too_large` only for input over `MAX_FRAME_LEN`
//! (PROTOCOL.md §4.4: an over-long payload in a frame that fits is `malformed_frame`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::hex;
use tandem_proto::ErrorCode;
use tandem_proto::frame::{Frame, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let frame = match Frame::decode(data) {
        Ok(frame) => frame,
        Err(e) => {
            assert!(
                e.code() != ErrorCode::FrameTooLarge || data.len() > MAX_FRAME_LEN,
                "a {}-byte frame refused as frame_too_large ({e})",
                data.len()
            );
            return;
        }
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
