//! The relay's VAPID key (RFC 8292): an ECDSA P-256 key pair that signs
//! every Web Push request, made on first start and kept in the data
//! directory as `vapid.key` (the raw 32-byte private scalar, mode 0600).
//! Browsers bind a subscription to its public key (the
//! `applicationServerKey`), so it must outlive restarts and be the same on
//! every node of a cluster.

use std::io::{Read as _, Write as _};
use std::path::Path;

use web_push_native::jwt_simple::algorithms::{
    ECDSAP256KeyPairLike as _, ECDSAP256PublicKeyLike as _, ES256KeyPair,
};
use web_push_native::jwt_simple::claims::Claims;

/// The file name in the data directory.
pub const VAPID_FILE: &str = "vapid.key";

/// How long a VAPID token is valid (RFC 8292: at most 24 hours).
const TOKEN_VALIDITY_HOURS: u64 = 12;

/// Why the VAPID key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    /// The key file could not be read or written.
    #[error("VAPID key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The key file does not hold a P-256 private key.
    #[error("VAPID key file {0} does not hold a 32-byte P-256 private key")]
    BadKey(String),
    /// Signing failed.
    #[error("VAPID signature: {0}")]
    Sign(String),
}

/// The relay's VAPID key pair.
pub struct Vapid {
    key: ES256KeyPair,
    public: Vec<u8>,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vapid({})", self.public_key_b64())
    }
}

impl Vapid {
    /// Read the key at `path`, or make one there (0600) if there is none.
    ///
    /// # Errors
    /// The file cannot be read or written, or holds something else.
    pub fn load_or_create(path: &Path) -> Result<Self, VapidError> {
        let shown = path.display().to_string();
        let io = |source| VapidError::Io { path: shown.clone(), source };
        match std::fs::File::open(path) {
            Ok(mut f) => {
                let mut raw = Vec::new();
                f.read_to_end(&mut raw).map_err(io)?;
                if raw.len() != 32 {
                    return Err(VapidError::BadKey(shown));
                }
                let key = ES256KeyPair::from_bytes(&raw)
                    .map_err(|_| VapidError::BadKey(shown.clone()))?;
                Ok(Self::from_key(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ES256KeyPair::generate();
                let tmp = path.with_extension("key.tmp");
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                let mut f = crate::fsmode::private_file(&tmp, &mut options).map_err(io)?;
                f.write_all(&key.to_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                drop(f);
                std::fs::rename(&tmp, path).map_err(io)?;
                tracing::info!(path = %shown, "made a new VAPID key");
                Ok(Self::from_key(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_key(key: ES256KeyPair) -> Self {
        let public = key.public_key().public_key().to_bytes_uncompressed();
        Self { key, public }
    }

    /// The public key: 65 bytes, uncompressed P-256.
    #[must_use]
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// The public key as unpadded base64url (the `applicationServerKey`
    /// and the `k` of the `Authorization` header).
    #[must_use]
    pub fn public_key_b64(&self) -> String {
        data_encoding::BASE64URL_NOPAD.encode(&self.public)
    }

    /// The `Authorization` header value for a request to `endpoint`
    /// (RFC 8292 §3: `vapid t=<JWT>, k=<public key>`): an ES256 JWT with
    /// `aud` = the endpoint's origin (with its port, when it has one),
    /// `exp` 12 hours on, `sub` = `subject`.
    ///
    /// # Errors
    /// An endpoint without scheme or host; a signing failure.
    pub fn authorization(&self, endpoint: &http::Uri, subject: &str) -> Result<String, VapidError> {
        let (Some(scheme), Some(host)) = (endpoint.scheme_str(), endpoint.host()) else {
            return Err(VapidError::Sign("the endpoint has no origin".into()));
        };
        let aud = match endpoint.port_u16() {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        let validity =
            web_push_native::jwt_simple::prelude::Duration::from_hours(TOKEN_VALIDITY_HOURS);
        let claims = Claims::create(validity).with_audience(aud).with_subject(subject);
        let token = self.key.sign(claims).map_err(|e| VapidError::Sign(e.to_string()))?;
        Ok(format!("vapid t={token}, k={}", self.public_key_b64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VAPID_FILE);
        let a = Vapid::load_or_create(&path).unwrap();
        assert_eq!(a.public_key().len(), 65);
        assert_eq!(a.public_key()[0], 4);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let b = Vapid::load_or_create(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(Vapid::load_or_create(&path), Err(VapidError::BadKey(_))));
    }

    #[test]
    fn the_authorization_names_the_origin_with_its_port() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vapid::load_or_create(&dir.path().join(VAPID_FILE)).unwrap();
        let uri: http::Uri = "http://127.0.0.1:9000/push/abc".parse().unwrap();
        let h = v.authorization(&uri, "mailto:ops@example.com").unwrap();
        let (t, k) = h.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap();
        assert_eq!(k, v.public_key_b64());
        let claims = t.split('.').nth(1).unwrap();
        let claims = data_encoding::BASE64URL_NOPAD.decode(claims.as_bytes()).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["aud"], "http://127.0.0.1:9000");
        assert_eq!(claims["sub"], "mailto:ops@example.com");
        assert!(claims["exp"].as_u64().is_some());
    }
}
