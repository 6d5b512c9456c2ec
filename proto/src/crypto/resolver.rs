//! A `snow` crypto resolver built on x25519-dalek, chacha20poly1305 and
//! blake2, so the tree holds one copy of each crypto crate and snow supplies
//! only the handshake logic. Only the primitives Tandem uses resolve:
//! 25519, ChaChaPoly and BLAKE2s; anything else is `None` (snow then refuses
//! to build the handshake).

use blake2::Blake2s256;
use blake2::digest::Digest;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroize;

use crate::entropy::Entropy;

/// The resolver handed to `snow::Builder::with_resolver`. It carries the
/// entropy source that the handshake's ephemeral keys come from.
#[derive(Debug, Clone)]
pub struct TandemResolver {
    entropy: Entropy,
}

impl TandemResolver {
    /// A resolver whose handshakes draw randomness from `entropy`.
    #[must_use]
    pub fn new(entropy: Entropy) -> Self {
        Self { entropy }
    }
}

impl CryptoResolver for TandemResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(self.entropy.clone()))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::<X25519>::default()),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        match choice {
            HashChoice::Blake2s => Some(Box::<Blake2s>::default()),
            _ => None,
        }
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::ChaChaPoly => Some(Box::<ChaChaPoly>::default()),
            _ => None,
        }
    }
}

/// X25519 over x25519-dalek. A DH result that is all zeros (the peer sent a
/// low-order point) is an error, not a key.
#[derive(Default)]
pub struct X25519 {
    private: [u8; 32],
    public: [u8; 32],
}

impl Drop for X25519 {
    fn drop(&mut self) {
        self.private.zeroize();
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        let mut k = [0u8; 32];
        let n = privkey.len().min(32);
        if let (Some(dst), Some(src)) = (k.get_mut(..n), privkey.get(..n)) {
            dst.copy_from_slice(src);
        }
        let secret = x25519_dalek::StaticSecret::from(k);
        self.public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        self.private = k;
        k.zeroize();
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut k = [0u8; 32];
        rng.try_fill_bytes(&mut k)?;
        self.set(&k);
        k.zeroize();
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        // snow passes its key buffer, which may be longer than 32 bytes.
        let their: [u8; 32] =
            pubkey.get(..32).and_then(|k| k.try_into().ok()).ok_or(snow::Error::Dh)?;
        let secret = x25519_dalek::StaticSecret::from(self.private);
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(their));
        if !shared.was_contributory() {
            return Err(snow::Error::Dh);
        }
        let dst = out.get_mut(..32).ok_or(snow::Error::Dh)?;
        dst.copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

/// ChaCha20-Poly1305 (RFC 8439) over the chacha20poly1305 crate, with Noise's
/// nonce encoding: 32 zero bits, then the 64-bit counter little-endian.
#[derive(Default)]
pub struct ChaChaPoly {
    key: [u8; 32],
}

impl Drop for ChaChaPoly {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// Noise's 96-bit nonce for a 64-bit counter.
pub(crate) fn noise_nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    if let Some(tail) = n.get_mut(4..) {
        tail.copy_from_slice(&counter.to_le_bytes());
    }
    Nonce::from(n)
}

impl Cipher for ChaChaPoly {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }
    fn set(&mut self, key: &[u8; 32]) {
        self.key = *key;
    }
    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        // snow sizes `out` as plaintext + TAGLEN; anything else is a snow bug,
        // answered with 0 bytes written rather than a panic.
        let len = plaintext.len();
        let Some((body, rest)) = out.split_at_mut_checked(len) else {
            return 0;
        };
        let Some(tag_dst) = rest.get_mut(..16) else {
            return 0;
        };
        body.copy_from_slice(plaintext);
        let cipher = ChaCha20Poly1305::new(&Key::from(self.key));
        match cipher.encrypt_inout_detached(&noise_nonce(nonce), authtext, body.into()) {
            Ok(tag) => {
                tag_dst.copy_from_slice(&tag);
                len + 16
            }
            Err(_) => 0,
        }
    }
    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let len = ciphertext.len().checked_sub(16).ok_or(snow::Error::Decrypt)?;
        let (body, tag) = ciphertext.split_at(len);
        let dst = out.get_mut(..len).ok_or(snow::Error::Decrypt)?;
        dst.copy_from_slice(body);
        let tag = Tag::try_from(tag).map_err(|_| snow::Error::Decrypt)?;
        let cipher = ChaCha20Poly1305::new(&Key::from(self.key));
        if cipher
            .decrypt_inout_detached(&noise_nonce(nonce), authtext, (&mut *dst).into(), &tag)
            .is_err()
        {
            dst.zeroize();
            return Err(snow::Error::Decrypt);
        }
        Ok(len)
    }
}

/// BLAKE2s-256 over the blake2 crate.
#[derive(Default)]
pub struct Blake2s {
    hasher: Blake2s256,
}

impl Hash for Blake2s {
    fn name(&self) -> &'static str {
        "BLAKE2s"
    }
    fn block_len(&self) -> usize {
        64
    }
    fn hash_len(&self) -> usize {
        32
    }
    fn reset(&mut self) {
        self.hasher = Blake2s256::new();
    }
    fn input(&mut self, data: &[u8]) {
        Digest::update(&mut self.hasher, data);
    }
    fn result(&mut self, out: &mut [u8]) {
        let digest = std::mem::take(&mut self.hasher).finalize();
        if let Some(dst) = out.get_mut(..32) {
            dst.copy_from_slice(&digest);
        }
    }
}
