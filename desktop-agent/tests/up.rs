//! `tandem up` as a person uses it: the agent starts a relay, shows a QR
//! code (decoded with `zbarimg`, as a camera would), a phone pairs through
//! the relay with the real protocol and both show the same code. Without an
//! executor the phone gets `view` scope and a task is refused; `tandem
//! devices` lists the phone and `tandem revoke` cuts it off at once. Every
//! code on plain http opens its own address (`/p?n=<nonce>`), which the
//! relay serves as `/p`, and the phone engine pairs from it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Agent, Claimed, Phone, tandem};
use tandem_client::ClientError;
use tandem_phone::{Phone as PhoneEngine, PhoneConfig};
use tandem_proto::ErrorCode;
use tandem_proto::message::Message;
use tandem_proto::qr::PairingLink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_pairs_with_tandem_up_from_the_qr_code_and_is_answered_then_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::up(dir.path(), &dir.path().join("no-config.toml"));
    let mut phone = Phone::pair(&agent, dir.path()).await;

    // A task goes out; with no executor configured the phone was paired to
    // view only (the least that lets the user work), so it is refused.
    phone
        .send(&Message::TaskSubmit {
            task_id: "t-1".into(),
            text: "fix the failing test".into(),
            workspace: None,
            executor: None,
            resume: None,
        })
        .await;
    assert_eq!(
        phone.message().await,
        Message::Refused {
            task_id: Some("t-1".into()),
            code: "scope".into(),
            message: "this device may only view".into(),
        }
    );
    assert!(phone.link.outbound().is_empty(), "the desktop acknowledged the task end to end");

    let devices = tandem(dir.path(), &["devices"]);
    assert!(devices.contains("Ana's phone") && devices.contains(" view "), "{devices}");
    let revoked = tandem(dir.path(), &["revoke", "ana's phone"]);
    assert!(revoked.contains("The relay refuses it from now on"), "{revoked}");
    let (_, record) = phone.link.send(b"{}".to_vec()).unwrap();
    match phone.client.send(phone.desktop, record).await {
        Err(ClientError::Refused(code, _)) => assert_eq!(code, ErrorCode::NotAuthorized),
        other => panic!("a revoked phone's frame was not refused: {other:?}"),
    }
    assert!(!tandem(dir.path(), &["devices"]).contains("Ana's phone"));
    phone.client.close().await;
}

/// `GET <path>` from `host:port`: the status line and the body.
async fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The nonce of a `tandem up` link: `?n=` and 8 base32 characters.
fn nonce(link: &PairingLink) -> String {
    let n = link.query.strip_prefix("?n=").unwrap_or_else(|| panic!("no nonce in {link:?}"));
    assert_eq!(n.len(), 8, "{n}");
    assert!(n.bytes().all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)), "{n}");
    n.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_code_opens_a_fresh_address_that_the_relay_serves_and_the_phone_engine_pairs_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::fixture_config(dir.path(), "");
    let mut agent = Agent::up_with(dir.path(), &config, "127.0.0.1:0", &["--yes"], &[]);

    // The first code, as the camera reads it: the phone engine pairs from it.
    let first = common::scan(&agent, dir.path());
    let parsed = PairingLink::parse(&first, common::now_unix()).unwrap();
    let n1 = nonce(&parsed);
    assert_eq!(parsed.path, "/p");
    let phone =
        PhoneEngine::open(PhoneConfig::new(dir.path().join("ana"), "Ana's phone")).await.unwrap();
    let pairing = phone.start_pairing(&first).await.unwrap();
    assert_eq!(agent.line_starting("Code: ").trim(), format!("Code: {}", pairing.sas()));
    let desktop = pairing.wait().await.unwrap().desktop_id;
    agent.line_starting("Paired with Ana's phone");
    agent.line_starting("Connected.");

    // The relay serves the address with its nonce as the page at /p.
    let addr = parsed.origin.trim_start_matches("http://").to_owned();
    let (status, page) = http_get(&addr, &format!("/p{}", parsed.query)).await;
    assert!(status.contains(" 200 "), "{status}");
    let (_, bare) = http_get(&addr, "/p").await;
    // The same page (each response names its bundle under a fresh `?v=`).
    assert_eq!(without_bundle_versions(&page), without_bundle_versions(&bare));
    assert!(page.contains("<html"), "{page}");

    // Enter shows another code: same page, another address.
    agent.type_line("");
    let second = common::scan(&agent, dir.path());
    let parsed2 = PairingLink::parse(&second, common::now_unix()).unwrap();
    assert_eq!(parsed2.origin, parsed.origin);
    assert_ne!(nonce(&parsed2), n1, "every code has its own nonce");
    let bo =
        PhoneEngine::open(PhoneConfig::new(dir.path().join("bo"), "Bo's phone")).await.unwrap();
    let pairing = bo.start_pairing(&second).await.unwrap();
    assert_eq!(agent.line_starting("Code: ").trim(), format!("Code: {}", pairing.sas()));
    pairing.wait().await.unwrap();
    agent.line_starting("Paired with Bo's phone");

    // The first phone still works.
    assert!(phone.tasks(&desktop).await.is_ok());
    phone.close().await;
    bo.close().await;
}

/// `tandem up --listen ADDR:PORT` on one address (not every address): its
/// agent dials its relay there, not on 127.0.0.1 where nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_up_on_one_address_connects_its_agent_there() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::up_at(dir.path(), &dir.path().join("no-config.toml"), "127.0.0.2:0");
    let mut phone = Phone::pair(&agent, dir.path()).await;
    assert!(phone.relay_addr.starts_with("127.0.0.2:"), "{}", phone.relay_addr);
    phone
        .send(&Message::TaskSubmit {
            task_id: "t-1".into(),
            text: "anything".into(),
            workspace: None,
            executor: None,
            resume: None,
        })
        .await;
    assert!(matches!(phone.message().await, Message::Refused { .. }));
}

/// `page` with the random `?v=<hex>` of each bundle address taken out.
fn without_bundle_versions(page: &str) -> String {
    let mut out = String::new();
    let mut rest = page;
    while let Some(at) = rest.find("?v=") {
        out.push_str(&rest[..at]);
        rest = rest[at + 3..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    out
}

/// A web page paired by a version that kept its keys in the browser's
/// storage at `tandem up`'s plain-http address is pointed out at start (a
/// host on another network could have read them); one that keeps them in
/// memory (ephemeral) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tandem_up_warns_about_web_pages_that_kept_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("no-config.toml");
    let agent = Agent::up(dir.path(), &config);
    let link = common::scan(&agent, dir.path());
    let old_web = tandem_proto::message::DeviceInfo {
        name: "Old web page".into(),
        platform: "web".into(),
        app_version: "0.1.0".into(),
        ephemeral: false,
    };
    let claimed = common::Claimed::claim(&agent, &link, None, common::new_key(), old_web).await;
    let phone = claimed.result().await.unwrap();
    agent.line_starting("Paired with Old web page");
    drop(phone);
    drop(agent);

    let agent = Agent::up(dir.path(), &config);
    let warning = agent.line_starting("warning: ");
    assert!(warning.contains("Old web page") && warning.contains("tandem revoke"), "{warning}");
}

/// The phone vanishes once it claimed the code and confirmed it: `tandem up`
/// (`--yes`) accepts and answers, the phone never comes online with the
/// answer, and after `TANDEM_UNFINISHED_PAIRING_SECS` `tandem up` says
/// "pairing interrupted: scan again" and keeps no device. It stays usable:
/// the code that follows pairs a phone, and so does one asked for with Enter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_gone_after_claiming_is_pairing_interrupted_and_tandem_up_pairs_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::up_with(
        dir.path(),
        &dir.path().join("no-config.toml"),
        "127.0.0.1:0",
        &["--yes"],
        &[("TANDEM_UNFINISHED_PAIRING_SECS", "2")],
    );
    let link = common::scan(&agent, dir.path());
    let gone =
        Claimed::claim(&agent, &link, None, common::new_key(), common::info("Gone phone")).await;
    gone.close().await;
    let said = agent.line_starting("Gone phone did not get the answer");
    assert!(said.contains("pairing interrupted: scan again"), "{said}");
    assert!(!tandem(dir.path(), &["devices"]).contains("Gone phone"), "no device kept");

    // The code that follows pairs.
    let mut ana = Phone::pair(&agent, dir.path()).await;
    // Enter asks for another code: it pairs too.
    agent.type_line("");
    let link = common::scan(&agent, dir.path());
    let bo = Claimed::claim(&agent, &link, None, common::new_key(), common::info("Bo's phone"))
        .await
        .result()
        .await
        .expect("Bo's phone paired");
    agent.line_starting("Paired with Bo's phone");
    let devices = tandem(dir.path(), &["devices"]);
    assert!(devices.contains("Ana's phone") && devices.contains("Bo's phone"), "{devices}");
    assert!(!devices.contains("Gone phone"), "{devices}");
    // The first phone is served (paired to view: its task is refused).
    ana.send(&Message::TaskSubmit {
        task_id: "t-1".into(),
        text: "hello".into(),
        workspace: None,
        executor: None,
        resume: None,
    })
    .await;
    assert!(matches!(ana.message().await, Message::Refused { code, .. } if code == "scope"));
    ana.client.close().await;
    bo.client.close().await;
}
