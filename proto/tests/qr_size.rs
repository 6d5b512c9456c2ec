//! The pairing link must fit a QR code a phone camera reads easily from a
//! terminal: version 7 or lower at error-correction level M, for relay hosts
//! of realistic length. The link is rendered as two segments (bytes for
//! `https://host/p#` or `http://lan-ip:port/p?n=<nonce>#`, alphanumeric for
//! the base32 payload), as the desktop agent renders it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use qrcode::bits::Bits;
use qrcode::{EcLevel, QrCode, Version};
use tandem_proto::PublicKey;
use tandem_proto::qr::{PairingLink, QrPayload, link_segments};

/// The smallest version at level M that holds the link in two segments.
fn version_of(link: &str) -> i16 {
    let (head, payload) = link_segments(link).expect("base32 payload");
    for v in 1..=40 {
        let mut bits = Bits::new(Version::Normal(v));
        let fits = bits.push_byte_data(head.as_bytes()).is_ok()
            && bits.push_alphanumeric_data(payload.as_bytes()).is_ok()
            && bits.push_terminator(EcLevel::M).is_ok();
        if fits {
            let code = QrCode::with_bits(bits, EcLevel::M).unwrap();
            assert_eq!(code.version(), Version::Normal(v));
            return v;
        }
    }
    panic!("does not fit any version");
}

fn payload(relay: Option<&str>) -> QrPayload {
    QrPayload {
        desktop: PublicKey([0xff; 32]),
        secret: [0xee; 32],
        expires_at: u32::MAX,
        relay: relay.map(Into::into),
    }
}

#[test]
fn qr_fits_version_7_at_m() {
    for (base, max) in [
        ("https://relay.example.com/p", 6),
        ("http://192.168.100.200:7878/p", 7),
        ("https://tandem.relay.mycompany.example/p", 7),
    ] {
        let link = payload(None).to_link(base);
        let v = version_of(&link);
        eprintln!("{} characters -> QR version {v} at M: {link}", link.len());
        assert!(v <= max, "{base}: version {v}");
        assert!(PairingLink::parse(&link, 0).is_ok());
    }
    // `tandem up` on plain http: every code carries a fresh nonce in the
    // query (8 base32 characters), still within version 7.
    for base in ["http://192.168.100.200:7878/p?n=ABCDEFGH", "http://10.0.0.2:7878/p?n=ABCDEFGH"] {
        let link = payload(None).to_link(base);
        let v = version_of(&link);
        eprintln!("{} characters -> QR version {v} at M: {link}", link.len());
        assert!(v <= 7, "{base}: version {v}");
        assert_eq!(PairingLink::parse(&link, 0).unwrap().query, "?n=ABCDEFGH");
    }
    // The budget: a base of up to 42 characters (a 32-character host name).
    let link = payload(None).to_link(&format!("https://{}/p", "a".repeat(32)));
    assert!(version_of(&link) <= 7, "{} chars", link.len());
}

#[test]
fn a_relay_on_another_origin_still_fits_version_9() {
    let v = version_of(
        &payload(Some("https://relay.example.com")).to_link("https://app.example.com/p"),
    );
    eprintln!("with a separate relay origin: version {v}");
    assert!(v <= 9);
}
