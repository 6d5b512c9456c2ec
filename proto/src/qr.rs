//! The QR pairing payload and the link it is shown as.
//!
//! The QR code encodes `https://<relay host>/<path>[?<query>]#<BASE32
//! payload>`. A phone camera opens it in the browser (the web client) or in
//! an app that claims the link; browsers never send the fragment to any
//! server. The optional query is not part of the pairing: a desktop serving
//! the web client over plain `http://` puts a fresh random nonce there
//! (`?n=…`), so every code opens an address no browser has cached.
//!
//! The payload is RFC 4648 base32 in upper case without padding, because
//! those characters are all in the QR code's alphanumeric mode (5.5 bits per
//! character instead of 8): rendered as a byte segment for
//! `https://host/path#` followed by an alphanumeric segment for the payload,
//! a link whose `https://host/p` base is up to 42 characters (a 32-character
//! host) fits QR version 7 at error
//! correction M (see [`link_segments`] and the `qr_size` test). Scheme and
//! host stay lower case: Android matches App Links case-sensitively.
//!
//! Payload (version 1): `version u8 ‖ desktop public key [32] ‖ secret [32]
//! ‖ expires_at u32 (Unix seconds)`, 69 bytes, optionally followed by
//! `len u8 ‖ relay URL` when the web client is served from another origin
//! than the relay. The pairing id the relay sees is derived from the secret
//! ([`QrPayload::pairing_id`]); the secret itself never leaves the two devices.

use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::{CodecError, Reader};
use crate::identity::PublicKey;
use crate::kdf::{label, mac};

/// The payload format version.
pub const QR_VERSION: u8 = 1;

/// Length of the fixed part of the payload.
pub const QR_FIXED_LEN: usize = 69;

/// Longest relay URL a payload may carry.
pub const MAX_RELAY_URL_LEN: usize = 128;

/// Why a link or payload was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QrError {
    /// Not an `http(s)://host/path[?query]#payload` link.
    #[error("not a Tandem pairing link: {0}")]
    NotALink(&'static str),
    /// The fragment is not base32.
    #[error("the pairing code is damaged (not base32)")]
    BadEncoding,
    /// A payload version this build does not know.
    #[error(
        "pairing code version {0} is not supported (this app reads version {QR_VERSION}); update the app or the desktop"
    )]
    WrongVersion(u8),
    /// The payload has the wrong length or a bad field.
    #[error("the pairing code has a bad length or field ({0})")]
    BadLength(String),
    /// The code has expired.
    #[error("the pairing code expired {ago_secs} s ago; show a new one on the desktop")]
    Expired {
        /// How long ago.
        ago_secs: u64,
    },
}

/// What the QR code carries.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct QrPayload {
    /// The desktop's long-term public key (pinned by the phone).
    #[zeroize(skip)]
    pub desktop: PublicKey,
    /// The one-time secret: the Noise PSK of the pairing handshake.
    pub secret: [u8; 32],
    /// When the code stops working (Unix seconds).
    pub expires_at: u32,
    /// The relay to use when it is not the link's own origin.
    pub relay: Option<String>,
}

impl std::fmt::Debug for QrPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QrPayload")
            .field("desktop", &self.desktop)
            .field("expires_at", &self.expires_at)
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

impl QrPayload {
    /// The pairing id the relay's mailbox is keyed by:
    /// `mac(secret, "tandem pairing id v1")[..16]`.
    #[must_use]
    pub fn pairing_id(&self) -> [u8; 16] {
        pairing_id(&self.secret)
    }

    /// Check the optional relay URL: an `http(s)://host[:port]` origin of at
    /// most [`MAX_RELAY_URL_LEN`] bytes.
    ///
    /// # Errors
    /// [`QrError::BadLength`] otherwise.
    pub fn validate_relay(relay: &str) -> Result<(), QrError> {
        if relay.len() > MAX_RELAY_URL_LEN {
            return Err(QrError::BadLength(format!("relay URL of {} bytes", relay.len())));
        }
        match split_origin(relay) {
            Ok((_, "")) => Ok(()),
            _ => Err(QrError::BadLength("relay URL must be http(s)://host[:port]".into())),
        }
    }

    /// Encode to bytes. The relay URL, if any, must pass
    /// [`Self::validate_relay`] ([`crate::pairing::DesktopPairing::new`] checks it).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(QR_FIXED_LEN + 1 + MAX_RELAY_URL_LEN);
        b.push(QR_VERSION);
        b.extend_from_slice(&self.desktop.0);
        b.extend_from_slice(&self.secret);
        b.extend_from_slice(&self.expires_at.to_be_bytes());
        if let Some(r) = &self.relay {
            let r = r.get(..r.len().min(MAX_RELAY_URL_LEN)).unwrap_or_default();
            b.push(r.len() as u8);
            b.extend_from_slice(r.as_bytes());
        }
        b
    }

    /// Decode bytes (does not check expiry; see [`PairingLink::parse`]).
    ///
    /// # Errors
    /// [`QrError`] for an unknown version, a bad length or a bad relay URL.
    pub fn decode(bytes: &[u8]) -> Result<Self, QrError> {
        let bad = |e: CodecError| QrError::BadLength(e.to_string());
        let mut r = Reader::new(bytes);
        let version = r.u8("version").map_err(bad)?;
        if version != QR_VERSION {
            return Err(QrError::WrongVersion(version));
        }
        if bytes.len() < QR_FIXED_LEN {
            return Err(QrError::BadLength(format!(
                "{} bytes, expected {QR_FIXED_LEN}",
                bytes.len()
            )));
        }
        let desktop = PublicKey(r.array("desktop").map_err(bad)?);
        let secret = r.array("secret").map_err(bad)?;
        let expires_at = r.u32("expires_at").map_err(bad)?;
        let relay = if r.remaining() > 0 {
            let len = usize::from(r.u8("relay_len").map_err(bad)?);
            if len > MAX_RELAY_URL_LEN {
                return Err(QrError::BadLength(format!("relay URL of {len} bytes")));
            }
            let url = std::str::from_utf8(r.bytes(len, "relay").map_err(bad)?)
                .map_err(|_| QrError::BadLength("relay URL is not UTF-8".into()))?;
            Self::validate_relay(url)?;
            Some(url.to_owned())
        } else {
            None
        };
        r.finish().map_err(bad)?;
        Ok(Self { desktop, secret, expires_at, relay })
    }

    /// The link to show as a QR code: `base` (e.g. `https://relay.example.com/p`,
    /// optionally with a query such as `?n=…`) followed by `#` and the
    /// base32 payload.
    #[must_use]
    pub fn to_link(&self, base: &str) -> String {
        format!("{base}#{}", data_encoding::BASE32_NOPAD.encode(&self.encode()))
    }
}

/// Split a link into the two QR segments that encode it most compactly:
/// everything up to and including `#` (byte mode) and the payload
/// (alphanumeric mode). `None` if the payload is not upper-case base32.
#[must_use]
pub fn link_segments(link: &str) -> Option<(&str, &str)> {
    let hash = link.find('#')?;
    let (head, payload) = link.split_at(hash + 1);
    payload
        .bytes()
        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        .then_some((head, payload))
}

/// The pairing id for a QR secret.
#[must_use]
pub fn pairing_id(secret: &[u8; 32]) -> [u8; 16] {
    let m = mac(secret, label::PAIRING_ID, &[]);
    let mut id = [0u8; 16];
    id.copy_from_slice(m.get(..16).unwrap_or(&[0; 16]));
    id
}

/// A parsed pairing link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingLink {
    /// `scheme://host[:port]` of the link.
    pub origin: String,
    /// The link's path (`/p`).
    pub path: String,
    /// The link's query with its `?` (`?n=…`), or empty. Carries nothing the
    /// pairing uses.
    pub query: String,
    /// The payload.
    pub payload: QrPayload,
}

impl PairingLink {
    /// Parse a scanned link and check that it has not expired at `now_unix`.
    ///
    /// # Errors
    /// [`QrError`] naming what is wrong: not a link, damaged, wrong version,
    /// bad length, or expired.
    pub fn parse(link: &str, now_unix: u64) -> Result<Self, QrError> {
        let (before, fragment) =
            link.trim().split_once('#').ok_or(QrError::NotALink("no #payload"))?;
        let (before, query) = match before.find('?') {
            Some(q) => before.split_at(q),
            None => (before, ""),
        };
        let (origin, path) = split_origin(before)?;
        if !path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b)) {
            return Err(QrError::NotALink("unexpected characters in the path"));
        }
        if !query.bytes().skip(1).all(|b| b.is_ascii_alphanumeric() || b"-_.~=&".contains(&b)) {
            return Err(QrError::NotALink("unexpected characters in the query"));
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(fragment.to_ascii_uppercase().as_bytes())
            .map_err(|_| QrError::BadEncoding)?;
        let payload = QrPayload::decode(&bytes)?;
        if now_unix >= u64::from(payload.expires_at) {
            return Err(QrError::Expired { ago_secs: now_unix - u64::from(payload.expires_at) });
        }
        Ok(Self {
            origin: origin.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            payload,
        })
    }

    /// Everything before the `#`: `origin`, `path` and `query`, as
    /// [`QrPayload::to_link`] takes it.
    #[must_use]
    pub fn base(&self) -> String {
        format!("{}{}{}", self.origin, self.path, self.query)
    }

    /// The relay's origin: the payload's relay URL if it carries one, else
    /// the link's own origin.
    #[must_use]
    pub fn relay_origin(&self) -> &str {
        self.payload.relay.as_deref().unwrap_or(&self.origin)
    }
}

/// Split `scheme://authority/path` into (`scheme://authority`, `/path`).
/// Plain `http` is allowed only for hosts on the local network (loopback,
/// private and link-local addresses, `localhost`, `*.local`, `*.home.arpa`),
/// where `tandem up` serves a relay without a certificate.
fn split_origin(s: &str) -> Result<(&str, &str), QrError> {
    let (rest, plain) = if let Some(r) = s.strip_prefix("https://") {
        (r, false)
    } else if let Some(r) = s.strip_prefix("http://") {
        (r, true)
    } else {
        return Err(QrError::NotALink("the scheme must be https (or http on a local network)"));
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    let host = rest.get(..host_end).unwrap_or_default();
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return Err(QrError::NotALink("bad host"));
    }
    if plain && !is_local_host(host) {
        return Err(QrError::NotALink(
            "plain http is only allowed for a relay on the local network",
        ));
    }
    let split = s.len() - rest.len() + host_end;
    Ok((s.get(..split).unwrap_or_default(), s.get(split..).unwrap_or_default()))
}

/// Whether `authority` (`host[:port]`) names a host on the local network.
fn is_local_host(authority: &str) -> bool {
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".local") || host.ends_with(".home.arpa") {
        return true;
    }
    if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
        let [a, b, ..] = v4.octets();
        // Loopback, RFC 1918, link-local, and 100.64/10 (carrier-grade NAT, Tailscale).
        return v4.is_loopback()
            || v4.is_private()
            || v4.is_link_local()
            || (a == 100 && (64..128).contains(&b));
    }
    if let Ok(v6) = host.parse::<std::net::Ipv6Addr>() {
        let first = v6.segments().first().copied().unwrap_or_default();
        // Loopback, unique local fc00::/7, link-local fe80::/10.
        return v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QrPayload {
        QrPayload {
            desktop: PublicKey([4; 32]),
            secret: [5; 32],
            expires_at: 1_000_120,
            relay: None,
        }
    }

    #[test]
    fn link_round_trips_with_clear_errors() {
        let link = sample().to_link("https://relay.example.com/p");
        let parsed = PairingLink::parse(&link, 1_000_000).unwrap();
        assert_eq!(parsed.origin, "https://relay.example.com");
        assert_eq!(parsed.path, "/p");
        assert_eq!(parsed.payload, sample());
        assert_eq!(parsed.relay_origin(), "https://relay.example.com");
        assert_eq!(PairingLink::parse(&link, 1_000_130), Err(QrError::Expired { ago_secs: 10 }));
        assert!(matches!(PairingLink::parse("ftp://x/p#AA", 0), Err(QrError::NotALink(_))));
        let lan = sample().to_link("http://192.168.1.20:7878/p");
        assert!(PairingLink::parse(&lan, 1_000_000).is_ok());
        for local in [
            "http://localhost:7878/p",
            "http://box.local/p",
            "http://[fd00::1]:80/p",
            "http://100.101.1.2/p",
        ] {
            assert!(PairingLink::parse(&sample().to_link(local), 1_000_000).is_ok(), "{local}");
        }
        for public in ["http://relay.example.com/p", "http://8.8.8.8/p", "http://[2001:db8::1]/p"] {
            assert_eq!(
                PairingLink::parse(&sample().to_link(public), 1_000_000),
                Err(QrError::NotALink(
                    "plain http is only allowed for a relay on the local network"
                )),
                "{public}"
            );
        }
        assert!(matches!(PairingLink::parse("https://x/p", 0), Err(QrError::NotALink(_))));
        assert_eq!(PairingLink::parse("https://x/p#!!", 0), Err(QrError::BadEncoding));
        let mut b = sample().encode();
        b[0] = 2;
        let l = format!("https://x/p#{}", data_encoding::BASE32_NOPAD.encode(&b));
        assert_eq!(PairingLink::parse(&l, 0), Err(QrError::WrongVersion(2)));
        let l =
            format!("https://x/p#{}", data_encoding::BASE32_NOPAD.encode(&sample().encode()[..60]));
        assert!(matches!(PairingLink::parse(&l, 0), Err(QrError::BadLength(_))));
    }

    #[test]
    fn a_query_before_the_payload_is_kept_and_ignored() {
        let link = sample().to_link("http://192.168.1.5:7878/p?n=K3VQ7ZTA");
        let parsed = PairingLink::parse(&link, 1_000_000).unwrap();
        assert_eq!(parsed.origin, "http://192.168.1.5:7878");
        assert_eq!(parsed.path, "/p");
        assert_eq!(parsed.query, "?n=K3VQ7ZTA");
        assert_eq!(parsed.payload, sample());
        assert_eq!(parsed.relay_origin(), "http://192.168.1.5:7878");
        assert_eq!(parsed.payload.to_link(&parsed.base()), link);
        let plain = PairingLink::parse(&sample().to_link("https://x/p"), 0).unwrap();
        assert_eq!(plain.query, "");
        for bad in ["https://x/p?n=a b", "https://x/p?n=%41", "https://x/p?n=<", "https://x/p?a?b"]
        {
            assert_eq!(
                PairingLink::parse(&sample().to_link(bad), 0),
                Err(QrError::NotALink("unexpected characters in the query")),
                "{bad}"
            );
        }
        // A query does not make a public host acceptable over plain http.
        assert!(matches!(
            PairingLink::parse(&sample().to_link("http://8.8.8.8/p?n=AAAAAAAA"), 0),
            Err(QrError::NotALink(_))
        ));
    }

    #[test]
    fn a_relay_on_another_origin_is_carried() {
        let mut p = sample();
        p.relay = Some("https://relay.example.net:8443".into());
        let parsed = PairingLink::parse(&p.to_link("https://app.example.com/"), 0).unwrap();
        assert_eq!(parsed.relay_origin(), "https://relay.example.net:8443");
        assert_eq!(parsed.origin, "https://app.example.com");
    }

    #[test]
    fn pairing_id_depends_on_the_secret_only() {
        let a = sample();
        let mut b = sample();
        b.expires_at = 7;
        assert_eq!(a.pairing_id(), b.pairing_id());
        b.secret[0] ^= 1;
        assert_ne!(a.pairing_id(), b.pairing_id());
    }
}
