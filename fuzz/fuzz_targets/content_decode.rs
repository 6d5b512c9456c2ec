//! `Content::decode` never panics; decoded content re-encodes to exactly the
//! input bytes and decodes back to equal content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::hex;
use tandem_proto::content::Content;

fuzz_target!(|data: &[u8]| {
    let Ok(content) = Content::decode(data) else {
        return;
    };
    let bytes = content.encode();
    assert_eq!(Content::decode(&bytes).as_ref(), Ok(&content), "content does not round-trip");
    assert!(
        bytes == data,
        "content is not canonical: input {} re-encodes as {}",
        hex(data),
        hex(&bytes)
    );
});
