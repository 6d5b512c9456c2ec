//! JSON Web Tokens (RFC 7519) signed with ring: ES256 for APNs provider
//! tokens, RS256 for Google's OAuth2 assertions. Only the assembly is here
//! (base64url of two JSON objects joined by dots, then the signature); the
//! signing is ring's.

use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde::Serialize;

/// Why a key could not be loaded or a token not signed.
#[derive(thiserror::Error, Debug)]
pub(crate) enum JwtError {
    /// The PEM text holds no PKCS#8 key.
    #[error("no PKCS#8 private key (\"-----BEGIN PRIVATE KEY-----\") in the PEM text")]
    NoKey,
    /// ring refused the key.
    #[error("not a usable {kind} key: {reason}")]
    Rejected {
        /// The kind of key expected.
        kind: &'static str,
        /// ring's reason.
        reason: String,
    },
    /// Signing failed.
    #[error("signing the token failed")]
    Sign,
    /// The header or claims could not be serialized.
    #[error("cannot encode the token: {0}")]
    Json(String),
}

/// A JWT signing key: ES256 (ECDSA P-256, SHA-256) or RS256
/// (RSASSA-PKCS1-v1_5, SHA-256).
pub(crate) struct JwtKey {
    key: Key,
    rng: SystemRandom,
}

enum Key {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl JwtKey {
    /// An ES256 key from a PEM PKCS#8 text (Apple's `.p8` file). ring needs
    /// the public key inside the PKCS#8 structure, which Apple's files have.
    pub(crate) fn es256_from_pem(pem: &[u8]) -> Result<Self, JwtError> {
        let der = pkcs8_from_pem(pem)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| JwtError::Rejected { kind: "P-256 ECDSA", reason: e.to_string() })?;
        Ok(Self { key: Key::Es256(key), rng })
    }

    /// An RS256 key from a PEM PKCS#8 text (a Google service account's
    /// `private_key`); 2048 to 4096 bits.
    pub(crate) fn rs256_from_pem(pem: &[u8]) -> Result<Self, JwtError> {
        let der = pkcs8_from_pem(pem)?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| JwtError::Rejected { kind: "RSA", reason: e.to_string() })?;
        Ok(Self { key: Key::Rs256(key), rng: SystemRandom::new() })
    }

    /// The compact JWT `base64url(header) . base64url(claims) .
    /// base64url(signature of those)`.
    pub(crate) fn sign(
        &self,
        header: &impl Serialize,
        claims: &impl Serialize,
    ) -> Result<String, JwtError> {
        let header = serde_json::to_vec(header).map_err(|e| JwtError::Json(e.to_string()))?;
        let claims = serde_json::to_vec(claims).map_err(|e| JwtError::Json(e.to_string()))?;
        let mut token = BASE64URL_NOPAD.encode(&header);
        token.push('.');
        token.push_str(&BASE64URL_NOPAD.encode(&claims));
        let signature = match &self.key {
            Key::Es256(key) => {
                key.sign(&self.rng, token.as_bytes()).map_err(|_| JwtError::Sign)?.as_ref().to_vec()
            }
            Key::Rs256(key) => {
                let mut sig = vec![0u8; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &self.rng, token.as_bytes(), &mut sig)
                    .map_err(|_| JwtError::Sign)?;
                sig
            }
        };
        token.push('.');
        token.push_str(&BASE64URL_NOPAD.encode(&signature));
        Ok(token)
    }
}

/// The first PKCS#8 private key in `pem`.
fn pkcs8_from_pem(pem: &[u8]) -> Result<PrivatePkcs8KeyDer<'static>, JwtError> {
    for item in rustls_pemfile::read_all(&mut &pem[..]) {
        match item {
            Ok(rustls_pemfile::Item::Pkcs8Key(key)) => return Ok(key),
            Ok(_) => {}
            Err(_) => return Err(JwtError::NoKey),
        }
    }
    Err(JwtError::NoKey)
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    #[test]
    fn es256_token_verifies_with_the_public_key() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = JwtKey::es256_from_pem(pair.serialize_pem().as_bytes()).unwrap();
        let token = key
            .sign(&serde_json::json!({"alg": "ES256"}), &serde_json::json!({"iss": "T"}))
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let signed = format!("{}.{}", parts[0], parts[1]);
        let sig = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
        assert_eq!(sig.len(), 64, "JWS ES256 is r || s");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key_raw())
            .verify(signed.as_bytes(), &sig)
            .unwrap();
        let claims = BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap();
        assert_eq!(claims, br#"{"iss":"T"}"#);
    }

    #[test]
    fn garbage_and_wrong_keys_are_refused() {
        assert!(matches!(JwtKey::es256_from_pem(b"not a pem"), Err(JwtError::NoKey)));
        assert!(matches!(JwtKey::rs256_from_pem(b""), Err(JwtError::NoKey)));
        let cert = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        // a certificate is not a key
        assert!(matches!(JwtKey::es256_from_pem(cert.cert.pem().as_bytes()), Err(JwtError::NoKey)));
        // a P-256 key is not an RSA key
        let pem = cert.key_pair.serialize_pem();
        assert!(matches!(JwtKey::rs256_from_pem(pem.as_bytes()), Err(JwtError::Rejected { .. })));
        // a PEM block with garbage inside
        let bad = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(JwtKey::es256_from_pem(bad.as_bytes()), Err(JwtError::Rejected { .. })));
    }
}
