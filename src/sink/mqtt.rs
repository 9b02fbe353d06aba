//! The reference upstream over MCP over MQTT (mqtt-ai/mcp-over-mqtt, basic/mqtt_transport.md,
//! commit cd3a13a): retained presence, `initialize` on the control topic, one rmcp server
//! session per `mcp-client-id` on its RPC topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::service::RoleServer;
use rumqttc::v5::mqttbytes::v5::Publish;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::backend::SinkBackend;
use super::era::Eras;
use super::server::SinkService;
use crate::config::secret::Secret;
use crate::mqtt::link::{Link, LinkOptions, MqttError};
use crate::mqtt::topics;
use crate::mqtt::transport::{Inbox, MqttTransport, is_disconnected};
use crate::reconnect::{Pace, Reconnect};
use crate::tls::ClientTls;

/// Timeout of CONNACK and SUBACK waits.
pub const MQTT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff bounds of the sink's broker connection.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// How the sink appears on the broker.
#[derive(Debug, Clone)]
pub struct MqttServe {
    /// Broker, `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// server-name, e.g. `edge/ingest` (a broker-suggested `MCP-SERVER-NAME` wins).
    pub server_name: String,
    /// Broker password (username = server-id), if the broker wants one.
    pub password: Option<Secret>,
    /// Cap of the reconnect backoff (from `BACKOFF.0` up); normally `BACKOFF.1` (5 s), less in
    /// crash loops that restart the broker many times.
    pub reconnect_max: Duration,
}

struct Client {
    inbox: Inbox<RoleServer>,
    closed: CancellationToken,
    rpc: String,
}

/// Serves the sink's tools over MQTT until `shutdown`, reconnecting (with a new server-id and a
/// fresh retained presence) whenever the broker connection is lost.
///
/// # Errors
/// Only a configuration error (bad URL or server name); connection failures are retried.
pub async fn serve_mqtt(
    opts: MqttServe,
    store: impl Into<SinkBackend>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_mqtt_eras(opts, Eras::Both, store, shutdown).await
}

/// [`serve_mqtt`] restricted to the MCP revisions of `eras`: the first message of a client
/// (`server/discover` or `initialize`, on the control topic) opens its session either way.
///
/// # Errors
/// As [`serve_mqtt`].
pub async fn serve_mqtt_eras(
    opts: MqttServe,
    eras: Eras,
    store: impl Into<SinkBackend>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_mqtt_tls(opts, None, eras, store, shutdown).await
}

/// [`serve_mqtt_eras`] with TLS settings for an `mqtts://` broker (read at each connect;
/// `None`: the public roots, no client certificate).
///
/// # Errors
/// As [`serve_mqtt`].
pub async fn serve_mqtt_tls(
    opts: MqttServe,
    tls: Option<ClientTls>,
    eras: Eras,
    store: impl Into<SinkBackend>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        topics::valid_server_name(&opts.server_name),
        "bad server name {:?}: use a hierarchical name like edge/ingest",
        opts.server_name
    );
    let mut reconnect = Reconnect::new(module_path!(), BACKOFF.0, opts.reconnect_max)
        .field("broker", opts.url.as_str())
        .prefix("sink: ");
    let mut name = opts.server_name.clone();
    let service = SinkService::new(store).with_eras(eras);
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let err = match serve_once(&opts, tls.as_ref(), &name, &service, &shutdown).await {
            Ok(None) => return Ok(()),
            Ok(Some(suggested)) => {
                log::info!(server_name = suggested.as_str(); "sink: the broker suggested a server name; reconnecting with it");
                name = suggested;
                continue;
            }
            Err(MqttError::Url(u)) => {
                anyhow::bail!(
                    "bad MQTT URL {u:?}: expected mqtt://host[:port] or mqtts://host[:port]"
                )
            }
            Err(e) => e,
        };
        if reconnect
            .retry(&err, started.elapsed(), Pace::Backoff, &shutdown)
            .await
            .is_none()
        {
            break;
        }
    }
    Ok(())
}

/// One broker connection. `Ok(None)`: shut down; `Ok(Some(name))`: reconnect under the
/// broker-suggested name; `Err`: the connection failed or was lost.
async fn serve_once(
    opts: &MqttServe,
    tls: Option<&ClientTls>,
    name: &str,
    service: &SinkService,
    shutdown: &CancellationToken,
) -> Result<Option<String>, MqttError> {
    let server_id = format!("edge-relay-sink-{}", Uuid::now_v7().simple());
    let presence = topics::server_presence(&server_id, name);
    let mut link = Link::connect(
        LinkOptions {
            url: opts.url.clone(),
            tls: tls.cloned(),
            client_id: server_id.clone(),
            component: Some(topics::SERVER),
            meta: Some(
                json!({"name": super::server::SERVER_NAME, "version": env!("CARGO_PKG_VERSION")}),
            ),
            will: Some((presence.clone(), Vec::new(), true)),
            password: opts.password.clone(),
            manual_acks: false,
            persistent_session: None,
        },
        MQTT_TIMEOUT,
    )
    .await?;
    if let Some(suggested) = link.connack_property(topics::SERVER_NAME)
        && suggested != name
        && topics::valid_server_name(suggested)
    {
        let suggested = suggested.to_owned();
        link.disconnect().await;
        return Ok(Some(suggested));
    }
    let control = topics::server_control(&server_id, name);
    link.subscribe(std::slice::from_ref(&control), false, MQTT_TIMEOUT)
        .await?;
    let online = json!({"jsonrpc": "2.0", "method": "notifications/server/online",
        "params": {"server_name": name,
                   "description": "edge-relay reference upstream: edge_ingest and edge_cursor",
                   "meta": {}}});
    link.publish(&presence, online.to_string(), true).await?;
    log::info!(server_id = server_id.as_str(), server_name = name; "sink: serving MCP over MQTT on {}", opts.url);

    let sessions = TaskTracker::new();
    let mut clients: HashMap<String, Client> = HashMap::new();
    let outcome = loop {
        let publish = tokio::select! {
            () = shutdown.cancelled() => break Ok(None),
            p = link.recv() => p,
        };
        let Some(publish) = publish else {
            break Err(link.closed_error());
        };
        clients.retain(|_, c| !c.inbox.is_closed());
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        if topic == control {
            if let Some(cid) = sender_id(&publish) {
                let client =
                    open_session(&link, &server_id, name, &cid, service, &sessions, shutdown)
                        .await?;
                if client.inbox.deliver(&publish.payload).await {
                    clients.insert(cid, client);
                }
            }
        } else if let Some(cid) = topics::parse_rpc_client(&topic) {
            let Some(client) = clients.get(cid) else {
                log::debug!(client_id = cid; "sink: message for an unknown session; ignored");
                continue;
            };
            if is_disconnected(&publish.payload) || !client.inbox.deliver(&publish.payload).await {
                let cid = cid.to_owned();
                end_session(&link, &cid, clients.remove(&cid)).await;
            }
        } else if let Some(cid) = topics::parse_client_presence(&topic)
            && is_disconnected(&publish.payload)
        {
            let cid = cid.to_owned();
            end_session(&link, &cid, clients.remove(&cid)).await;
        }
    };
    // Server-side de-initialize: tell every client, clear the retained presence, leave.
    for (cid, client) in clients.drain() {
        let _ = link.publish(&client.rpc, topics::DISCONNECTED, false).await;
        end_session(&link, &cid, Some(client)).await;
    }
    if outcome.is_ok() {
        let _ = link.publish(&presence, Vec::new(), true).await;
        link.disconnect().await;
    }
    sessions.close();
    sessions.wait().await;
    outcome
}

/// The sender's `MCP-MQTT-CLIENT-ID` user property, if it is a valid id.
fn sender_id(publish: &Publish) -> Option<String> {
    let props = publish.properties.as_ref()?;
    let id = props
        .user_properties
        .iter()
        .find(|(k, _)| k == topics::MQTT_CLIENT_ID)
        .map(|(_, v)| v.clone());
    if id.as_deref().is_none_or(|id| !topics::valid_id(id)) {
        log::warn!(
            "sink: initialize without a valid {} user property; ignored",
            topics::MQTT_CLIENT_ID
        );
        return None;
    }
    id
}

/// Subscribes to the client's RPC (No Local), presence and capability topics before answering
/// its first message, `initialize` (spec §Initialization) or `server/discover` (MCP
/// 2026-07-28), then starts an rmcp server session on them; rmcp's lifecycle serves either.
async fn open_session(
    link: &Link,
    server_id: &str,
    name: &str,
    cid: &str,
    service: &SinkService,
    sessions: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Client, MqttError> {
    let rpc = topics::rpc(cid, server_id, name);
    link.subscribe(
        &[
            rpc.clone(),
            topics::client_presence(cid),
            topics::client_capability(cid),
        ],
        true,
        MQTT_TIMEOUT,
    )
    .await?;
    let closed = shutdown.child_token();
    let (transport, inbox) =
        MqttTransport::<RoleServer>::new(link.publisher(), None, rpc.clone(), closed.clone());
    let service = service.clone();
    let ct = closed.clone();
    let client_id = cid.to_owned();
    sessions.spawn(async move {
        match service.serve_with_ct(transport, ct).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => log::warn!(client_id = client_id.as_str(); "sink: session start failed: {e}"),
        }
    });
    Ok(Client { inbox, closed, rpc })
}

/// Ends a session and unsubscribes from its topics (spec §Disconnect).
async fn end_session(link: &Link, cid: &str, client: Option<Client>) {
    if let Some(client) = client {
        client.closed.cancel();
        link.unsubscribe(&[
            client.rpc,
            topics::client_presence(cid),
            topics::client_capability(cid),
        ])
        .await;
    }
}
