//! Relay frames: what a device and the relay say to each other, one frame per
//! WebSocket binary message.
//!
//! Layout: `version u8 ‖ type u8 ‖ body`. The body's layout is fixed per type
//! (see `docs/PROTOCOL.md`); decoding rejects unknown versions, unknown types,
//! truncated bodies, trailing bytes and frames over [`MAX_FRAME_LEN`]. The
//! `payload` of `Send`, `Deliver`, `PairClaim` and `PairMessage` is the rest of
//! the frame and is opaque to the relay: an end-to-end [`crate::envelope`].

use thiserror::Error;

use crate::codec::{CodecError, Put, Reader};
use crate::error_code::ErrorCode;
use crate::identity::{DeviceId, PublicKey, Role};

mod forward;
mod level;
mod oks;
pub mod push;

pub use forward::{FORWARD_HEADER_LEN, SendHeader, encode_deliver, peek_send};
pub use level::{LEVEL, LEVEL_OKS, LEVEL_PUSH, negotiate};
pub use oks::{MAX_OK_RUNS, OkRun, push_ok};
pub use push::{MAX_PUSH_BLOB, PushSubscription, Urgency};

/// The frame version byte: the only one defined, at every protocol level.
pub const VERSION: u8 = 1;

/// Largest frame either side accepts, header included (64 KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Largest opaque payload: a `PairMessage` frame has the longest header
/// (2 + 16 + 16 bytes), so every payload-carrying frame fits.
pub const MAX_PAYLOAD_LEN: usize = MAX_FRAME_LEN - 34;

/// Longest human-readable message in an `Error` frame, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 256;

/// Longest relay name (`host[:port]`) in a `Challenge`, in bytes.
pub const MAX_RELAY_NAME_LEN: usize = 255;

/// Why a frame was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame is empty or shorter than its header.
    #[error("frame shorter than its 2-byte header")]
    TooShort,
    /// The frame is over [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The version byte is not [`VERSION`].
    #[error("unsupported frame version {0} (this side speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// The type byte is not in the registry.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The body does not match the type's layout.
    #[error("malformed {kind} frame: {source}")]
    Malformed {
        /// The frame type.
        kind: FrameType,
        /// What was wrong.
        source: CodecError,
    },
}

impl FrameError {
    /// The documented error code to answer this with.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooShort | FrameError::Malformed { .. } => ErrorCode::MalformedFrame,
            FrameError::TooLarge(_) => ErrorCode::FrameTooLarge,
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::UnknownType(_) => ErrorCode::UnknownFrameType,
        }
    }
}

macro_rules! frame_types {
    ($( $(#[$doc:meta])* $name:ident = $byte:literal; )*) => {
        /// The frame-type registry: one byte per type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum FrameType { $( $(#[$doc])* $name = $byte, )* }

        impl FrameType {
            /// Every registered type.
            pub const ALL: &'static [FrameType] = &[$(FrameType::$name,)*];

            /// From the wire byte.
            #[must_use]
            pub fn from_byte(b: u8) -> Option<Self> {
                match b { $( $byte => Some(FrameType::$name), )* _ => None }
            }
        }
    };
}

frame_types! {
    /// Device → relay: the versions it speaks and its role.
    Hello = 0x01;
    /// Relay → device: a fresh ephemeral key and nonce to prove key possession against.
    Challenge = 0x02;
    /// Device → relay: its public key and the proof.
    Auth = 0x03;
    /// Relay → device: authenticated.
    AuthOk = 0x04;
    /// Device → relay: forward a payload to a peer (queued if the peer is offline).
    Send = 0x10;
    /// Relay → device: a payload from a peer, with its queue position.
    Deliver = 0x11;
    /// Device → relay: every delivery up to this id is received; delete it.
    Ack = 0x12;
    /// Relay → device: a request (send, authorise, revoke, pair open/close) succeeded.
    Ok = 0x13;
    /// Relay → device: a peer came online or went offline.
    Presence = 0x14;
    /// Relay → device (level 2): every `Send` in these runs of ids succeeded.
    Oks = 0x15;
    /// Either way: liveness probe.
    Ping = 0x20;
    /// Either way: answer to a ping.
    Pong = 0x21;
    /// Desktop → relay: open a one-time pairing mailbox.
    PairOpen = 0x30;
    /// Phone → relay: claim a mailbox with the first handshake message.
    PairClaim = 0x31;
    /// Either way: a pairing message between the mailbox's two parties.
    PairMessage = 0x32;
    /// Desktop → relay: close a mailbox (paired, refused or cancelled).
    PairClose = 0x33;
    /// Device → relay: allow routing with a peer. A route exists only when
    /// both devices authorised each other.
    Authorize = 0x40;
    /// Device → relay: withdraw a peer's authorisation (the route ends at
    /// once and frames queued between the two are dropped).
    Revoke = 0x41;
    /// Device → relay (level 3): register (or remove) the device's push
    /// subscription with the relay.
    PushSubscribe = 0x60;
    /// Device → relay (level 3): wake a peer through its push subscription
    /// with an opaque, end-to-end sealed blob.
    Notify = 0x61;
    /// Device → relay (level 3): the device is in the foreground or not.
    Active = 0x62;
    /// Relay → device: a refusal, with a documented code.
    Error = 0x50;
    /// Relay → device: the relay is restarting; reconnect after the hint.
    Restarting = 0x51;
}

impl std::fmt::Display for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One relay frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `min u8 ‖ max u8 ‖ role u8`
    Hello {
        /// Oldest version the device speaks.
        min_version: u8,
        /// Newest version the device speaks.
        max_version: u8,
        /// Desktop or phone.
        role: Role,
    },
    /// `relay_ephemeral [32] ‖ nonce [32] ‖ relay_name str16`
    Challenge {
        /// The relay's ephemeral X25519 public key for this connection.
        relay_ephemeral: PublicKey,
        /// A fresh random nonce.
        nonce: [u8; 32],
        /// The name the device reached the relay by: the `Host` of the
        /// WebSocket upgrade request (`host[:port]`, lower case). The device
        /// refuses a challenge for another name (see [`crate::relay_auth`]).
        relay_name: String,
    },
    /// `public_key [32] ‖ proof [32]`
    Auth {
        /// The device's long-term public key.
        public_key: PublicKey,
        /// The MAC proving possession of the matching secret key.
        proof: [u8; 32],
    },
    /// `device_id [16] ‖ queued u32 ‖ ping_interval_ms u32 ‖ store_epoch u64`
    AuthOk {
        /// The authenticated device's id.
        device_id: DeviceId,
        /// How many deliveries are waiting in its queue.
        queued: u32,
        /// How often the relay will ping.
        ping_interval_ms: u32,
        /// The relay's store epoch: it changes whenever the relay's delivery
        /// ids may have gone backwards (a new store open: wipe, restore,
        /// migration, restart); a device resets its delivery cursor when it
        /// differs from the last one it saw (PROTOCOL.md §6.6).
        store_epoch: u64,
    },
    /// `send_id u64 ‖ to [16] ‖ payload`
    Send {
        /// Chosen by the sender; echoed in `Ok` or `Error`.
        send_id: u64,
        /// Recipient.
        to: DeviceId,
        /// Opaque end-to-end envelope.
        payload: Vec<u8>,
    },
    /// `delivery_id u64 ‖ from [16] ‖ payload`
    Deliver {
        /// Position in the recipient's queue; strictly increasing per recipient.
        delivery_id: u64,
        /// Sender.
        from: DeviceId,
        /// Opaque end-to-end envelope.
        payload: Vec<u8>,
    },
    /// `up_to u64`
    Ack {
        /// Every delivery with an id at or below this one has been received.
        up_to: u64,
    },
    /// `ref_id u64`
    Ok {
        /// The request this answers (`send_id` or `request_id`).
        ref_id: u64,
    },
    /// `runs u16 ‖ runs × (first u64 ‖ count u32)`: 1 to [`MAX_OK_RUNS`]
    /// runs, each `count ≥ 1` with `first + count` within a `u64`. Only for
    /// `Send`s, only to a device that speaks level [`LEVEL_OKS`]: each id
    /// covered is answered as by `Ok{ref_id = id}`.
    Oks {
        /// The runs of accepted `send_id`s.
        runs: Vec<OkRun>,
    },
    /// `peer [16] ‖ online u8`
    Presence {
        /// The peer.
        peer: DeviceId,
        /// Whether it has a live connection now.
        online: bool,
    },
    /// `nonce u64`
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// `nonce u64`
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// `request_id u64 ‖ pairing_id [16] ‖ ttl_secs u16`
    PairOpen {
        /// Echoed in `Ok` or `Error`.
        request_id: u64,
        /// Derived from the QR secret; the relay never sees the secret.
        pairing_id: [u8; 16],
        /// How long the mailbox lives (the relay caps it).
        ttl_secs: u16,
    },
    /// `request_id u64 ‖ pairing_id [16] ‖ payload`
    PairClaim {
        /// Echoed in `Ok` or `Error`.
        request_id: u64,
        /// The mailbox claimed.
        pairing_id: [u8; 16],
        /// The first pairing handshake message.
        payload: Vec<u8>,
    },
    /// `pairing_id [16] ‖ peer [16] ‖ payload`. Device → relay: `peer` is the
    /// recipient; relay → device: `peer` is the sender.
    PairMessage {
        /// The mailbox.
        pairing_id: [u8; 16],
        /// The other party.
        peer: DeviceId,
        /// A pairing envelope.
        payload: Vec<u8>,
    },
    /// `request_id u64 ‖ pairing_id [16]`
    PairClose {
        /// Echoed in `Ok` or `Error`.
        request_id: u64,
        /// The mailbox.
        pairing_id: [u8; 16],
    },
    /// `request_id u64 ‖ peer [16]`
    Authorize {
        /// Echoed in `Ok` or `Error`.
        request_id: u64,
        /// The device allowed to exchange frames with the sender.
        peer: DeviceId,
    },
    /// `request_id u64 ‖ peer [16]`
    Revoke {
        /// Echoed in `Ok` or `Error`.
        request_id: u64,
        /// The device no longer allowed.
        peer: DeviceId,
    },
    /// `request_id u64 ‖ kind u8 ‖ data`: `kind ‖ data` as sent, checked
    /// by [`PushSubscription::parse`] (a bad one is answered, not closed on).
    PushSubscribe {
        /// Echoed in `Ok` or `Error`.
        request_id: u64,
        /// 0 remove, 1 Web Push, 2 APNs, 3 FCM.
        kind: u8,
        /// The kind's data (at most [`MAX_PAYLOAD_LEN`] bytes on the wire).
        data: Vec<u8>,
    },
    /// `request_id u64 ‖ to [16] ‖ urgency u8 ‖ topic [16] ‖ blob`, checked
    /// by [`push::check_notify`].
    Notify {
        /// Echoed in `Ok` or `Error`.
        request_id: u64,
        /// The device to wake.
        to: DeviceId,
        /// 0 very-low … 3 high.
        urgency: u8,
        /// Collapse key; all zero for none.
        topic: [u8; 16],
        /// Opaque, end-to-end sealed (1..=[`MAX_PUSH_BLOB`] bytes to be accepted).
        blob: Vec<u8>,
    },
    /// `active u8` (0 or 1)
    Active {
        /// In the foreground.
        active: bool,
    },
    /// `code u16 ‖ ref_id u64 ‖ message str16`
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// The request it answers, or 0.
        ref_id: u64,
        /// Human-readable detail (≤ 256 bytes), never containing payload bytes.
        message: String,
    },
    /// `reconnect_after_ms u32`
    Restarting {
        /// Wait this long (plus jitter) before reconnecting.
        reconnect_after_ms: u32,
    },
}

impl Frame {
    /// The frame's type.
    #[must_use]
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Challenge { .. } => FrameType::Challenge,
            Frame::Auth { .. } => FrameType::Auth,
            Frame::AuthOk { .. } => FrameType::AuthOk,
            Frame::Send { .. } => FrameType::Send,
            Frame::Deliver { .. } => FrameType::Deliver,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Ok { .. } => FrameType::Ok,
            Frame::Oks { .. } => FrameType::Oks,
            Frame::Presence { .. } => FrameType::Presence,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::PairOpen { .. } => FrameType::PairOpen,
            Frame::PairClaim { .. } => FrameType::PairClaim,
            Frame::PairMessage { .. } => FrameType::PairMessage,
            Frame::PairClose { .. } => FrameType::PairClose,
            Frame::Authorize { .. } => FrameType::Authorize,
            Frame::Revoke { .. } => FrameType::Revoke,
            Frame::PushSubscribe { .. } => FrameType::PushSubscribe,
            Frame::Notify { .. } => FrameType::Notify,
            Frame::Active { .. } => FrameType::Active,
            Frame::Error { .. } => FrameType::Error,
            Frame::Restarting { .. } => FrameType::Restarting,
        }
    }

    /// Encode to wire bytes.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] if the result would exceed [`MAX_FRAME_LEN`]
    /// (an over-long payload), [`FrameError::Malformed`] for a `Hello` whose
    /// version range is empty or an `Oks` whose runs are not valid: a sender
    /// can never emit what a receiver must refuse.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut b = Vec::with_capacity(64 + self.payload_len());
        b.put_u8(VERSION);
        b.put_u8(self.frame_type() as u8);
        match self {
            Frame::Hello { min_version, max_version, role } => {
                if min_version > max_version {
                    return Err(FrameError::Malformed {
                        kind: FrameType::Hello,
                        source: CodecError::BadValue("min_version above max_version"),
                    });
                }
                b.put_u8(*min_version);
                b.put_u8(*max_version);
                b.put_u8(role.to_byte());
            }
            Frame::Challenge { relay_ephemeral, nonce, relay_name } => {
                if relay_name.len() > MAX_RELAY_NAME_LEN {
                    return Err(FrameError::Malformed {
                        kind: FrameType::Challenge,
                        source: CodecError::TooLong {
                            field: "relay_name",
                            len: relay_name.len(),
                            max: MAX_RELAY_NAME_LEN,
                        },
                    });
                }
                b.put(&relay_ephemeral.0);
                b.put(nonce);
                b.put_str16(relay_name);
            }
            Frame::Auth { public_key, proof } => {
                b.put(&public_key.0);
                b.put(proof);
            }
            Frame::AuthOk { device_id, queued, ping_interval_ms, store_epoch } => {
                b.put(&device_id.0);
                b.put_u32(*queued);
                b.put_u32(*ping_interval_ms);
                b.put_u64(*store_epoch);
            }
            Frame::Send { send_id, to, payload } => {
                b.put_u64(*send_id);
                b.put(&to.0);
                b.put(payload);
            }
            Frame::Deliver { delivery_id, from, payload } => {
                b.put_u64(*delivery_id);
                b.put(&from.0);
                b.put(payload);
            }
            Frame::Ack { up_to } => b.put_u64(*up_to),
            Frame::Ok { ref_id } => b.put_u64(*ref_id),
            Frame::Oks { runs } => oks::encode(&mut b, runs)
                .map_err(|source| FrameError::Malformed { kind: FrameType::Oks, source })?,
            Frame::Presence { peer, online } => {
                b.put(&peer.0);
                b.put_u8(u8::from(*online));
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => b.put_u64(*nonce),
            Frame::PairOpen { request_id, pairing_id, ttl_secs } => {
                b.put_u64(*request_id);
                b.put(pairing_id);
                b.put_u16(*ttl_secs);
            }
            Frame::PairClaim { request_id, pairing_id, payload } => {
                b.put_u64(*request_id);
                b.put(pairing_id);
                b.put(payload);
            }
            Frame::PairMessage { pairing_id, peer, payload } => {
                b.put(pairing_id);
                b.put(&peer.0);
                b.put(payload);
            }
            Frame::PairClose { request_id, pairing_id } => {
                b.put_u64(*request_id);
                b.put(pairing_id);
            }
            Frame::Authorize { request_id, peer } | Frame::Revoke { request_id, peer } => {
                b.put_u64(*request_id);
                b.put(&peer.0);
            }
            Frame::PushSubscribe { request_id, kind, data } => {
                b.put_u64(*request_id);
                b.put_u8(*kind);
                b.put(data);
            }
            Frame::Notify { request_id, to, urgency, topic, blob } => {
                b.put_u64(*request_id);
                b.put(&to.0);
                b.put_u8(*urgency);
                b.put(topic);
                b.put(blob);
            }
            Frame::Active { active } => b.put_u8(u8::from(*active)),
            Frame::Error { code, ref_id, message } => {
                b.put_u16(code.code());
                b.put_u64(*ref_id);
                b.put_str16(truncate_utf8(message, MAX_ERROR_MESSAGE_LEN));
            }
            Frame::Restarting { reconnect_after_ms } => b.put_u32(*reconnect_after_ms),
        }
        if b.len() > MAX_FRAME_LEN || self.payload_len() > MAX_PAYLOAD_LEN {
            return Err(FrameError::TooLarge(b.len()));
        }
        Ok(b)
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Send { payload, .. }
            | Frame::Deliver { payload, .. }
            | Frame::PairClaim { payload, .. }
            | Frame::PairMessage { payload, .. } => payload.len(),
            Frame::PushSubscribe { data, .. } => data.len(),
            Frame::Notify { blob, .. } => blob.len(),
            _ => 0,
        }
    }

    /// Decode one frame from wire bytes.
    ///
    /// # Errors
    /// Every way the bytes can be wrong is a [`FrameError`]; nothing panics.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        if bytes.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        let (&[version, type_byte], body) =
            bytes.split_first_chunk::<2>().ok_or(FrameError::TooShort)?;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kind = FrameType::from_byte(type_byte).ok_or(FrameError::UnknownType(type_byte))?;
        // A payload over MAX_PAYLOAD_LEN in a frame within MAX_FRAME_LEN is
        // `Malformed{TooLong}`, hence `malformed_frame` (PROTOCOL.md §4.4),
        // not `frame_too_large`: the frame itself is within the limit.
        decode_body(kind, body).map_err(|source| FrameError::Malformed { kind, source })
    }
}

fn decode_body(kind: FrameType, body: &[u8]) -> Result<Frame, CodecError> {
    let mut r = Reader::new(body);
    let frame = match kind {
        FrameType::Hello => {
            let min_version = r.u8("min_version")?;
            let max_version = r.u8("max_version")?;
            if min_version > max_version {
                return Err(CodecError::BadValue("min_version above max_version"));
            }
            let role = Role::from_byte(r.u8("role")?).ok_or(CodecError::BadValue("role"))?;
            Frame::Hello { min_version, max_version, role }
        }
        FrameType::Challenge => Frame::Challenge {
            relay_ephemeral: PublicKey(r.array("relay_ephemeral")?),
            nonce: r.array("nonce")?,
            relay_name: r.str16(MAX_RELAY_NAME_LEN, "relay_name")?.to_owned(),
        },
        FrameType::Auth => {
            Frame::Auth { public_key: PublicKey(r.array("public_key")?), proof: r.array("proof")? }
        }
        FrameType::AuthOk => Frame::AuthOk {
            device_id: DeviceId(r.array("device_id")?),
            queued: r.u32("queued")?,
            ping_interval_ms: r.u32("ping_interval_ms")?,
            store_epoch: r.u64("store_epoch")?,
        },
        FrameType::Send => Frame::Send {
            send_id: r.u64("send_id")?,
            to: DeviceId(r.array("to")?),
            payload: payload(&mut r)?,
        },
        FrameType::Deliver => Frame::Deliver {
            delivery_id: r.u64("delivery_id")?,
            from: DeviceId(r.array("from")?),
            payload: payload(&mut r)?,
        },
        FrameType::Ack => Frame::Ack { up_to: r.u64("up_to")? },
        FrameType::Ok => Frame::Ok { ref_id: r.u64("ref_id")? },
        FrameType::Oks => Frame::Oks { runs: oks::decode(&mut r)? },
        FrameType::Presence => Frame::Presence {
            peer: DeviceId(r.array("peer")?),
            online: match r.u8("online")? {
                0 => false,
                1 => true,
                _ => return Err(CodecError::BadValue("online")),
            },
        },
        FrameType::Ping => Frame::Ping { nonce: r.u64("nonce")? },
        FrameType::Pong => Frame::Pong { nonce: r.u64("nonce")? },
        FrameType::PairOpen => Frame::PairOpen {
            request_id: r.u64("request_id")?,
            pairing_id: r.array("pairing_id")?,
            ttl_secs: r.u16("ttl_secs")?,
        },
        FrameType::PairClaim => Frame::PairClaim {
            request_id: r.u64("request_id")?,
            pairing_id: r.array("pairing_id")?,
            payload: payload(&mut r)?,
        },
        FrameType::PairMessage => Frame::PairMessage {
            pairing_id: r.array("pairing_id")?,
            peer: DeviceId(r.array("peer")?),
            payload: payload(&mut r)?,
        },
        FrameType::PairClose => Frame::PairClose {
            request_id: r.u64("request_id")?,
            pairing_id: r.array("pairing_id")?,
        },
        FrameType::Authorize => {
            Frame::Authorize { request_id: r.u64("request_id")?, peer: DeviceId(r.array("peer")?) }
        }
        FrameType::Revoke => {
            Frame::Revoke { request_id: r.u64("request_id")?, peer: DeviceId(r.array("peer")?) }
        }
        FrameType::PushSubscribe => Frame::PushSubscribe {
            request_id: r.u64("request_id")?,
            kind: r.u8("kind")?,
            data: payload(&mut r)?,
        },
        FrameType::Notify => Frame::Notify {
            request_id: r.u64("request_id")?,
            to: DeviceId(r.array("to")?),
            urgency: r.u8("urgency")?,
            topic: r.array("topic")?,
            blob: payload(&mut r)?,
        },
        FrameType::Active => Frame::Active {
            active: match r.u8("active")? {
                0 => false,
                1 => true,
                _ => return Err(CodecError::BadValue("active")),
            },
        },
        FrameType::Error => Frame::Error {
            code: ErrorCode::from_code(r.u16("code")?),
            ref_id: r.u64("ref_id")?,
            message: r.str16(MAX_ERROR_MESSAGE_LEN, "message")?.to_owned(),
        },
        FrameType::Restarting => {
            Frame::Restarting { reconnect_after_ms: r.u32("reconnect_after_ms")? }
        }
    };
    r.finish()?;
    Ok(frame)
}

/// An opaque payload: the rest of the frame, at most [`MAX_PAYLOAD_LEN`]
/// bytes, so that the relay can always forward what it accepted (a
/// `PairClaim` payload is re-framed as a `PairMessage`, whose header is longer).
fn payload(r: &mut Reader<'_>) -> Result<Vec<u8>, CodecError> {
    let p = r.rest();
    if p.len() > MAX_PAYLOAD_LEN {
        return Err(CodecError::TooLong { field: "payload", len: p.len(), max: MAX_PAYLOAD_LEN });
    }
    Ok(p.to_vec())
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_version_and_type_and_trailing_bytes() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::TooShort));
        assert_eq!(Frame::decode(&[1]), Err(FrameError::TooShort));
        assert_eq!(
            Frame::decode(&[2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::UnsupportedVersion(2))
        );
        assert_eq!(Frame::decode(&[1, 0x7f]), Err(FrameError::UnknownType(0x7f)));
        let ping = Frame::Ping { nonce: 5 }.encode().unwrap();
        assert_eq!(Frame::decode(&ping), Ok(Frame::Ping { nonce: 5 }));
        let mut long = ping.clone();
        long.push(0);
        assert!(matches!(
            Frame::decode(&long),
            Err(FrameError::Malformed { source: CodecError::TrailingBytes(1), .. })
        ));
        assert!(matches!(
            Frame::decode(&ping[..ping.len() - 1]),
            Err(FrameError::Malformed { source: CodecError::Truncated(_), .. })
        ));
    }

    #[test]
    fn size_limit_is_enforced_both_ways() {
        let big = Frame::Send {
            send_id: 1,
            to: DeviceId([0; 16]),
            payload: vec![0; MAX_PAYLOAD_LEN + 10],
        };
        assert!(matches!(big.encode(), Err(FrameError::TooLarge(_))));
        let max = Frame::PairMessage {
            pairing_id: [0; 16],
            peer: DeviceId([0; 16]),
            payload: vec![0; MAX_PAYLOAD_LEN],
        };
        assert_eq!(max.encode().unwrap().len(), MAX_FRAME_LEN);
        assert_eq!(
            Frame::decode(&vec![1u8; MAX_FRAME_LEN + 1]),
            Err(FrameError::TooLarge(MAX_FRAME_LEN + 1))
        );
    }

    /// PROTOCOL.md §4.4: a payload over `MAX_PAYLOAD_LEN` in a frame that
    /// fits `MAX_FRAME_LEN` is `malformed_frame`, not `frame_too_large`
    /// (found by the abuse suite, tests/abuse: the relay closed with 4004).
    #[test]
    fn an_over_long_payload_in_a_frame_that_fits_is_malformed() {
        // (`PairMessage`, 32 fixed bytes, cannot carry one within the limit.)
        for kind in [0x10u8, 0x11, 0x31] {
            let mut b = vec![1, kind];
            b.resize(2 + 24 + MAX_PAYLOAD_LEN + 1, 0);
            assert!(b.len() <= MAX_FRAME_LEN);
            let e = Frame::decode(&b).unwrap_err();
            assert!(
                matches!(e, FrameError::Malformed { source: CodecError::TooLong { .. }, .. }),
                "{kind:#x}: {e:?}"
            );
            assert_eq!(e.code(), ErrorCode::MalformedFrame, "{kind:#x}");
        }
    }

    #[test]
    fn error_messages_are_truncated_on_a_char_boundary() {
        let f = Frame::Error { code: ErrorCode::Internal, ref_id: 0, message: "é".repeat(200) };
        let Frame::Error { message, .. } = Frame::decode(&f.encode().unwrap()).unwrap() else {
            panic!()
        };
        assert_eq!(message.len(), 256);
    }

    #[test]
    fn registry_bytes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for t in FrameType::ALL {
            assert!(seen.insert(*t as u8));
            assert_eq!(FrameType::from_byte(*t as u8), Some(*t));
        }
    }
}
