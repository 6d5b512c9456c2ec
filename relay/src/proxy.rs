//! The PROXY protocol header (versions 1 and 2) a trusted proxy sends at the
//! start of a connection to name the client. This module only finds where
//! the header ends, reading exactly its bytes and none of what follows (the
//! TLS or HTTP bytes); the `ppp` crate parses them. Only connections from a
//! trusted proxy are read this way (see `listener`).

use std::io;
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The signature a version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is at most this long, `\r\n` included.
const V1_MAX: usize = 107;
/// Most address and TLV bytes taken after a version 2 header's fixed part
/// (the format allows 65 535; proxies send a few hundred at most).
const V2_MAX_BODY: usize = 2048;

/// Why a PROXY header was refused; the connection is closed.
#[derive(Debug, Error)]
pub(crate) enum ProxyError {
    /// Reading failed or the connection ended.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The connection does not start with a PROXY header.
    #[error("the connection does not start with a PROXY header")]
    Missing,
    /// The header is longer than allowed.
    #[error("the PROXY header is too long")]
    TooLong,
    /// The header is not valid.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
}

/// Read one PROXY header from `r`. `Some`: the client's address; `None`:
/// the proxy speaks for itself (version 2 `LOCAL`, version 1 `UNKNOWN`, or
/// an address family other than IPv4 and IPv6), so the connection's own
/// peer address stands.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut first = [0u8; 1];
    r.read_exact(&mut first).await?;
    match first {
        [b'P'] => {
            // Version 1: text up to "\r\n", read a byte at a time so that
            // nothing after it is consumed.
            let mut buf = Vec::with_capacity(V1_MAX);
            buf.push(b'P');
            while !buf.ends_with(b"\r\n") {
                if buf.len() >= V1_MAX {
                    return Err(ProxyError::TooLong);
                }
                let mut b = [0u8; 1];
                r.read_exact(&mut b).await?;
                buf.extend_from_slice(&b);
            }
            parse_v1(&buf)
        }
        [b'\r'] => {
            let mut fixed = [0u8; 16];
            fixed[0] = b'\r';
            r.read_exact(fixed.get_mut(1..).unwrap_or_default()).await?;
            if fixed.get(..12) != Some(&V2_SIGNATURE[..]) {
                return Err(ProxyError::Missing);
            }
            let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
            if len > V2_MAX_BODY {
                return Err(ProxyError::TooLong);
            }
            let mut buf = fixed.to_vec();
            buf.resize(16 + len, 0);
            r.read_exact(buf.get_mut(16..).unwrap_or_default()).await?;
            parse_v2(&buf)
        }
        _ => Err(ProxyError::Missing),
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(bytes).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    Ok(match header.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        Addresses::Tcp6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        Addresses::Unknown => None,
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v2::{Addresses, Command, Header};
    let header = Header::try_from(bytes).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        Addresses::IPv6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read a header from `input`; also what is left unread.
    async fn read(input: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut r = input;
        let result = read_header(&mut r).await;
        (result, r.to_vec())
    }

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(addresses.len()).unwrap_or(0).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[tokio::test]
    async fn version_1_and_2_headers_name_the_client_and_nothing_after_them_is_read() {
        let (r, rest) =
            read(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r.unwrap(), Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (r, rest) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n\x16\x03").await;
        assert_eq!(r.unwrap(), Some("[2001:db8::7]:51000".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03");
        let (r, rest) = read(b"PROXY UNKNOWN\r\nGET").await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"GET");

        let mut addrs = vec![203, 0, 113, 8, 10, 0, 0, 1];
        addrs.extend_from_slice(&51001u16.to_be_bytes());
        addrs.extend_from_slice(&443u16.to_be_bytes());
        let mut input = v2(1, 0x11, &addrs);
        input.extend_from_slice(b"GET");
        let (r, rest) = read(&input).await;
        assert_eq!(r.unwrap(), Some("203.0.113.8:51001".parse().unwrap()));
        assert_eq!(rest, b"GET");
        // LOCAL: the proxy's own connection (health checks).
        let (r, rest) = read(&[v2(0, 0x00, &[]), b"GET".to_vec()].concat()).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, b"GET");
    }

    #[tokio::test]
    async fn garbage_and_truncated_headers_are_refused_without_panicking() {
        let cases: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\n".to_vec(),
            b"\x16\x03\x01".to_vec(),
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n".to_vec(),
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000".to_vec(),
            [b"PROXY TCP4 ".to_vec(), vec![b'1'; 200]].concat(),
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00".to_vec(),
            v2(1, 0x11, &[1, 2, 3])[..15].to_vec(),
            v2(1, 0x11, &[1, 2, 3]),
            {
                let mut h = v2(1, 0x11, &[]);
                h[14..16].copy_from_slice(&60_000u16.to_be_bytes());
                h
            },
            vec![],
            vec![b'P'],
            vec![b'\r'],
        ];
        for input in cases {
            let (r, _) = read(&input).await;
            assert!(r.is_err(), "{:?} was taken: {r:?}", String::from_utf8_lossy(&input));
        }
    }
}
