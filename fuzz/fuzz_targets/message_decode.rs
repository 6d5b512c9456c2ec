//! `Message::decode` never panics; a known message re-encodes (or is refused
//! as too large) and decodes back to an equal message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::message::{Decoded, Message, MessageError};

fuzz_target!(|data: &[u8]| {
    let Ok(Decoded::Known(message)) = Message::decode(data) else {
        return;
    };
    let bytes = match message.encode() {
        Ok(b) => b,
        Err(MessageError::TooLarge(_)) => return,
        Err(e) => panic!("decoded message {message:?} does not encode: {e}"),
    };
    assert_eq!(
        Message::decode(&bytes),
        Ok(Decoded::Known(message)),
        "message does not round-trip: input {:?} re-encodes as {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&bytes)
    );
});
