//! The embedded web client against a real relay process: the page at `/p`
//! and `/` (never stored, linking its code under fresh addresses with
//! integrity hashes), hashed assets, the manifest and icons with their
//! headers, gzip, `--web-client` redirects, `--no-web-client`, and
//! `/v1/connect` alongside.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::Read;

use common::{Relay, paired};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// An HTTP/1.1 response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn must(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The headers every web response carries.
    fn assert_hardened(&self) {
        assert_eq!(self.must("content-security-policy"), CSP);
        assert_eq!(self.must("x-content-type-options"), "nosniff");
        assert_eq!(self.must("referrer-policy"), "no-referrer");
        assert_eq!(self.must("cross-origin-opener-policy"), "same-origin");
        assert_eq!(self.must("x-frame-options"), "DENY");
    }
}

/// One request on its own connection; `host` defaults to the relay's address.
async fn request(relay: &Relay, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect(&relay.addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {}\r\n", relay.addr));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = std::str::from_utf8(&buf[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Resp { status, headers, body: buf[split + 4..].to_vec() }
}

async fn get(relay: &Relay, path: &str) -> Resp {
    request(relay, "GET", path, &[]).await
}

/// The `/assets/app-<hash>.<ext>` the page links, with the query it links it with.
fn linked_with_query(page: &str, ext: &str) -> String {
    let start = page.find("/assets/app-").expect("a hashed asset link");
    let rest = &page[start..];
    let rest = &rest[..rest.find('"').unwrap()];
    if rest.split('?').next().unwrap().ends_with(ext) {
        return rest.to_owned();
    }
    linked_with_query(&page[start + rest.len()..], ext)
}

/// The `/assets/app-<hash>.<ext>` the page links (its path).
fn linked(page: &str, ext: &str) -> String {
    linked_with_query(page, ext).split('?').next().unwrap().to_owned()
}

/// The value of `attr` in the tag of `page` that links `ext`.
fn linked_attr(page: &str, ext: &str, attr: &str) -> String {
    let link = linked_with_query(page, ext);
    let tag = page.split(&format!("{link}\"")).nth(1).unwrap();
    let tag = &tag[..tag.find('>').unwrap()];
    let value =
        tag.split(&format!("{attr}=\"")).nth(1).unwrap_or_else(|| panic!("no {attr}: {tag}"));
    value[..value.find('"').unwrap()].to_owned()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

#[tokio::test]
async fn the_page_is_served_at_p_and_root_never_stored_linking_its_code_under_fresh_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let page = get(&relay, "/p").await;
    assert_eq!(page.status, 200, "{page:?}");
    page.assert_hardened();
    assert_eq!(page.must("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.must("cache-control"), "no-store");
    assert_eq!(page.header("etag"), None, "each response differs: nothing to revalidate");
    assert_eq!(page.header("content-encoding"), None);
    assert_eq!(page.must("content-length"), page.body.len().to_string());
    assert!(page.text().contains(r#"<div id="app"></div>"#));
    assert!(page.text().contains(r#"<link rel="manifest" href="/manifest.webmanifest">"#));
    assert!(page.text().contains(r#"name="viewport""#));
    // No inline script or style: everything comes from 'self'.
    assert!(!page.text().contains("<style"));
    assert!(page.text().contains(r#"<script type="module" src="/assets/app-"#));
    assert!(!page.text().contains("{{"), "every slot is filled");

    // The script and the stylesheet are linked under a fresh random query,
    // with their integrity hashes; another response links them under another.
    let load = |p: &Resp, ext: &str| {
        let link = linked_with_query(p.text(), ext);
        let v = link.split_once("?v=").map(|(_, v)| v.to_owned()).unwrap_or_default();
        assert_eq!(v.len(), 32, "{link}: 128 random bits in hex");
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()), "{link}");
        v
    };
    let (js, css) = (load(&page, ".js"), load(&page, ".css"));
    assert_eq!(js, css, "one value per response");
    for ext in [".js", ".css"] {
        let integrity = linked_attr(page.text(), ext, "integrity");
        assert!(integrity.starts_with("sha384-") && integrity.len() == 7 + 64, "{integrity}");
    }
    let root = get(&relay, "/").await;
    assert_eq!((root.status, root.must("cache-control")), (200, "no-store"));
    root.assert_hardened();
    assert_ne!(load(&root, ".js"), js, "a fresh value per response");
    assert_eq!(
        root.text().replace(&load(&root, ".js"), &js),
        page.text(),
        "otherwise the same page"
    );
    // The screens' query strings (and a pairing link's nonce) are the app's business.
    for path in ["/p?desktop=abc&task=t1", "/p?n=Q2FmZQ"] {
        let screen = get(&relay, path).await;
        assert_eq!(screen.status, 200, "{path}");
        assert_ne!(load(&screen, ".js"), js, "{path}");
    }

    // Nothing to revalidate: a tag from elsewhere gets the page.
    for inm in ["*", "\"e25486ea971e1d626e268043220dce0e\""] {
        let again = request(&relay, "GET", "/p", &[("If-None-Match", inm)]).await;
        assert_eq!(again.status, 200, "If-None-Match: {inm}");
        assert_eq!(again.must("cache-control"), "no-store");
    }
    let gz = request(&relay, "GET", "/p", &[("Accept-Encoding", "gzip")]).await;
    assert_eq!((gz.status, gz.header("content-encoding")), (200, None));

    // HEAD: the headers of GET, no body.
    let head = request(&relay, "HEAD", "/p", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.must("content-length"), page.body.len().to_string());
    assert_eq!(head.must("content-type"), "text/html; charset=utf-8");
    assert_eq!(head.must("cache-control"), "no-store");
    head.assert_hardened();
}

#[tokio::test]
async fn hashed_assets_are_never_stored_and_the_manifest_and_icons_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let page = get(&relay, "/p").await;
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    for (ext, content_type) in
        [(".js", "text/javascript; charset=utf-8"), (".css", "text/css; charset=utf-8")]
    {
        let path = linked(page.text(), ext);
        let asset = get(&relay, &path).await;
        assert_eq!(asset.status, 200, "{path}");
        asset.assert_hardened();
        assert_eq!(asset.must("content-type"), content_type);
        assert_eq!(asset.must("cache-control"), "no-store");
        assert_eq!(asset.body, std::fs::read(dist.join(&path[1..])).unwrap(), "{path}");
        // As the page links it: the query changes nothing but the address.
        let queried = get(&relay, &linked_with_query(page.text(), ext)).await;
        assert_eq!((queried.status, &queried.body), (200, &asset.body), "{path}");
        assert_eq!(queried.must("cache-control"), "no-store");
        let head = request(&relay, "HEAD", &path, &[]).await;
        assert_eq!((head.status, head.body.len()), (200, 0));
        assert_eq!(head.must("content-length"), asset.body.len().to_string());
    }

    let m = get(&relay, "/manifest.webmanifest").await;
    assert_eq!(m.status, 200);
    m.assert_hardened();
    assert_eq!(m.must("content-type"), "application/manifest+json");
    assert_eq!(m.must("cache-control"), "public, max-age=3600");
    let etag = m.must("etag").to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(manifest["name"], "Tandem");
    assert_eq!(manifest["start_url"], "/p");
    assert_eq!(manifest["display"], "standalone");
    let icons = manifest["icons"].as_array().unwrap();
    assert!(!icons.is_empty());
    for icon in icons {
        let src = icon["src"].as_str().unwrap();
        let r = get(&relay, src).await;
        assert_eq!(r.status, 200, "{src}");
        assert_eq!(r.must("content-type"), icon["type"].as_str().unwrap(), "{src}");
        assert_eq!(r.must("cache-control"), "public, max-age=3600");
        assert!(r.header("etag").is_some());
    }
    let again = request(&relay, "GET", "/manifest.webmanifest", &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status, 304);
    let svg = get(&relay, "/icon.svg").await;
    assert_eq!(svg.must("content-type"), "image/svg+xml");
}

#[tokio::test]
async fn gzip_when_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let page = get(&relay, "/p").await;
    let js = linked(page.text(), ".js");
    let plain = get(&relay, &js).await;
    assert_eq!(plain.must("vary"), "Accept-Encoding");
    let gz = request(&relay, "GET", &js, &[("Accept-Encoding", "br, gzip")]).await;
    assert_eq!(gz.status, 200);
    gz.assert_hardened();
    assert_eq!(gz.must("content-encoding"), "gzip");
    assert_eq!(gz.must("vary"), "Accept-Encoding");
    assert_eq!(gz.must("content-length"), gz.body.len().to_string());
    assert!(gz.body.len() < plain.body.len());
    assert_eq!(gunzip(&gz.body), plain.body);
    // Its own tag; either tag revalidates.
    let gz_etag = gz.must("etag").to_owned();
    assert_ne!(gz_etag, plain.must("etag"));
    for tag in [gz_etag.as_str(), plain.must("etag")] {
        let r = request(&relay, "GET", &js, &[("Accept-Encoding", "gzip"), ("If-None-Match", tag)])
            .await;
        assert_eq!(r.status, 304, "{tag}");
        assert_eq!(r.must("cache-control"), "no-store");
        r.assert_hardened();
    }
    let changed = request(&relay, "GET", &js, &[("If-None-Match", "\"other\"")]).await;
    assert_eq!(changed.status, 200);
    let refused = request(&relay, "GET", &js, &[("Accept-Encoding", "*, gzip;q=0")]).await;
    assert_eq!(refused.header("content-encoding"), None);
    assert_eq!(refused.body, plain.body);
    // The whole bundle, compressed the same way when it pays.
    for ext in [".js", ".css"] {
        let path = linked(page.text(), ext);
        let raw = get(&relay, &path).await;
        let r = request(&relay, "GET", &path, &[("Accept-Encoding", "gzip")]).await;
        match r.header("content-encoding") {
            Some("gzip") => assert_eq!(gunzip(&r.body), raw.body),
            None => assert_eq!(r.body, raw.body),
            Some(other) => panic!("{other}"),
        }
    }
    // PNGs are compressed already.
    let png = request(&relay, "GET", "/icon-192.png", &[("Accept-Encoding", "gzip")]).await;
    assert_eq!((png.status, png.header("content-encoding")), (200, None));
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    for path in ["/nope", "/index.html", "/p/", "/assets/app-0000000000000000.js", "/assets.rs"] {
        let r = get(&relay, path).await;
        assert_eq!(r.status, 404, "{path}");
        r.assert_hardened();
    }
    let post = request(&relay, "POST", "/p", &[("Content-Length", "0")]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.must("allow"), "GET, HEAD");
    assert_eq!(get(&relay, "/healthz").await.status, 200);
}

#[tokio::test]
async fn websocket_connections_work_alongside_the_web_client() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &[]);
    let (mut desk, mut phone) = paired(&relay).await;
    assert_eq!(get(&relay, "/p").await.status, 200);
    desk.send_to(phone.id(), 1, b"hello").await.unwrap();
    let (_, from, payload) = phone.delivery().await;
    assert_eq!((from, payload.as_slice()), (desk.id(), &b"hello"[..]));
    assert_eq!(get(&relay, "/").await.status, 200);
    // A plain GET of /v1/connect is still the WebSocket route's business.
    assert_ne!(get(&relay, "/v1/connect").await.status, 200);
}

#[tokio::test]
async fn web_client_elsewhere_redirects_p_with_the_relay_origin() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &["--web-client", "https://app.example.com/p", "--names", "127.0.0.1,relay.example.com"],
    );
    let port = relay.addr.rsplit(':').next().unwrap().to_owned();
    let expect = format!("https://app.example.com/p?relay=http%3A%2F%2F127.0.0.1%3A{port}");
    for path in ["/p", "/"] {
        let r = get(&relay, path).await;
        assert_eq!(r.status, 302, "{path}: {r:?}");
        assert_eq!(r.must("location"), expect);
        assert_eq!(r.must("cache-control"), "no-store");
        r.assert_hardened();
    }
    let head = request(&relay, "HEAD", "/p", &[]).await;
    assert_eq!((head.status, head.must("location")), (302, expect.as_str()));

    // A public name without TLS: the relay is behind a TLS-terminating proxy.
    let r = request(&relay, "GET", "/p", &[("Host", "Relay.Example.com")]).await;
    assert_eq!(
        r.must("location"),
        "https://app.example.com/p?relay=https%3A%2F%2Frelay.example.com"
    );
    let r = request(
        &relay,
        "GET",
        "/p",
        &[("Host", "relay.example.com:8443"), ("X-Forwarded-Proto", "https")],
    )
    .await;
    assert_eq!(
        r.must("location"),
        "https://app.example.com/p?relay=https%3A%2F%2Frelay.example.com%3A8443"
    );
    // The proxy says plain http for a public name: not a valid relay origin.
    let r = request(
        &relay,
        "GET",
        "/p",
        &[("Host", "relay.example.com"), ("X-Forwarded-Proto", "http")],
    )
    .await;
    assert_eq!(r.status, 400);
    // A name the relay does not answer to is not put in a link.
    let r = request(&relay, "GET", "/p", &[("Host", "evil.example.net")]).await;
    assert_eq!(r.status, 421);
    assert!(r.header("location").is_none());
    let r = request(&relay, "GET", "/p", &[("Host", "127.0.0.1:1/x")]).await;
    assert_ne!(r.status, 302);
    // The embedded client is not served meanwhile.
    assert_eq!(get(&relay, "/manifest.webmanifest").await.status, 404);
    assert_eq!(get(&relay, "/healthz").await.status, 200);
    let (mut desk, mut phone) = paired(&relay).await;
    desk.send_to(phone.id(), 1, b"still relaying").await.unwrap();
    phone.delivery().await;
}

#[tokio::test]
async fn a_web_client_url_with_a_query_gets_the_relay_appended() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &["--web-client", "https://app.example.com/?v=2"]);
    let r = get(&relay, "/p").await;
    let port = relay.addr.rsplit(':').next().unwrap().to_owned();
    assert_eq!(
        r.must("location"),
        format!("https://app.example.com/?v=2&relay=http%3A%2F%2F127.0.0.1%3A{port}")
    );
}

#[tokio::test]
async fn no_web_client_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &["--no-web-client"]);
    for path in ["/p", "/", "/manifest.webmanifest", "/icon.svg"] {
        let r = get(&relay, path).await;
        assert_eq!(r.status, 404, "{path}");
        r.assert_hardened();
    }
    assert_eq!(get(&relay, "/healthz").await.status, 200);
    let (mut desk, mut phone) = paired(&relay).await;
    desk.send_to(phone.id(), 1, b"x").await.unwrap();
    phone.delivery().await;
}
