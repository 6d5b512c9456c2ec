//! Replays the inputs kept under `fuzz/regressions/` through the same checks
//! the fuzz targets make, on the stable toolchain, in every test run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;

use tandem_proto::qr::{PairingLink, QrPayload};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no regression inputs for {target}");
    out
}

#[test]
fn qr_payload_regressions_round_trip_or_are_refused() {
    for (name, bytes) in inputs("qr_payload_decode") {
        if let Ok(p) = QrPayload::decode(&bytes) {
            assert_eq!(QrPayload::decode(&p.encode()).as_ref(), Ok(&p), "{name}");
        }
    }
}

#[test]
fn pairing_link_regressions_round_trip_or_are_refused() {
    for (name, bytes) in inputs("pairing_link_parse") {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(link) = PairingLink::parse(&text, 0) {
            let again = link.payload.to_link(&link.base());
            assert_eq!(PairingLink::parse(&again, 0).as_ref(), Ok(&link), "{name}");
        }
        // The payload bytes on their own, as the QR decoder target feeds them.
        if let Ok(p) = QrPayload::decode(&bytes) {
            assert_eq!(QrPayload::decode(&p.encode()).as_ref(), Ok(&p), "{name}");
        }
    }
}
