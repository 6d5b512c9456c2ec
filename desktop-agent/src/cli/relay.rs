//! The relay: its address and origin for the pairing link, this computer's
//! LAN address for `tandem up`, and connecting to it as this desktop.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_agent::agent_config::AgentConfig;
use tandem_agent::keystore::KeyStore;
use tandem_client::{Client, ClientConfig, Event};
use tandem_proto::Role;
use tandem_proto::entropy::Entropy;

/// The https (or http) origin a WebSocket relay URL belongs to, plus `/p`.
pub(crate) fn link_base_for(relay: &str) -> anyhow::Result<String> {
    let (scheme, rest) = if let Some(r) = relay.strip_prefix("wss://") {
        ("https", r)
    } else if let Some(r) = relay.strip_prefix("ws://") {
        ("http", r)
    } else {
        bail!("the relay URL must start with wss:// (or ws:// on a local network)");
    };
    let host = rest.split('/').next().unwrap_or_default();
    Ok(format!("{scheme}://{host}/p"))
}

/// `scheme://host[:port]` of an http(s) URL, lower case, without a default port.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    if authority.is_empty() {
        return None;
    }
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

/// The relay's http(s) origin for the QR payload when the pairing link
/// (`link_base`) opens a web client on another origin than the relay's
/// (`tandem pair --link-base`): the client cannot take the relay from the
/// link's origin then. `None` when they are the same origin.
pub(crate) fn relay_origin_for(link_base: &str, relay: &str) -> anyhow::Result<Option<String>> {
    let relay_base = link_base_for(relay)?;
    let relay_origin = relay_base.strip_suffix("/p").unwrap_or(&relay_base).to_owned();
    let link_origin = origin_of(link_base)
        .with_context(|| format!("the link base {link_base:?} must be an https:// URL"))?;
    if origin_of(&relay_origin).as_deref() == Some(link_origin.as_str()) {
        return Ok(None);
    }
    tandem_proto::qr::QrPayload::validate_relay(&relay_origin).map_err(|e| {
        anyhow::anyhow!(
            "the link opens {link_origin}, so it must name the relay, but {relay_origin} cannot be named in a pairing link: {e}"
        )
    })?;
    Ok(Some(relay_origin))
}

/// The address of this machine on the local network: the source address the
/// system would use to reach an outside address. Connecting a UDP socket
/// sends nothing.
pub(crate) fn lan_ip() -> IpAddr {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Wait for the first connection; returns the relay store's epoch.
async fn wait_connected(events: &mut tokio::sync::mpsc::Receiver<Event>) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Connected { store_epoch, .. })) => return Ok(store_epoch),
            Ok(Some(Event::Disconnected { reason, retry_in, .. })) if retry_in == Duration::MAX => {
                bail!("the relay refused this device: {reason}")
            }
            Ok(Some(_)) => {}
            Ok(None) => bail!("the relay connection closed"),
            Err(_) => bail!("could not reach the relay within 20 s"),
        }
    }
}

/// A connected agent client, its events, and the relay store's epoch at
/// the connection (the daemon does not see that first `Connected`).
pub(crate) type Connected =
    (tandem_proto::DeviceKey, Client, tokio::sync::mpsc::Receiver<Event>, u64);

/// Connect to the relay as this desktop (the daemon, or `tandem pair`,
/// then sends the revocations the relay has not confirmed).
pub(crate) async fn connect_agent(
    dir: &std::path::Path,
    config: &mut AgentConfig,
    url: String,
) -> anyhow::Result<Connected> {
    let key = KeyStore::new(dir).load_or_create(&mut Entropy::os())?;
    let mut cc = ClientConfig::new(url, key.clone(), Role::Desktop);
    cc.extra_roots_pem = config.relay_roots_pem.clone();
    let (client, mut events) = Client::start(cc);
    let epoch = wait_connected(&mut events).await?;
    Ok((key, client, events, epoch))
}

/// `tandem pair`: the revocations the relay has not confirmed (the daemon
/// sends them itself on every connection).
pub(crate) async fn send_pending_revokes(
    client: &Client,
    dir: &std::path::Path,
    config: &mut AgentConfig,
) {
    let mut left = Vec::new();
    for id in std::mem::take(&mut config.pending_revokes) {
        let told = tokio::time::timeout(Duration::from_secs(10), client.revoke(id)).await;
        if !matches!(told, Ok(Ok(()))) {
            left.push(id);
        }
    }
    config.pending_revokes = left;
    let _ = config.save(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_base_on_another_origin_names_the_relay() {
        let relay = "wss://relay.example.com/v1/connect";
        let same = |base: &str| relay_origin_for(base, relay).ok().flatten();
        assert_eq!(same("https://relay.example.com/p"), None);
        assert_eq!(same("https://Relay.Example.com:443/p"), None);
        assert_eq!(same("https://app.example.com/p"), Some("https://relay.example.com".to_owned()));
        assert_eq!(
            same("https://relay.example.com:8443/p"),
            Some("https://relay.example.com".to_owned())
        );
        let local = relay_origin_for("https://app.example.com/p", "ws://127.0.0.1:7878/v1/connect");
        assert_eq!(local.ok().flatten(), Some("http://127.0.0.1:7878".to_owned()));
        // The default link (the relay's own origin) never names it.
        let base = link_base_for("ws://192.168.1.5:7878/v1/connect").ok().unwrap_or_default();
        assert_eq!(
            relay_origin_for(&base, "ws://192.168.1.5:7878/v1/connect").ok().flatten(),
            None
        );
        // Plain http to a public relay cannot go into a QR payload.
        assert!(
            relay_origin_for("https://app.example.com/p", "ws://relay.example.com/v1/connect")
                .is_err()
        );
        assert!(relay_origin_for("app.example.com/p", relay).is_err());
    }
}
