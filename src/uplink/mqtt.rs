//! The MCP over MQTT uplink (mqtt-ai/mcp-over-mqtt, basic/mqtt_transport.md, commit cd3a13a):
//! discover a server by presence, then one MQTT connection with a fresh client id per session.

use std::time::Duration;

use rand::seq::IndexedRandom;
use rmcp::service::RoleClient;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::connector::{Connecting, Connector};
use super::error::{UplinkError, nothing_to_read};
use super::session::{CLOSE_TIMEOUT, Session, SessionConfig, negotiate};
use crate::config::Secret;
use crate::mqtt::link::{Link, LinkOptions, MqttError};
use crate::mqtt::topics;
use crate::mqtt::transport::{Inbox, MqttTransport, has_method, is_disconnected};
use crate::tls::ClientTls;

/// After the first server shows up, how long discovery waits for more retained presences.
pub const DISCOVERY_SETTLE: Duration = Duration::from_millis(200);

/// Opens MCP sessions over MQTT: the session's first message (`server/discover` or
/// `initialize`) on `$mcp-server/{server-id}/{server-name}`, then everything on
/// `$mcp-rpc/{mcp-client-id}/{server-id}/{server-name}`.
pub struct MqttConnector {
    url: String,
    server_name_filter: String,
    password: Option<Secret>,
    tls: ClientTls,
    gateway: String,
}

/// A server found by its retained `notifications/server/online` presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerPresence {
    /// server-id (its MQTT client id).
    pub id: String,
    /// server-name.
    pub name: String,
}

impl MqttConnector {
    /// A connector to the broker at `url` (`mqtt://host[:port]`, or `mqtts://` with `tls`,
    /// read at each connect) for servers matching `server_name_filter` (a name like
    /// `edge/ingest` or a filter like `edge/#`).
    pub fn new(
        url: &str,
        server_name_filter: &str,
        password: Option<Secret>,
        tls: ClientTls,
        gateway: &str,
    ) -> Self {
        Self {
            url: url.to_owned(),
            server_name_filter: server_name_filter.to_owned(),
            password,
            tls,
            gateway: gateway.to_owned(),
        }
    }

    async fn open(&self, config: SessionConfig) -> Result<Session, UplinkError> {
        let timeout = config.request_timeout;
        let client_id = format!("edge-relay-{}", Uuid::now_v7().simple());
        let connect = |e: MqttError| UplinkError::Connect(e.to_string());
        let mut link = Link::connect(
            LinkOptions {
                url: self.url.clone(),
                tls: Some(self.tls.clone()),
                client_id: client_id.clone(),
                component: Some(topics::CLIENT),
                meta: Some(json!({"name": crate::contract::CLIENT_NAME,
                                  "version": env!("CARGO_PKG_VERSION"),
                                  "gateway": self.gateway})),
                will: Some((
                    topics::client_presence(&client_id),
                    topics::DISCONNECTED.as_bytes().to_vec(),
                    false,
                )),
                password: self.password.clone(),
                manual_acks: false,
                persistent_session: None,
            },
            timeout,
        )
        .await
        .map_err(connect)?;
        // A broker may impose the filters this client must use (spec §User Properties).
        let filter = link
            .connack_property(topics::SERVER_NAME_FILTERS)
            .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
            .and_then(|f| f.into_iter().next())
            .unwrap_or_else(|| self.server_name_filter.clone());
        link.subscribe(&[topics::presence_filter(&filter)], false, timeout)
            .await
            .map_err(connect)?;
        let servers = discover(&mut link, timeout).await;
        let server = servers.choose(&mut rand::rng()).cloned().ok_or_else(|| {
            UplinkError::Connect(format!(
                "no MCP server online for server-name filter {filter:?}"
            ))
        })?;
        let rpc = topics::rpc(&client_id, &server.id, &server.name);
        link.subscribe(
            &[
                rpc.clone(),
                topics::server_capability(&server.id, &server.name),
            ],
            true,
            timeout,
        )
        .await
        .map_err(connect)?;
        log::info!(server_id = server.id.as_str(), server_name = server.name.as_str(), client_id = client_id.as_str();
            "MCP over MQTT: starting a session with a discovered server");
        let closed = CancellationToken::new();
        let (transport, inbox) = MqttTransport::<RoleClient>::new(
            link.publisher(),
            Some(topics::server_control(&server.id, &server.name)),
            rpc.clone(),
            closed.clone(),
        );
        let presence = topics::server_presence(&server.id, &server.name);
        let goodbye = tokio::spawn(route(link, inbox, rpc, presence, client_id, closed));
        match Session::start(transport, config, nothing_to_read).await {
            Ok(session) => Ok(session.with_goodbye(goodbye)),
            Err(e) => {
                // The transport is gone, so `route` says goodbye; a probe must not exit first.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
                Err(e)
            }
        }
    }
}

/// Reads retained presence messages: the servers online now. Waits up to `timeout` for the
/// first, then [`DISCOVERY_SETTLE`] for others.
pub async fn discover(link: &mut Link, timeout: Duration) -> Vec<ServerPresence> {
    let mut online: Vec<ServerPresence> = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let wait_until = if online.is_empty() {
            deadline
        } else {
            (tokio::time::Instant::now() + DISCOVERY_SETTLE).min(deadline)
        };
        let Ok(Some(publish)) = tokio::time::timeout_at(wait_until, link.recv()).await else {
            return online;
        };
        let topic = String::from_utf8_lossy(&publish.topic);
        let Some((id, name)) = topics::parse_presence(&topic) else {
            continue;
        };
        let server = ServerPresence {
            id: id.to_owned(),
            name: name.to_owned(),
        };
        online.retain(|s| s != &server);
        if is_online(&publish.payload) {
            online.push(server);
        }
    }
}

/// A presence payload is `notifications/server/online`; an empty one means offline.
fn is_online(payload: &[u8]) -> bool {
    has_method(payload, "notifications/server/online")
}

/// Feeds the session from the link until the transport closes, the server goes offline (empty
/// presence) or says `notifications/disconnected`, or the connection drops; then says
/// goodbye on the client presence topic and disconnects (spec §Disconnect).
async fn route(
    mut link: Link,
    inbox: Inbox<RoleClient>,
    rpc: String,
    server_presence: String,
    client_id: String,
    closed: CancellationToken,
) {
    loop {
        let publish = tokio::select! {
            () = closed.cancelled() => break,
            p = link.recv() => p,
        };
        let Some(publish) = publish else {
            log::warn!(client_id = client_id.as_str(); "MCP over MQTT: {}", link.closed_error());
            return;
        };
        let topic = String::from_utf8_lossy(&publish.topic);
        if topic == rpc {
            if is_disconnected(&publish.payload) {
                log::warn!(client_id = client_id.as_str(); "MCP over MQTT: the server ended the session");
                break;
            }
            if !inbox.deliver(&publish.payload).await {
                break;
            }
        } else if topic == server_presence && !is_online(&publish.payload) {
            log::warn!(presence = server_presence.as_str(); "MCP over MQTT: the server went offline");
            break;
        }
    }
    drop(inbox);
    let _ = link
        .publish(
            &topics::client_presence(&client_id),
            topics::DISCONNECTED,
            false,
        )
        .await;
    link.disconnect().await;
}

impl Connector for MqttConnector {
    fn connect(&self, config: SessionConfig) -> Connecting<'_> {
        Box::pin(negotiate(config, |c| self.open(c)))
    }

    /// Up to five exchanges of `request_timeout` per session start (broker connect, two
    /// subscribes, discovery, the session start itself), twice when a legacy-only server makes
    /// it start again with `initialize`.
    fn longest_connect(&self, request_timeout: Duration) -> Duration {
        request_timeout * 10
    }

    fn describe(&self) -> String {
        format!(
            "{} ({})",
            crate::redact::url(&self.url),
            self.server_name_filter
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_payloads() {
        assert!(is_online(
            br#"{"jsonrpc":"2.0","method":"notifications/server/online","params":{}}"#
        ));
        assert!(!is_online(b""));
        assert!(is_disconnected(topics::DISCONNECTED.as_bytes()));
        assert!(!is_disconnected(b"{}"));
    }
}
