//! Client addresses: the key that per-address limits count under (an IPv4
//! address, or an IPv6 address cut to its prefix, /64 by default), the
//! trusted proxies whose word on the client's address the relay takes, and
//! the `X-Forwarded-For` rule (the right-most entry that is not a trusted
//! proxy). Headers from a peer that is not a trusted proxy are never read.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// What a trusted proxy tells the relay the client's address with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// An HTTP `X-Forwarded-For` header on each request (the default): the
    /// right-most address in it that is not a trusted proxy.
    #[default]
    ForwardedFor,
    /// A PROXY protocol header (version 1 or 2) at the start of each TCP
    /// connection; a connection from a trusted proxy without one is closed.
    ProxyProtocol,
}

impl ProxyHeader {
    /// Parse the setting's value: `x-forwarded-for` or `proxy-protocol`.
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" | "xff" => Ok(Self::ForwardedFor),
            "proxy-protocol" | "proxy" => Ok(Self::ProxyProtocol),
            other => Err(format!(
                "unknown trusted proxy header {other:?}: use x-forwarded-for or proxy-protocol"
            )),
        }
    }
}

/// The key per-address limits count under: an IPv4 address, or an IPv6
/// address with everything past the prefix zeroed (an IPv4-mapped IPv6
/// address counts as the IPv4 address). One host on IPv6 usually holds a
/// whole /64, so keying on /128 would give it 2^64 keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct IpKey {
    ip: IpAddr,
    prefix: u8,
}

impl IpKey {
    /// The key of `ip` with IPv6 addresses cut to `/v6_prefix` (clamped to 1..=128).
    pub(crate) fn new(ip: IpAddr, v6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => Self { ip: IpAddr::V4(v4), prefix: 32 },
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self { ip: IpAddr::V4(v4), prefix: 32 },
                None => {
                    let prefix = v6_prefix.clamp(1, 128);
                    let mask = u128::MAX << (128 - u32::from(prefix));
                    let masked = Ipv6Addr::from(u128::from(v6) & mask);
                    Self { ip: IpAddr::V6(masked), prefix }
                }
            },
        }
    }
}

impl IpKey {
    /// The key as the store keeps it with what it counts per address.
    pub(crate) fn addr_key(&self) -> crate::store::AddrKey {
        crate::store::AddrKey::from_ip(self.ip)
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{}", self.prefix),
        }
    }
}

/// Whether `ip` is one of the trusted proxies.
pub(crate) fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`1.2.3.4:5`, `[2001:db8::1]:5`).
fn parse_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// The client's address from the `X-Forwarded-For` headers of a request
/// that came from a trusted proxy: walking from the right (the entry the
/// nearest proxy added), the first address that is not a trusted proxy. If
/// every entry is a trusted proxy, the left-most. `None` when there is no
/// such header, or an entry on the way cannot be read (the caller then uses
/// the proxy's own address).
pub(crate) fn forwarded_for(headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    // Split the raw bytes: the entries left of the client's are the
    // client's own (any bytes at all) and must not decide anything, so a
    // line is not read as text as a whole.
    let mut entries: Vec<&[u8]> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        entries.extend(
            value
                .as_bytes()
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|e| !e.is_empty()),
        );
    }
    let mut leftmost = None;
    for entry in entries.iter().rev() {
        let ip = std::str::from_utf8(entry).ok().and_then(parse_entry)?;
        if !is_trusted(ip, trusted) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap_or_else(|e| panic!("{n}: {e}"))).collect()
    }

    #[test]
    fn ipv6_addresses_count_per_prefix_and_ipv4_per_address() {
        let k = |s: &str, p: u8| IpKey::new(ip(s), p);
        // One /64: the same key, whatever the interface id.
        assert_eq!(k("2001:db8:1:2:aaaa::1", 64), k("2001:db8:1:2:ffff:1:2:3", 64));
        assert_ne!(k("2001:db8:1:2::1", 64), k("2001:db8:1:3::1", 64));
        assert_eq!(k("2001:db8:1:2::1", 64).to_string(), "2001:db8:1:2::/64");
        // Another prefix length, and the clamps.
        assert_eq!(k("2001:db8:1:2::1", 48), k("2001:db8:1:ffff::1", 48));
        assert_ne!(k("2001:db8:1:2::1", 128), k("2001:db8:1:2::2", 128));
        assert_eq!(k("2001:db8::1", 0), k("::1", 1));
        // IPv4: the whole address; mapped IPv6 is the same host.
        assert_ne!(k("192.0.2.1", 64), k("192.0.2.2", 64));
        assert_eq!(k("::ffff:192.0.2.1", 64), k("192.0.2.1", 64));
        assert_eq!(k("192.0.2.1", 64).to_string(), "192.0.2.1");
        // Loopback over IPv6 is one key.
        assert_eq!(k("::1", 64), k("::2", 64));
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_entry() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let h = |values: &[&str]| {
            let mut m = HeaderMap::new();
            for v in values {
                m.append("x-forwarded-for", v.parse().unwrap_or_else(|e| panic!("{v}: {e}")));
            }
            m
        };
        // The client put a fake entry first; the proxy appended the real one.
        assert_eq!(forwarded_for(&h(&["6.6.6.6, 203.0.113.7"]), &trusted), Some(ip("203.0.113.7")));
        // Two proxies of ours in a row, over two header lines.
        assert_eq!(
            forwarded_for(&h(&["6.6.6.6, 203.0.113.7", "10.1.2.3"]), &trusted),
            Some(ip("203.0.113.7"))
        );
        // Ports and brackets.
        assert_eq!(forwarded_for(&h(&["[2001:db8::5]:443"]), &trusted), Some(ip("2001:db8::5")));
        assert_eq!(forwarded_for(&h(&["203.0.113.9:5000"]), &trusted), Some(ip("203.0.113.9")));
        assert_eq!(forwarded_for(&h(&["[2001:db8::6]"]), &trusted), Some(ip("2001:db8::6")));
        // Only proxies: the left-most.
        assert_eq!(forwarded_for(&h(&["10.0.0.1, 10.0.0.2"]), &trusted), Some(ip("10.0.0.1")));
        // Garbage where the proxies' entries should be: not trusted at all.
        assert_eq!(forwarded_for(&h(&["203.0.113.7, nonsense"]), &trusted), None);
        // Garbage left of the client's entry is the client's own and is never read.
        assert_eq!(
            forwarded_for(&h(&["nonsense, 203.0.113.7"]), &trusted),
            Some(ip("203.0.113.7"))
        );
        // ... whatever its bytes (obs-text in the client's part of the line).
        let mut raw = HeaderMap::new();
        raw.append("x-forwarded-for", http::HeaderValue::from_bytes(b"\xff, 203.0.113.7").unwrap());
        assert_eq!(forwarded_for(&raw, &trusted), Some(ip("203.0.113.7")));
        raw.append("x-forwarded-for", http::HeaderValue::from_bytes(b"10.0.0.1").unwrap());
        assert_eq!(forwarded_for(&raw, &trusted), Some(ip("203.0.113.7")));
        // Such bytes on the proxies' side: not trusted at all.
        let mut raw = HeaderMap::new();
        raw.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"203.0.113.7, 10.\xff").unwrap(),
        );
        assert_eq!(forwarded_for(&raw, &trusted), None);
        assert_eq!(forwarded_for(&h(&[]), &trusted), None);
        assert_eq!(forwarded_for(&h(&[" , "]), &trusted), None);
    }

    #[test]
    fn trusted_proxies_match_by_network_and_mapped_addresses() {
        let trusted = nets(&["127.0.0.2/32", "fd00::/8"]);
        assert!(is_trusted(ip("127.0.0.2"), &trusted));
        assert!(is_trusted(ip("::ffff:127.0.0.2"), &trusted));
        assert!(!is_trusted(ip("127.0.0.3"), &trusted));
        assert!(is_trusted(ip("fd12::1"), &trusted));
        assert!(!is_trusted(ip("2001:db8::1"), &[]));
        assert_eq!(ProxyHeader::parse("PROXY-protocol"), Ok(ProxyHeader::ProxyProtocol));
        assert_eq!(ProxyHeader::parse("x-forwarded-for"), Ok(ProxyHeader::ForwardedFor));
        assert!(ProxyHeader::parse("forwarded").is_err());
    }
}
