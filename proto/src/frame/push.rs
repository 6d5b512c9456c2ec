//! Push frames (protocol level [`LEVEL_PUSH`](super::LEVEL_PUSH),
//! PROTOCOL.md §6.14): a phone registers its platform push subscription with
//! the relay (`PushSubscribe`), a desktop asks the relay to wake a peer
//! with an opaque blob (`Notify`), and a device says whether it is in the
//! foreground (`Active`).
//!
//! The frames carry their `kind ‖ data` and `urgency ‖ blob` as they came,
//! so that a request the relay cannot act on is answered by an `Error` for
//! its `request_id` rather than a closed connection: [`PushSubscription::parse`]
//! and [`check_notify`] say what is wrong with them.

use crate::codec::{CodecError, Put, Reader};

/// Largest `Notify` blob (the inner seal of `push.rs` stays ≤ 2097 bytes).
pub const MAX_PUSH_BLOB: usize = 2560;

/// Longest Web Push endpoint URL, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 1024;

/// Longest APNs device token, in bytes.
pub const MAX_APNS_TOKEN_LEN: usize = 200;

/// Longest FCM registration token, in bytes.
pub const MAX_FCM_TOKEN_LEN: usize = 4096;

/// `PushSubscribe.kind` of a removal.
pub const KIND_REMOVE: u8 = 0;
/// `PushSubscribe.kind` of a Web Push subscription.
pub const KIND_WEBPUSH: u8 = 1;
/// `PushSubscribe.kind` of an APNs device token.
pub const KIND_APNS: u8 = 2;
/// `PushSubscribe.kind` of an FCM registration token.
pub const KIND_FCM: u8 = 3;

/// What a `PushSubscribe` registers.
#[derive(Clone, PartialEq, Eq)]
pub enum PushSubscription {
    /// Forget the device's subscription.
    Remove,
    /// A Web Push subscription (RFC 8030, keys of RFC 8291).
    WebPush {
        /// The push resource URL.
        endpoint: String,
        /// The user agent's uncompressed P-256 public key (`0x04 ‖ x ‖ y`).
        p256dh: [u8; 65],
        /// The authentication secret.
        auth: [u8; 16],
    },
    /// An APNs device token (raw bytes).
    Apns {
        /// 1 to [`MAX_APNS_TOKEN_LEN`] bytes.
        token: Vec<u8>,
    },
    /// An FCM registration token.
    Fcm {
        /// 1 to [`MAX_FCM_TOKEN_LEN`] bytes of UTF-8.
        token: String,
    },
}

impl std::fmt::Debug for PushSubscription {
    /// Shows the kind and the endpoint's host only: never keys, tokens or
    /// the endpoint's path (which names the subscription).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushSubscription::Remove => f.write_str("Remove"),
            PushSubscription::WebPush { endpoint, .. } => {
                write!(f, "WebPush({})", endpoint_host(endpoint))
            }
            PushSubscription::Apns { token } => write!(f, "Apns({} bytes)", token.len()),
            PushSubscription::Fcm { token } => write!(f, "Fcm({} bytes)", token.len()),
        }
    }
}

/// The host of a URL (what may be logged of a push endpoint), or `?`.
#[must_use]
pub fn endpoint_host(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() { "?" } else { host }
}

impl PushSubscription {
    /// The wire `kind` byte.
    #[must_use]
    pub fn kind(&self) -> u8 {
        match self {
            PushSubscription::Remove => KIND_REMOVE,
            PushSubscription::WebPush { .. } => KIND_WEBPUSH,
            PushSubscription::Apns { .. } => KIND_APNS,
            PushSubscription::Fcm { .. } => KIND_FCM,
        }
    }

    /// The wire `data` (what follows `kind`).
    #[must_use]
    pub fn data(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            PushSubscription::Remove => {}
            PushSubscription::WebPush { endpoint, p256dh, auth } => {
                b.put_str16(endpoint);
                b.put(p256dh);
                b.put(auth);
            }
            PushSubscription::Apns { token } => b.put(token),
            PushSubscription::Fcm { token } => b.put(token.as_bytes()),
        }
        b
    }

    /// `kind ‖ data` in one buffer (how the relay stores a subscription).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![self.kind()];
        b.extend_from_slice(&self.data());
        b
    }

    /// From [`PushSubscription::to_bytes`].
    ///
    /// # Errors
    /// As [`PushSubscription::parse`]; empty input is truncated.
    pub fn from_bytes(b: &[u8]) -> Result<Self, CodecError> {
        let (kind, data) = b.split_first().ok_or(CodecError::Truncated("kind"))?;
        Self::parse(*kind, data)
    }

    /// The `PushSubscribe` frame registering this.
    #[must_use]
    pub fn frame(&self, request_id: u64) -> super::Frame {
        super::Frame::PushSubscribe { request_id, kind: self.kind(), data: self.data() }
    }

    /// Check a `PushSubscribe`'s `kind ‖ data` (PROTOCOL.md §6.14).
    ///
    /// # Errors
    /// An unknown kind, data that does not match the kind's layout or its
    /// limits, an endpoint that is not an absolute `http(s)` URL, a
    /// `p256dh` that is not an uncompressed point.
    pub fn parse(kind: u8, data: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(data);
        let sub = match kind {
            KIND_REMOVE => PushSubscription::Remove,
            KIND_WEBPUSH => {
                let endpoint = r.str16(MAX_ENDPOINT_LEN, "endpoint")?;
                let after_scheme = endpoint
                    .strip_prefix("https://")
                    .or_else(|| endpoint.strip_prefix("http://"))
                    .ok_or(CodecError::BadValue("endpoint"))?;
                if endpoint_host(after_scheme) == "?"
                    || endpoint.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(CodecError::BadValue("endpoint"));
                }
                let endpoint = endpoint.to_owned();
                let p256dh: [u8; 65] = r.array("p256dh")?;
                if p256dh[0] != 0x04 {
                    return Err(CodecError::BadValue("p256dh"));
                }
                PushSubscription::WebPush { endpoint, p256dh, auth: r.array("auth")? }
            }
            KIND_APNS => {
                PushSubscription::Apns { token: token(&mut r, MAX_APNS_TOKEN_LEN)?.to_vec() }
            }
            KIND_FCM => {
                let token = token(&mut r, MAX_FCM_TOKEN_LEN)?;
                let token = std::str::from_utf8(token).map_err(|_| CodecError::NotUtf8("token"))?;
                PushSubscription::Fcm { token: token.to_owned() }
            }
            _ => return Err(CodecError::BadValue("kind")),
        };
        r.finish()?;
        Ok(sub)
    }
}

/// A token: the rest of the data, 1 to `max` bytes.
fn token<'a>(r: &mut Reader<'a>, max: usize) -> Result<&'a [u8], CodecError> {
    let token = r.rest();
    if token.is_empty() {
        return Err(CodecError::Truncated("token"));
    }
    if token.len() > max {
        return Err(CodecError::TooLong { field: "token", len: token.len(), max });
    }
    Ok(token)
}

/// `Notify.urgency` (RFC 8030 `Urgency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Urgency {
    /// `very-low`.
    VeryLow = 0,
    /// `low`.
    Low = 1,
    /// `normal`.
    Normal = 2,
    /// `high`.
    High = 3,
}

impl Urgency {
    /// From the wire byte.
    #[must_use]
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Urgency::VeryLow),
            1 => Some(Urgency::Low),
            2 => Some(Urgency::Normal),
            3 => Some(Urgency::High),
            _ => None,
        }
    }

    /// The RFC 8030 header value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::VeryLow => "very-low",
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
        }
    }
}

/// Check a `Notify`'s `urgency` and `blob` (PROTOCOL.md §6.14): the urgency
/// and the topic (`None`: all zero, no collapse).
///
/// # Errors
/// An urgency above 3, an empty blob or one over [`MAX_PUSH_BLOB`].
pub fn check_notify(
    urgency: u8,
    topic: &[u8; 16],
    blob: &[u8],
) -> Result<(Urgency, Option<[u8; 16]>), CodecError> {
    let urgency = Urgency::from_byte(urgency).ok_or(CodecError::BadValue("urgency"))?;
    if blob.is_empty() {
        return Err(CodecError::Truncated("blob"));
    }
    if blob.len() > MAX_PUSH_BLOB {
        return Err(CodecError::TooLong { field: "blob", len: blob.len(), max: MAX_PUSH_BLOB });
    }
    let topic = (*topic != [0; 16]).then_some(*topic);
    Ok((urgency, topic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    fn web() -> PushSubscription {
        let mut p256dh = [7u8; 65];
        p256dh[0] = 4;
        PushSubscription::WebPush {
            endpoint: "https://push.example.com/wpush/v2/secret-path".into(),
            p256dh,
            auth: [9; 16],
        }
    }

    #[test]
    fn subscriptions_round_trip_through_the_frame_and_the_stored_bytes() {
        for sub in [
            PushSubscription::Remove,
            web(),
            PushSubscription::Apns { token: vec![1; 32] },
            PushSubscription::Fcm { token: "tok:en".into() },
        ] {
            let wire = sub.frame(7).encode().unwrap();
            let Ok(Frame::PushSubscribe { request_id: 7, kind, data }) = Frame::decode(&wire)
            else {
                panic!("{sub:?}")
            };
            assert_eq!(PushSubscription::parse(kind, &data).unwrap(), sub);
            assert_eq!(PushSubscription::from_bytes(&sub.to_bytes()).unwrap(), sub);
        }
    }

    #[test]
    fn bad_subscriptions_are_refused_by_parse_not_by_the_frame_decoder() {
        let good = web().data();
        let keys_at = good.len() - 81;
        let mut not_a_point = good.clone();
        not_a_point[keys_at] = 2;
        let mut ftp = Vec::new();
        ftp.put_str16("ftp://push.example.com/x");
        ftp.extend_from_slice(&good[keys_at..]);
        let mut no_host = Vec::new();
        no_host.put_str16("https:///x");
        no_host.extend_from_slice(&good[keys_at..]);
        let cases: Vec<(u8, Vec<u8>)> = vec![
            (9, vec![]),
            (KIND_REMOVE, vec![1]),
            (KIND_WEBPUSH, good[..good.len() - 1].to_vec()),
            (KIND_WEBPUSH, [good.as_slice(), &[0]].concat()),
            (KIND_WEBPUSH, not_a_point),
            (KIND_WEBPUSH, ftp),
            (KIND_WEBPUSH, no_host),
            (KIND_APNS, vec![]),
            (KIND_APNS, vec![1; 201]),
            (KIND_FCM, vec![]),
            (KIND_FCM, vec![0xff, 0xfe]),
            (KIND_FCM, vec![b'a'; 4097]),
        ];
        for (kind, data) in cases {
            assert!(PushSubscription::parse(kind, &data).is_err(), "{kind} {data:?}");
            let f = Frame::PushSubscribe { request_id: 1, kind, data };
            assert_eq!(Frame::decode(&f.encode().unwrap()), Ok(f));
        }
    }

    #[test]
    fn notify_checks_urgency_blob_and_topic() {
        assert_eq!(check_notify(3, &[0; 16], b"x"), Ok((Urgency::High, None)));
        assert_eq!(check_notify(0, &[1; 16], b"x"), Ok((Urgency::VeryLow, Some([1; 16]))));
        assert!(check_notify(4, &[0; 16], b"x").is_err());
        assert!(check_notify(2, &[0; 16], b"").is_err());
        assert!(check_notify(2, &[0; 16], &[0; MAX_PUSH_BLOB]).is_ok());
        assert!(check_notify(2, &[0; 16], &[0; MAX_PUSH_BLOB + 1]).is_err());
    }

    #[test]
    fn debug_shows_no_secret() {
        let s = format!("{:?}", web());
        assert_eq!(s, "WebPush(push.example.com)");
        assert_eq!(endpoint_host("https://user@h.example:8443/p?q"), "h.example:8443");
        assert_eq!(
            format!("{:?}", PushSubscription::Fcm { token: "secret".into() }),
            "Fcm(6 bytes)"
        );
    }
}
