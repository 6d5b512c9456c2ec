//! The web client, served from the binary: `relay/web/dist/` (built by
//! `relay/web/scripts/build.mjs` and committed) is embedded with
//! `include_bytes!` through the generated table `dist/assets.rs`, so building
//! the relay needs no Node.
//!
//! * `GET /` and `GET /p` (the pairing link's path; the secret stays in the
//!   `#fragment` and never reaches us): `index.html`, `no-store`, with a
//!   fresh random value in the query of the script and stylesheet it links
//!   (the page's `{{load}}` slot) next to their Subresource Integrity
//!   hashes.
//! * `GET /assets/app-<hash>.{js,css}` (any query): `no-store`.
//! * `GET /sw.js`: the service worker (push notifications, docs/PUSH.md),
//!   `no-store` like the bundle; at the root so that its scope can be `/`.
//! * the manifest and icons (no code runs from them): one hour, with an
//!   `ETag`.
//!
//! Nothing that runs code is kept by the browser, and the page names its
//! code by addresses nobody could have named before: so a response some
//! host planted in the browser's cache under the same origin (plain http on
//! a LAN address is the same origin on any network that has that address,
//! `docs/SECURITY.md` §3) is never what the page runs. A planted asset
//! under an address the page does name would fail its integrity check.
//!
//! Every response carries a strict Content-Security-Policy (no inline script
//! or style, connections to this origin only) and the usual hardening
//! headers. Text files are gzipped once, on first request, in pure Rust, and
//! served compressed when `Accept-Encoding` allows. With
//! [`WebClient::Redirect`], `/` and `/p` redirect to a web client on another
//! origin, telling it this relay's origin; with [`WebClient::Off`], nothing
//! is served.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, LazyLock, OnceLock};

use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use tandem_proto::qr::QrPayload;

use crate::config::WebClient;
use crate::server::host_only;
use crate::state::State;
use crate::tls::TlsMode;

/// The generated table: (URL path, Content-Type, cache class, ETag, bytes).
type Row = (&'static str, &'static str, &'static str, &'static str, &'static [u8]);
static FILES: &[Row] = include!("../web/dist/assets.rs");

/// The Content-Security-Policy of every web response. The page has no inline
/// script or style (`relay/web/static/index.html` links one module script and
/// one stylesheet); `connect-src 'self'` covers the WebSocket to this relay.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; manifest-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Headers on every web response (including 304, 404 and redirects).
const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-frame-options", "DENY"),
];

/// The slot in `index.html` filled with a fresh value per response.
const LOAD_SLOT: &[u8] = b"{{load}}";

/// How long browsers may keep a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheClass {
    /// `index.html`: never stored; its [`LOAD_SLOT`] is filled per response.
    Page,
    /// The bundle under `/assets/`: never stored.
    Code,
    /// Manifest and icons (they run no code): stable names, rarely changed.
    Short,
}

impl CacheClass {
    fn parse(s: &str) -> Self {
        match s {
            "page" => Self::Page,
            "code" => Self::Code,
            _ => Self::Short,
        }
    }

    fn header(self) -> &'static str {
        match self {
            Self::Page | Self::Code => "no-store",
            Self::Short => "public, max-age=3600",
        }
    }
}

/// One embedded file.
struct Asset {
    content_type: &'static str,
    cache: CacheClass,
    etag: &'static str,
    body: &'static [u8],
    /// Whether a gzip variant is worth offering (text formats).
    compressible: bool,
    /// The gzip variant and its ETag, made on first use; `None` when it
    /// would not be smaller.
    gzip: OnceLock<Option<(bytes::Bytes, HeaderValue)>>,
}

impl Asset {
    fn gzipped(&self) -> Option<&(bytes::Bytes, HeaderValue)> {
        if !self.compressible {
            return None;
        }
        self.gzip
            .get_or_init(|| {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.body.len() / 3),
                    flate2::Compression::best(),
                );
                enc.write_all(self.body).ok()?;
                let gz = enc.finish().ok()?;
                if gz.len() >= self.body.len() {
                    return None;
                }
                // A representation of its own, so a tag of its own.
                let etag = format!("{}-gzip\"", self.etag.trim_end_matches('"'));
                Some((bytes::Bytes::from(gz), HeaderValue::from_str(&etag).ok()?))
            })
            .as_ref()
    }
}

/// The embedded files by URL path. `/index.html` is only reachable as `/`
/// and `/p`.
static SITE: LazyLock<HashMap<&'static str, Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(path, content_type, cache, etag, body)| {
            let compressible = content_type.starts_with("text/")
                || content_type.contains("json")
                || content_type.contains("javascript")
                || content_type.contains("svg");
            let asset = Asset {
                content_type,
                cache: CacheClass::parse(cache),
                etag,
                body,
                compressible,
                gzip: OnceLock::new(),
            };
            (path, asset)
        })
        .collect()
});

/// The embedded file at `path` (the page for `/` and `/p`), if any.
fn lookup(path: &str) -> Option<&'static Asset> {
    match path {
        "/" | "/p" => SITE.get("/index.html"),
        "/index.html" => None,
        p => SITE.get(p),
    }
}

/// The router's fallback: every path no other route took.
pub(crate) async fn handle(
    AxState(state): AxState<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    let page = matches!(path, "/" | "/p");
    let mut res = match &state.config.web_client {
        WebClient::Embedded => match lookup(path) {
            Some(asset) if is_get(&method) => serve(asset, &method, &headers),
            Some(_) => not_allowed(),
            None => not_found(),
        },
        WebClient::Redirect(target) if page => {
            if is_get(&method) {
                redirect(&state, target, &headers)
            } else {
                not_allowed()
            }
        }
        _ => not_found(),
    };
    let h = res.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, "no-store")], "not found\n").into_response()
}

fn not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")], "method not allowed\n")
        .into_response()
}

fn serve(asset: &'static Asset, method: &Method, headers: &HeaderMap) -> Response {
    if asset.cache == CacheClass::Page {
        return serve_page(asset, method);
    }
    let gzip = if accepts_gzip(headers) { asset.gzipped() } else { None };
    let (body, etag) = match gzip {
        Some((gz, etag)) => (gz.clone(), etag.clone()),
        None => (bytes::Bytes::from_static(asset.body), HeaderValue::from_static(asset.etag)),
    };
    let mut b = Response::builder()
        .header(header::CACHE_CONTROL, asset.cache.header())
        .header(header::ETAG, etag.clone());
    if asset.compressible {
        b = b.header(header::VARY, "Accept-Encoding");
    }
    // Either tag names the same content.
    let tags = [Some(asset.etag), gzip.and_then(|(_, t)| t.to_str().ok())];
    if if_none_match(headers, tags.iter().flatten().copied()) {
        return b.status(StatusCode::NOT_MODIFIED).body(Body::empty()).unwrap_or_default();
    }
    b = b.header(header::CONTENT_TYPE, asset.content_type);
    if gzip.is_some() {
        b = b.header(header::CONTENT_ENCODING, "gzip");
    }
    b = b.header(header::CONTENT_LENGTH, body.len());
    let body = if method == Method::HEAD { Body::empty() } else { Body::from(body) };
    b.status(StatusCode::OK).body(body).unwrap_or_default()
}

/// `index.html` with a fresh random value in its [`LOAD_SLOT`]s: the query of
/// the script and stylesheet it links, so the browser fetches them anew
/// (never from a cache entry someone planted under a known address). Small:
/// neither compressed nor tagged, as each response differs.
fn serve_page(asset: &'static Asset, method: &Method) -> Response {
    let load: [u8; 16] = rand::rng().random();
    let load: String = load.iter().map(|b| format!("{b:02x}")).collect();
    let body = fill_slot(asset.body, LOAD_SLOT, load.as_bytes());
    let b = Response::builder()
        .header(header::CACHE_CONTROL, asset.cache.header())
        .header(header::CONTENT_TYPE, asset.content_type)
        .header(header::CONTENT_LENGTH, body.len());
    let body = if method == Method::HEAD { Body::empty() } else { Body::from(body) };
    b.status(StatusCode::OK).body(body).unwrap_or_default()
}

/// `bytes` with every `slot` replaced by `value`.
fn fill_slot(bytes: &[u8], slot: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4 * value.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(slot.len()).position(|w| w == slot) {
        out.extend_from_slice(rest.get(..at).unwrap_or_default());
        out.extend_from_slice(value);
        rest = rest.get(at + slot.len()..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    out
}

/// Whether `If-None-Match` names one of `tags` (weak comparison, as RFC 9110
/// §13.1.2 asks), or is `*`.
fn if_none_match<'a>(headers: &HeaderMap, tags: impl Iterator<Item = &'a str> + Clone) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',')
            .map(str::trim)
            .any(|t| t == "*" || tags.clone().any(|tag| t.strip_prefix("W/").unwrap_or(t) == tag))
    })
}

/// Whether `Accept-Encoding` allows gzip (an explicit `gzip` or `*` with a
/// non-zero quality; an explicit `gzip;q=0` wins over `*`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (mut gzip, mut star) = (None, None);
    for v in headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()) {
        for item in v.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q > 0.0),
                "*" => star = Some(q > 0.0),
                _ => {}
            }
        }
    }
    gzip.or(star).unwrap_or(false)
}

/// `/p` (or `/`) on a relay whose web client lives elsewhere: `302` to it
/// with `?relay=<this relay's origin>`. The browser carries the `#fragment`
/// (the pairing secret) over to the new location itself.
fn redirect(state: &State, target: &str, headers: &HeaderMap) -> Response {
    let origin = match origin(state, headers) {
        Ok(o) => o,
        Err(refusal) => return refusal.into_response(),
    };
    let sep = if target.contains('?') { '&' } else { '?' };
    let location = format!("{target}{sep}relay={}", percent_encode(&origin));
    match HeaderValue::from_str(&location) {
        Ok(loc) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, loc),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "bad web client URL\n").into_response(),
    }
}

/// This relay's `http(s)://host[:port]` origin as the browser sees it: the
/// `Host` header, which must be one of the relay's names, and `https` when
/// the relay terminates TLS. Without TLS the relay is on a local network or
/// behind a TLS-terminating proxy: `X-Forwarded-Proto` decides if present,
/// else `http` for a local host and `https` for any other. The result must
/// pass the QR payload's relay rule (plain http only on a local network).
fn origin(state: &State, headers: &HeaderMap) -> Result<String, (StatusCode, String)> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().trim();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        && host.parse::<http::uri::Authority>().is_ok();
    let name = host_only(&host);
    if !valid || !state.config.names.iter().any(|n| host_only(n) == name) {
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            format!("this relay does not answer to {name:?}; add it to the relay's names\n"),
        ));
    }
    let scheme = if matches!(state.config.tls, TlsMode::Off) {
        let forwarded = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match forwarded.as_deref() {
            Some(p @ ("http" | "https")) => p.to_owned(),
            _ if QrPayload::validate_relay(&format!("http://{host}")).is_ok() => "http".into(),
            _ => "https".into(),
        }
    } else {
        "https".into()
    };
    let origin = format!("{scheme}://{host}");
    QrPayload::validate_relay(&origin).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("{origin} cannot be a relay origin (plain http only on a local network)\n"),
        )
    })?;
    Ok(origin)
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_table_has_the_page_hashed_assets_and_the_manifest() {
        let page = lookup("/p").unwrap();
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        assert_eq!(page.cache, CacheClass::Page);
        assert!(std::ptr::eq(page, lookup("/").unwrap()));
        assert!(lookup("/index.html").is_none());
        let html = std::str::from_utf8(page.body).unwrap();
        for (path, asset) in SITE.iter() {
            assert!(asset.etag.starts_with('"') && asset.etag.ends_with('"'), "{path}");
            if path.starts_with("/assets/") {
                assert_eq!(asset.cache, CacheClass::Code, "{path}");
            }
            if path.starts_with("/assets/app-") {
                // Linked with a per-response value and its integrity hash.
                let tag = html.split(&format!("{path}?v={{{{load}}}}\"")).nth(1);
                let tag = tag.unwrap_or_else(|| panic!("index.html links {path}?v={{{{load}}}}"));
                assert!(tag.trim_start().starts_with("integrity=\"sha384-"), "{path}: {tag}");
            }
        }
        assert!(SITE.contains_key("/manifest.webmanifest"));
        // The service worker: JavaScript, never stored, at the root (scope `/`).
        let sw = lookup("/sw.js").unwrap();
        assert_eq!(sw.content_type, "text/javascript; charset=utf-8");
        assert_eq!(sw.cache, CacheClass::Code);
        // No inline script or style: the CSP forbids them.
        assert!(!html.contains("<style"), "inline <style> in index.html");
        assert!(!html.contains(" style="), "inline style attribute in index.html");
        for tag in html.split("<script").skip(1) {
            assert!(tag.trim_start().starts_with("type=\"module\" src="), "inline script: {tag}");
        }
    }

    #[test]
    fn gzip_is_offered_by_accept_encoding() {
        assert!(accepts_gzip(&headers(&[("accept-encoding", "gzip, deflate, br")])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "br;q=1.0, GZIP;q=0.5")])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "*")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "*, gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "br, identity")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists() {
        let tags = ["\"abc\"", "\"abc-gzip\""];
        let m =
            |v: &'static str| if_none_match(&headers(&[("if-none-match", v)]), tags.into_iter());
        assert!(m("\"abc\""));
        assert!(m("W/\"abc\""));
        assert!(m("\"x\", \"abc-gzip\""));
        assert!(m("*"));
        assert!(!m("\"abcd\""));
        assert!(!if_none_match(&HeaderMap::new(), tags.into_iter()));
    }

    #[test]
    fn slots_are_filled_everywhere_and_only_there() {
        assert_eq!(fill_slot(b"a{{load}}b{{load}}", LOAD_SLOT, b"XY"), b"aXYbXY");
        assert_eq!(fill_slot(b"{{load}}", LOAD_SLOT, b""), b"");
        assert_eq!(fill_slot(b"{{loa}}{load}", LOAD_SLOT, b"X"), b"{{loa}}{load}");
        assert_eq!(fill_slot(b"", LOAD_SLOT, b"X"), b"");
    }

    #[test]
    fn gzip_variants_are_smaller_and_tagged_apart() {
        let js = SITE.iter().find(|(p, _)| p.ends_with(".js")).map(|(_, a)| a).unwrap();
        if let Some((gz, etag)) = js.gzipped() {
            assert!(gz.len() < js.body.len());
            assert_ne!(etag.to_str().unwrap(), js.etag);
        }
        assert!(
            SITE.get("/icon-192.png").unwrap().gzipped().is_none(),
            "PNGs are not re-compressed"
        );
    }

    fn state(tls: TlsMode, dir: &std::path::Path) -> State {
        let mut config = crate::Config::new(dir.to_owned());
        config.names.push("relay.example.com".into());
        config.tls = tls;
        let store = crate::store::RedbStore::open(dir, config.queue, config.routes, 0).unwrap();
        State::new(config, Arc::new(store), None, tokio_util::sync::CancellationToken::new())
    }

    #[test]
    fn the_origin_is_https_with_tls_and_comes_from_a_known_host() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsMode::SelfSigned { names: vec!["localhost".into()], dir: None };
        let s = state(tls, dir.path());
        let o = |host: &'static str| origin(&s, &headers(&[("host", host)])).map_err(|r| r.0);
        assert_eq!(o("relay.example.com"), Ok("https://relay.example.com".into()));
        assert_eq!(o("127.0.0.1:8443"), Ok("https://127.0.0.1:8443".into()));
        assert_eq!(o("[::1]:8443"), Ok("https://[::1]:8443".into()));
        assert_eq!(o("other.example.com"), Err(StatusCode::MISDIRECTED_REQUEST));
        assert_eq!(o("relay.example.com/x"), Err(StatusCode::MISDIRECTED_REQUEST));
        assert_eq!(o(""), Err(StatusCode::MISDIRECTED_REQUEST));
        // With TLS on, a forwarded scheme is not believed.
        let h = headers(&[("host", "relay.example.com"), ("x-forwarded-proto", "http")]);
        assert_eq!(origin(&s, &h).ok(), Some("https://relay.example.com".into()));
        let dir = tempfile::tempdir().unwrap();
        let plain = state(TlsMode::Off, dir.path());
        let h = headers(&[("host", "localhost:7878")]);
        assert_eq!(origin(&plain, &h).ok(), Some("http://localhost:7878".into()));
    }

    #[test]
    fn the_relay_origin_is_percent_encoded() {
        assert_eq!(percent_encode("https://[::1]:8443"), "https%3A%2F%2F%5B%3A%3A1%5D%3A8443");
    }
}
