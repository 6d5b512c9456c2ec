//! The device key's text form (`tandem-device-key v1`, see the module
//! docs of [`crate::keystore`]) and the buffers that hold secrets.

use tandem_proto::DeviceKey;

/// The first line of a version 1 key file.
const HEADER_V1: &str = "tandem-device-key v1";
/// The common prefix of every version's first line.
const HEADER_PREFIX: &str = "tandem-device-key v";

/// `tandem-device-key v1\nsecret …\ndevice-id …\n`.
pub(super) fn encode_key_file(key: &DeviceKey) -> SecretBuf {
    let id = key.public().device_id().to_string();
    let mut out = SecretBuf(Vec::with_capacity(128));
    out.0.extend_from_slice(HEADER_V1.as_bytes());
    out.0.extend_from_slice(b"\nsecret ");
    let secret = SecretBuf(key.to_bytes().to_vec());
    base64url_encode(&secret.0, &mut out.0);
    out.0.extend_from_slice(b"\ndevice-id ");
    out.0.extend_from_slice(id.as_bytes());
    out.0.push(b'\n');
    out
}

pub(super) fn decode_key_file(bytes: &[u8]) -> Result<DeviceKey, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text")?;
    let mut lines = text.lines();
    match lines.next() {
        Some(HEADER_V1) => {}
        Some(h) if h.starts_with(HEADER_PREFIX) => {
            return Err("unknown format version (written by a newer Tandem?)");
        }
        _ => return Err("not a Tandem device key file"),
    }
    let secret = lines
        .next()
        .and_then(|l| l.strip_prefix("secret "))
        .ok_or("the `secret` line is missing")?;
    let secret = base64url_decode_32(secret.as_bytes()).ok_or("the secret is not 32 bytes")?;
    let key = DeviceKey::from_bytes(secret.0);
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("device-id "))
        .ok_or("the `device-id` line is missing")?;
    if lines.any(|l| !l.is_empty()) {
        return Err("unexpected lines after `device-id`");
    }
    if key.public().device_id().to_string() != id {
        return Err("the secret does not match the device id");
    }
    Ok(key)
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url (RFC 4648 §5).
pub(super) fn base64url_encode(bytes: &[u8], out: &mut Vec<u8>) {
    for chunk in bytes.chunks(3) {
        let mut n = 0u32;
        for i in 0..3 {
            n = (n << 8) | u32::from(chunk.get(i).copied().unwrap_or(0));
        }
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(BASE64URL.get(sextet as usize).copied().unwrap_or(b'A'));
        }
    }
}

fn base64url_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Exactly 32 bytes of canonical unpadded base64url (43 characters, the
/// last one's two unused bits zero).
fn base64url_decode_32(s: &[u8]) -> Option<Secret32> {
    if s.len() != 43 {
        return None;
    }
    let mut out = Secret32([0; 32]);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut i = 0usize;
    for &c in s {
        acc = (acc << 6) | base64url_value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.0.get_mut(i)? = (acc >> bits) as u8;
            i += 1;
            acc &= (1 << bits) - 1;
        }
    }
    (i == 32 && acc == 0).then_some(out)
}

/// 32 secret bytes, overwritten when dropped (best effort).
struct Secret32([u8; 32]);

impl Drop for Secret32 {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&mut self.0);
    }
}

/// Bytes that hold secrets (a key file, a serialised link), overwritten when
/// dropped, spare capacity included. Best effort: copies left behind by
/// earlier reallocations are not reached.
pub(crate) struct SecretBuf(pub(crate) Vec<u8>);

impl Drop for SecretBuf {
    fn drop(&mut self) {
        let cap = self.0.capacity();
        self.0.resize(cap, 0);
        self.0.fill(0);
        std::hint::black_box(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystore_base64url_round_trips_and_is_canonical() {
        for seed in 0u8..20 {
            let bytes: Vec<u8> =
                (0..32u8).map(|i| i.wrapping_mul(seed).wrapping_add(seed)).collect();
            let mut s = Vec::new();
            base64url_encode(&bytes, &mut s);
            assert_eq!(s.len(), 43);
            assert_eq!(base64url_decode_32(&s).unwrap().0.to_vec(), bytes);
        }
        // Matches the proto crate's encoding of public keys.
        let pk = DeviceKey::from_bytes([3; 32]).public();
        let mut s = Vec::new();
        base64url_encode(&pk.0, &mut s);
        assert_eq!(String::from_utf8(s).unwrap(), pk.to_string());
        // Non-zero unused bits, wrong length, bad characters.
        let mut s = vec![b'A'; 43];
        s[42] = b'B';
        assert!(base64url_decode_32(&s).is_none());
        assert!(base64url_decode_32(&[b'A'; 42]).is_none());
        assert!(base64url_decode_32(&[b'='; 43]).is_none());
    }
}
