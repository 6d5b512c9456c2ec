//! The relay's forwarding fast path (`frame::peek_send`, which reads a
//! `Send`'s header in place, PROTOCOL.md §4) against the full decoder: they
//! agree on every input. A `Send` one takes and the other refuses would let
//! a frame through that a conforming relay must refuse, or refuse a good one;
//! and the `Deliver` the relay builds from it (`encode_deliver`) is exactly
//! what `Frame::encode` gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::frame::{FORWARD_HEADER_LEN, Frame, encode_deliver, peek_send};

fuzz_target!(|data: &[u8]| {
    match (peek_send(data), Frame::decode(data)) {
        (Some(h), Ok(Frame::Send { send_id, to, payload })) => {
            assert_eq!((h.send_id, h.to), (send_id, to));
            assert_eq!(&data[FORWARD_HEADER_LEN..], &payload[..]);
            let fast = encode_deliver(send_id, &to, &payload).expect("a taken payload fits");
            let full = Frame::Deliver { delivery_id: send_id, from: to, payload }.encode();
            assert_eq!(Ok(fast), full);
        }
        (Some(_), other) => panic!("peek_send took what decode gives as {other:?}"),
        (None, Ok(Frame::Send { .. })) => panic!("decode took a Send peek_send refuses"),
        (None, _) => {}
    }
});
