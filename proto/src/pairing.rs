//! Pairing a phone with a desktop through the untrusted relay:
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`, WireGuard's handshake.
//!
//! ```text
//! desktop                              relay                      phone
//!   DesktopPairing::new  ── QR (desktop key, secret, expiry) ──▶ scan
//!   PairOpen(pairing_id) ─▶ mailbox
//!                                  ◀── PairClaim(PairHello) ──  PhonePairing::start
//!   on_hello ── PairWelcome ──────────────────────────────────▶ on_welcome
//!                                  ◀── record(PairConfirm) ───
//!   on_confirm  (the phone knew the secret)
//!   both screens show the same 6-digit SAS; the desktop user confirms
//!   accept ── record(PairResult{session_psk}) ────────────────▶ on_result
//!   both pin each other's keys; the pairing session stays as the first session
//! ```
//!
//! The prologue binds the handshake to this QR: `"tandem pair v1" ‖
//! pairing_id ‖ expires_at`. Handshake payloads are [`DeviceInfo`] JSON.
//! The relay never sees the secret, so it can neither complete the handshake
//! in the phone's place (the PSK is mixed into message 2, and the desktop
//! waits for the phone's confirm) nor swap keys without the SAS differing.

use thiserror::Error;
use zeroize::Zeroizing;

use crate::content::{Content, ContentError};
use crate::crypto::PAIRING_NOISE;
use crate::crypto::noise::{self, HandshakeSpec, Side};
use crate::entropy::{Entropy, EntropyError};
use crate::envelope::Envelope;
use crate::identity::{DeviceKey, PublicKey};
use crate::kdf::label;
use crate::message::{DeviceInfo, MessageError};
use crate::qr::QrPayload;
use crate::record::{RecordError, Session};
use crate::sas::Sas;

/// Why pairing failed. Failures never leave a half-paired peer behind.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PairingError {
    /// The QR code expired before the phone's hello arrived.
    #[error("the pairing code expired")]
    Expired,
    /// The Noise handshake failed: wrong secret, wrong key or tampering.
    #[error("pairing handshake failed: {0}")]
    Handshake(String),
    /// A message of the wrong kind for this step.
    #[error("unexpected pairing message for this step")]
    Unexpected,
    /// The confirm or result record did not open.
    #[error("pairing record rejected: {0}")]
    Record(#[from] RecordError),
    /// A record's content was malformed.
    #[error("pairing content malformed: {0}")]
    Content(#[from] ContentError),
    /// The peer's device info was malformed.
    #[error("device info malformed: {0}")]
    DeviceInfo(#[from] MessageError),
    /// The desktop user refused the pairing.
    #[error("the desktop refused the pairing: {0}")]
    Refused(String),
    /// No randomness.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The relay URL to put in the QR code is not valid.
    #[error("relay URL for the QR code: {0}")]
    BadRelayUrl(#[from] crate::qr::QrError),
}

fn hs_err(e: snow::Error) -> PairingError {
    PairingError::Handshake(e.to_string())
}

fn prologue(qr: &QrPayload) -> Vec<u8> {
    let mut p = label::PAIR_PROLOGUE.as_bytes().to_vec();
    p.extend_from_slice(&qr.pairing_id());
    p.extend_from_slice(&qr.expires_at.to_be_bytes());
    p
}

/// The longest a QR code may stay valid (desktops rotate codes well before).
pub const MAX_PAIRING_TTL_SECS: u32 = 600;

/// A paired peer, as both sides store it.
#[derive(Debug, Clone)]
pub struct PairedPeer {
    /// The peer's long-term public key, now pinned.
    pub public_key: PublicKey,
    /// What the peer said about itself.
    pub info: DeviceInfo,
    /// The PSK for later `KKpsk2` session handshakes.
    pub session_psk: Zeroizing<[u8; 32]>,
    /// The first session (the pairing handshake's keys), usable at once.
    pub session: Session,
    /// The code both screens showed.
    pub sas: Sas,
}

/// The desktop's pairing offer: the QR it shows and the secret behind it.
pub struct DesktopPairing {
    key: DeviceKey,
    qr: QrPayload,
}

impl std::fmt::Debug for DesktopPairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesktopPairing").field("qr", &self.qr).finish()
    }
}

impl DesktopPairing {
    /// A fresh offer valid until `now_unix + ttl_secs` (at most
    /// [`MAX_PAIRING_TTL_SECS`]). `relay` is set when
    /// the link's origin is not the relay (web client served elsewhere).
    ///
    /// # Errors
    /// [`PairingError::BadRelayUrl`] for a relay URL that is not an
    /// `http(s)://host[:port]` origin of at most 128 bytes;
    /// [`PairingError::Entropy`] when randomness fails.
    pub fn new(
        key: DeviceKey,
        now_unix: u64,
        ttl_secs: u32,
        relay: Option<String>,
        entropy: &mut Entropy,
    ) -> Result<Self, PairingError> {
        if let Some(r) = &relay {
            QrPayload::validate_relay(r)?;
        }
        let ttl_secs = ttl_secs.min(MAX_PAIRING_TTL_SECS);
        let expires_at =
            u32::try_from(now_unix.saturating_add(u64::from(ttl_secs))).unwrap_or(u32::MAX);
        let qr = QrPayload { desktop: key.public(), secret: entropy.array32()?, expires_at, relay };
        Ok(Self { key, qr })
    }

    /// What the QR code carries.
    #[must_use]
    pub fn payload(&self) -> &QrPayload {
        &self.qr
    }

    /// The relay mailbox id.
    #[must_use]
    pub fn pairing_id(&self) -> [u8; 16] {
        self.qr.pairing_id()
    }

    /// Answer a phone's `PairHello`. Returns the next state and the
    /// `PairWelcome` envelope. The offer itself is unchanged, so a bogus
    /// hello does not burn it (the relay's first-claim rule does).
    ///
    /// # Errors
    /// [`PairingError`] when expired, malformed or not authentic.
    pub fn on_hello(
        &self,
        hello: &Envelope,
        own_info: &DeviceInfo,
        now_unix: u64,
        entropy: &mut Entropy,
    ) -> Result<(DesktopAwaitingConfirm, Vec<u8>), PairingError> {
        if now_unix >= u64::from(self.qr.expires_at) {
            return Err(PairingError::Expired);
        }
        let Envelope::PairHello { noise } = hello else {
            return Err(PairingError::Unexpected);
        };
        own_info.validate()?;
        let local_private = Zeroizing::new(self.key.to_bytes());
        let prologue = prologue(&self.qr);
        let mut hs = noise::build(
            &HandshakeSpec {
                pattern: PAIRING_NOISE,
                side: Side::Responder,
                local_private: &local_private,
                remote_public: None,
                psk: &self.qr.secret,
                prologue: &prologue,
            },
            entropy.clone(),
        )
        .map_err(hs_err)?;
        entropy.array32()?;
        let payload = noise::read(&mut hs, noise).map_err(hs_err)?;
        let phone_info = DeviceInfo::from_json(&payload)?;
        let phone_public = PublicKey(
            hs.get_remote_static()
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| PairingError::Handshake("no remote static key".into()))?,
        );
        let msg = noise::write(&mut hs, &own_info.to_json()).map_err(hs_err)?;
        let sas = Sas::from_handshake_hash(&noise::handshake_hash(&hs));
        let session = noise::into_session(hs, Side::Responder);
        Ok((
            DesktopAwaitingConfirm { phone_public, phone_info, session, sas },
            Envelope::PairWelcome { noise: msg }.encode(),
        ))
    }
}

/// The desktop after the handshake, waiting for the phone's confirm.
#[derive(Debug)]
pub struct DesktopAwaitingConfirm {
    phone_public: PublicKey,
    phone_info: DeviceInfo,
    session: Session,
    sas: Sas,
}

impl DesktopAwaitingConfirm {
    /// Check the phone's confirm record: proof that it knew the secret.
    ///
    /// # Errors
    /// [`PairingError`] if the record does not open or is not a confirm.
    pub fn on_confirm(mut self, confirm: &Envelope) -> Result<DesktopAwaitingUser, PairingError> {
        let plain = self.session.open(confirm)?;
        match Content::decode(&plain)? {
            Content::PairConfirm => Ok(DesktopAwaitingUser { inner: self }),
            _ => Err(PairingError::Unexpected),
        }
    }
}

/// The desktop waiting for its user to compare the code and confirm.
#[derive(Debug)]
pub struct DesktopAwaitingUser {
    inner: DesktopAwaitingConfirm,
}

impl DesktopAwaitingUser {
    /// The code to show.
    #[must_use]
    pub fn sas(&self) -> Sas {
        self.inner.sas
    }

    /// What the phone says it is.
    #[must_use]
    pub fn phone_info(&self) -> &DeviceInfo {
        &self.inner.phone_info
    }

    /// The phone's key (its device id is what the relay must authorise).
    #[must_use]
    pub fn phone_public(&self) -> PublicKey {
        self.inner.phone_public
    }

    /// The user confirmed: make the session PSK and tell the phone.
    ///
    /// # Errors
    /// [`PairingError`] when randomness or sealing fails.
    pub fn accept(self, entropy: &mut Entropy) -> Result<(PairedPeer, Vec<u8>), PairingError> {
        let mut inner = self.inner;
        let psk = Zeroizing::new(entropy.array32()?);
        let record = inner.session.seal(
            &Content::PairResult { accepted: true, session_psk: *psk, reason: String::new() }
                .encode(),
        )?;
        Ok((
            PairedPeer {
                public_key: inner.phone_public,
                info: inner.phone_info,
                session_psk: psk,
                session: inner.session,
                sas: inner.sas,
            },
            record,
        ))
    }

    /// The user refused (or the code did not match): tell the phone why.
    ///
    /// # Errors
    /// [`PairingError`] when sealing fails.
    pub fn refuse(self, reason: &str) -> Result<Vec<u8>, PairingError> {
        let mut inner = self.inner;
        Ok(inner.session.seal(
            &Content::PairResult {
                accepted: false,
                session_psk: [0; 32],
                reason: reason.to_owned(),
            }
            .encode(),
        )?)
    }
}

/// The phone after sending its hello.
pub struct PhonePairing {
    hs: snow::HandshakeState,
    desktop: PublicKey,
}

impl std::fmt::Debug for PhonePairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhonePairing").field("desktop", &self.desktop).finish_non_exhaustive()
    }
}

impl PhonePairing {
    /// Start pairing from a scanned payload; returns the state and the
    /// `PairHello` envelope to send in a `PairClaim`. The caller has already
    /// checked expiry ([`crate::qr::PairingLink::parse`]).
    ///
    /// # Errors
    /// [`PairingError`] when snow refuses the keys or randomness fails.
    pub fn start(
        key: &DeviceKey,
        qr: &QrPayload,
        own_info: &DeviceInfo,
        entropy: &mut Entropy,
    ) -> Result<(Self, Vec<u8>), PairingError> {
        own_info.validate()?;
        let local_private = Zeroizing::new(key.to_bytes());
        let prologue = prologue(qr);
        let mut hs = noise::build(
            &HandshakeSpec {
                pattern: PAIRING_NOISE,
                side: Side::Initiator,
                local_private: &local_private,
                remote_public: Some(&qr.desktop.0),
                psk: &qr.secret,
                prologue: &prologue,
            },
            entropy.clone(),
        )
        .map_err(hs_err)?;
        entropy.array32()?;
        let msg = noise::write(&mut hs, &own_info.to_json()).map_err(hs_err)?;
        Ok((Self { hs, desktop: qr.desktop }, Envelope::PairHello { noise: msg }.encode()))
    }

    /// Read the desktop's `PairWelcome`; returns the next state and the
    /// confirm record to send.
    ///
    /// # Errors
    /// [`PairingError`] when the welcome is not authentic (wrong secret,
    /// someone else's desktop key, tampering).
    pub fn on_welcome(
        mut self,
        welcome: &Envelope,
    ) -> Result<(PhoneAwaitingResult, Vec<u8>), PairingError> {
        let Envelope::PairWelcome { noise } = welcome else {
            return Err(PairingError::Unexpected);
        };
        let payload = noise::read(&mut self.hs, noise).map_err(hs_err)?;
        let desktop_info = DeviceInfo::from_json(&payload)?;
        let sas = Sas::from_handshake_hash(&noise::handshake_hash(&self.hs));
        let mut session = noise::into_session(self.hs, Side::Initiator);
        let confirm = session.seal(&Content::PairConfirm.encode())?;
        Ok((PhoneAwaitingResult { desktop: self.desktop, desktop_info, session, sas }, confirm))
    }
}

/// The phone waiting for the desktop user's decision.
#[derive(Debug)]
pub struct PhoneAwaitingResult {
    desktop: PublicKey,
    desktop_info: DeviceInfo,
    session: Session,
    sas: Sas,
}

impl PhoneAwaitingResult {
    /// The code to show.
    #[must_use]
    pub fn sas(&self) -> Sas {
        self.sas
    }

    /// What the desktop says it is.
    #[must_use]
    pub fn desktop_info(&self) -> &DeviceInfo {
        &self.desktop_info
    }

    /// Read the desktop's result.
    ///
    /// # Errors
    /// [`PairingError::Refused`] when the desktop user refused; other
    /// variants when the record is not authentic or malformed.
    pub fn on_result(mut self, result: &Envelope) -> Result<PairedPeer, PairingError> {
        let plain = self.session.open(result)?;
        match Content::decode(&plain)? {
            Content::PairResult { accepted: true, session_psk, .. } => Ok(PairedPeer {
                public_key: self.desktop,
                info: self.desktop_info,
                session_psk: Zeroizing::new(session_psk),
                session: self.session,
                sas: self.sas,
            }),
            Content::PairResult { accepted: false, reason, .. } => {
                Err(PairingError::Refused(reason))
            }
            _ => Err(PairingError::Unexpected),
        }
    }
}
