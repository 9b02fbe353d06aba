//! One MQTT 5 connection on rumqttc's `v5` client, driven by its own task, that never reconnects
//! by itself: any connection error ends the link and the owner decides when to start a new one.
//
// Design: rumqttc's `poll()` reconnects at once and, with session expiry 0, silently discards
// unacknowledged publishes (eventloop.rs: `if !connack.session_present { pending.clear() }`).
// So a link is one MQTT session: the driver stops at the first error, `incoming()` ends, and
// callers rely on their own timeouts and re-sends, never on rumqttc's queues.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, LastWillProperties, Packet, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::secret::Secret;
use crate::tls::ClientTls;

/// Largest MQTT packet we accept and advertise in CONNECT (rumqttc's default is 10 KiB).
pub const MAX_PACKET_BYTES: u32 = 8 * 1024 * 1024;
/// Keep-alive interval; a broker silent for 1.5x this is detected by rumqttc's ping.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Bound of the queue of received publishes; the driver waits (TCP backpressure) when full.
pub const INCOMING_QUEUE: usize = 256;
/// Bound of rumqttc's request channel.
pub const REQUEST_QUEUE: usize = 64;
/// Longest wait after our DISCONNECT for the broker to close the connection. Closing first,
/// with its publishes still unread, makes the kernel send RST, and the broker then discards
/// what we sent just before (PUBACKs, the DISCONNECT itself).
pub const DISCONNECT_LINGER: Duration = Duration::from_secs(2);

/// MQTT failures, named after what was being attempted.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The URL is not `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[error("bad MQTT URL {0:?}: expected mqtt://host[:port] or mqtts://host[:port]")]
    Url(String),
    /// The TLS settings could not be used (a file unreadable, a key not matching...).
    #[error("TLS settings: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// No CONNACK within the timeout.
    #[error("timed out after {0:?} waiting for CONNACK")]
    ConnectTimeout(Duration),
    /// TCP, TLS, protocol or refusal while connecting; `reason` explains a TLS failure in words
    /// when it can, else is the source's own message.
    #[error("connecting to the broker: {reason}")]
    Connect {
        /// What went wrong, in words.
        reason: String,
        /// rumqttc's error.
        #[source]
        source: rumqttc::v5::ConnectionError,
    },
    /// The broker refused a subscription.
    #[error("subscription to {filter} refused: {reason}")]
    SubscribeRefused {
        /// First refused filter.
        filter: String,
        /// SUBACK reason code.
        reason: String,
    },
    /// No SUBACK within the timeout.
    #[error("timed out after {0:?} waiting for SUBACK")]
    SubscribeTimeout(Duration),
    /// The connection is gone (the reason its driver recorded).
    #[error("MQTT connection closed: {0}")]
    Closed(String),
    /// A committed message's PUBACK could not be queued to the acker (full or stopped); the
    /// message is redelivered by the broker and answered with its original seq.
    #[error("PUBACK queue")]
    AckQueue(
        #[source] Box<tokio::sync::mpsc::error::TrySendError<rumqttc::v5::mqttbytes::v5::Publish>>,
    ),
    /// A request could not be queued to the connection's driver, which has stopped.
    #[error("MQTT connection closed: request not sent")]
    Request(#[source] Box<rumqttc::v5::ClientError>),
    /// A JSON-RPC message could not be encoded; nothing was sent.
    #[error("encoding a JSON-RPC message")]
    Encode(#[from] serde_json::Error),
}

/// How to open a link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// `mqtt://host[:port]` (port 1883 by default) or `mqtts://host[:port]` (8883).
    pub url: String,
    /// For `mqtts://`: trust, client certificate and server-name override, read from their
    /// files at each connect. `None`: the public roots, no client certificate.
    pub tls: Option<ClientTls>,
    /// MQTT client id (also the MCP server-id or mcp-client-id).
    pub client_id: String,
    /// `MCP-COMPONENT-TYPE` for CONNECT and PUBLISH user properties; `None` for plain MQTT.
    pub component: Option<&'static str>,
    /// `MCP-META` JSON for CONNECT.
    pub meta: Option<serde_json::Value>,
    /// Last will `(topic, payload, retain)`, sent at QoS 1 with the PUBLISH user properties.
    pub will: Option<(String, Vec<u8>, bool)>,
    /// Password (username = client id) for brokers that require one.
    pub password: Option<Secret>,
    /// Acknowledge received QoS 1 publishes only through an [`Acker`] ([`Link::acker`]).
    pub manual_acks: bool,
    /// `None`: clean start, session expiry 0 (MCP over MQTT requires it). `Some(secs)`: resume
    /// the broker session and keep it `secs` after a disconnect, so unacknowledged QoS 1
    /// messages are redelivered (local ingest).
    pub persistent_session: Option<u32>,
}

type Waiters = Arc<
    Mutex<(
        VecDeque<oneshot::Sender<Vec<SubscribeReasonCode>>>,
        HashMap<u16, oneshot::Sender<Vec<SubscribeReasonCode>>>,
    )>,
>;

/// A live MQTT 5 connection: a clean start with session expiry 0, or a resumed persistent
/// session ([`LinkOptions::persistent_session`]).
pub struct Link {
    publisher: Publisher,
    /// CONNACK user properties the broker sent (`MCP-SERVER-NAME`, ...).
    pub connack: Vec<(String, String)>,
    incoming: mpsc::Receiver<Publish>,
    waiters: Waiters,
    subscribe_order: tokio::sync::Mutex<()>,
    closed: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

/// `(host, port, tls)` of an `mqtt://` or `mqtts://` URL.
fn parse_url(url: &str) -> Result<(String, u16, bool), MqttError> {
    let (rest, default_port, tls) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (rest, 8883, true)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (rest, 1883, false)
    } else {
        return Err(MqttError::Url(url.to_owned()));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| MqttError::Url(url.to_owned()))?),
        None => (rest, default_port),
    };
    if host.is_empty() {
        return Err(MqttError::Url(url.to_owned()));
    }
    Ok((host.to_owned(), port, tls))
}

impl Link {
    /// Connects and waits for CONNACK within `timeout`; then a task drives the connection.
    ///
    /// # Errors
    /// [`MqttError::Url`], [`MqttError::Tls`], [`MqttError::ConnectTimeout`] or
    /// [`MqttError::Connect`] (a TLS failure said in words: which side, which setting).
    pub async fn connect(opts: LinkOptions, timeout: Duration) -> Result<Link, MqttError> {
        let (host, port, tls) = parse_url(&opts.url)?;
        let mut mqtt = MqttOptions::new(opts.client_id.clone(), host, port);
        let tls = tls.then(|| {
            opts.tls
                .clone()
                .unwrap_or_else(|| ClientTls::new("tls", Default::default()))
        });
        if let Some(tls) = &tls {
            let config = tls.load()?;
            mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        mqtt.set_keep_alive(KEEP_ALIVE)
            .set_clean_start(opts.persistent_session.is_none())
            .set_manual_acks(opts.manual_acks)
            .set_request_channel_capacity(REQUEST_QUEUE)
            .set_connection_timeout(timeout.as_secs().max(1));
        mqtt.set_session_expiry_interval(Some(opts.persistent_session.unwrap_or(0)));
        mqtt.set_max_packet_size(Some(MAX_PACKET_BYTES));
        // Requests and answers are small writes each way: with Nagle on, an answer can wait for
        // the delayed ACK of the previous segment (up to 40 ms on Linux) before it leaves.
        let mut network = mqtt.network_options();
        network.set_tcp_nodelay(true);
        mqtt.set_network_options(network);
        let mut user_properties = Vec::new();
        let mut connect_props = Vec::new();
        if let Some(component) = opts.component {
            connect_props.push((
                super::topics::COMPONENT_TYPE.to_owned(),
                component.to_owned(),
            ));
            user_properties.push((
                super::topics::COMPONENT_TYPE.to_owned(),
                component.to_owned(),
            ));
            user_properties.push((
                super::topics::MQTT_CLIENT_ID.to_owned(),
                opts.client_id.clone(),
            ));
        }
        if let Some(meta) = &opts.meta {
            connect_props.push((super::topics::META.to_owned(), meta.to_string()));
        }
        mqtt.set_user_properties(connect_props);
        if let Some((topic, payload, retain)) = &opts.will {
            let props = LastWillProperties {
                delay_interval: None,
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: user_properties.clone(),
            };
            mqtt.set_last_will(LastWill::new(
                topic.clone(),
                payload.clone(),
                QoS::AtLeastOnce,
                *retain,
                Some(props),
            ));
        }
        if let Some(password) = &opts.password {
            mqtt.set_credentials(opts.client_id.clone(), password.expose());
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, REQUEST_QUEUE);
        let connack = tokio::time::timeout(timeout, wait_connack(&mut eventloop, tls.as_ref()))
            .await
            .map_err(|_| MqttError::ConnectTimeout(timeout))??;
        let (tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let waiters: Waiters = Arc::default();
        let closed = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        tokio::spawn(drive(
            eventloop,
            tx,
            waiters.clone(),
            closed.clone(),
            reason.clone(),
        ));
        Ok(Link {
            publisher: Publisher {
                client,
                user_properties,
            },
            connack,
            incoming,
            waiters,
            subscribe_order: tokio::sync::Mutex::new(()),
            closed,
            reason,
        })
    }

    /// A CONNACK user property, e.g. `MCP-SERVER-NAME`.
    pub fn connack_property(&self, name: &str) -> Option<&str> {
        self.connack
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Subscribes at QoS 1 and waits for the SUBACK; `no_local` sets No Local on every filter.
    ///
    /// # Errors
    /// A refused filter, no SUBACK within `timeout`, or a closed connection.
    pub async fn subscribe(
        &self,
        filters: &[String],
        no_local: bool,
        timeout: Duration,
    ) -> Result<(), MqttError> {
        let request: Vec<Filter> = filters
            .iter()
            .map(|f| {
                let mut filter = Filter::new(f.clone(), QoS::AtLeastOnce);
                filter.nolocal = no_local;
                filter
            })
            .collect();
        self.subscribe_filters(request, timeout).await
    }

    /// As [`Link::subscribe`], with filters built by the caller (e.g. retain handling).
    ///
    /// # Errors
    /// A refused filter, no SUBACK within `timeout`, or a closed connection.
    pub async fn subscribe_filters(
        &self,
        request: Vec<Filter>,
        timeout: Duration,
    ) -> Result<(), MqttError> {
        let _order = self.subscribe_order.lock().await;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .push_back(tx);
        let filters: Vec<String> = request.iter().map(|f| f.path.clone()).collect();
        self.publisher
            .client
            .subscribe_many(request)
            .await
            .map_err(|e| MqttError::Request(Box::new(e)))?;
        let codes = tokio::select! {
            r = tokio::time::timeout(timeout, rx) => r
                .map_err(|_| MqttError::SubscribeTimeout(timeout))?
                .map_err(|_| self.closed_error())?,
            () = self.closed.cancelled() => return Err(self.closed_error()),
        };
        for (filter, code) in filters.iter().zip(codes) {
            if !matches!(code, SubscribeReasonCode::Success(_)) {
                return Err(MqttError::SubscribeRefused {
                    filter: filter.clone(),
                    reason: format!("{code:?}"),
                });
            }
        }
        Ok(())
    }

    /// Unsubscribes without waiting for the UNSUBACK (nothing depends on it).
    pub async fn unsubscribe(&self, filters: &[String]) {
        for filter in filters {
            let _ = self.publisher.client.unsubscribe(filter.clone()).await;
        }
    }

    /// Publishes at QoS 1 with the MCP user properties. Queued for the driver: returning `Ok`
    /// says nothing about delivery (JSON-RPC answers are the delivery signal).
    ///
    /// # Errors
    /// The connection is closed.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        retain: bool,
    ) -> Result<(), MqttError> {
        if self.closed.is_cancelled() {
            return Err(self.closed_error());
        }
        self.publisher.publish(topic, payload, retain).await
    }

    /// The next received publish; `None` once the connection is gone.
    pub async fn recv(&mut self) -> Option<Publish> {
        self.incoming.recv().await
    }

    /// Takes the received publishes out of the link, so one task can read them while another
    /// subscribes: a resumed session's messages may arrive before the SUBACK, and a driver
    /// blocked on a full incoming queue never reads that SUBACK. [`Link::recv`] then returns
    /// `None`.
    pub fn take_incoming(&mut self) -> mpsc::Receiver<Publish> {
        std::mem::replace(&mut self.incoming, mpsc::channel(1).1)
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    /// Why the connection ended, if it has.
    pub fn closed_error(&self) -> MqttError {
        MqttError::Closed(
            self.reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "connection ended".into()),
        )
    }

    /// A cloneable handle for a task that sends PUBACKs while the owner keeps calling `recv`
    /// (acking from the owner's own loop could wait on a full request channel while the
    /// driver, which drains that channel, waits on a full incoming queue).
    pub fn acker(&self) -> Acker {
        Acker {
            client: self.publisher.client.clone(),
        }
    }

    /// A cloneable publisher for tasks that only send.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Sends DISCONNECT (no will) and stops the driver.
    pub async fn disconnect(self) {
        let _ = self.publisher.client.disconnect().await;
        let _ = tokio::time::timeout(DISCONNECT_LINGER, self.closed.cancelled()).await;
        self.closed.cancel();
    }
}

/// PUBACK-and-DISCONNECT handle of a [`Link`] with manual acks; requests go out in call order.
#[derive(Clone)]
pub struct Acker {
    client: AsyncClient,
}

impl Acker {
    /// Sends the PUBACK of a publish received with manual acks; waits while rumqttc's request
    /// channel is full.
    ///
    /// # Errors
    /// The connection is closed: with session expiry 0 the broker redelivers nothing, with a
    /// persistent session it redelivers the publish on the next connect.
    /// The connection is closed.
    pub async fn ack(&self, publish: &Publish) -> Result<(), MqttError> {
        self.client
            .ack(publish)
            .await
            .map_err(|e| MqttError::Request(Box::new(e)))
    }

    /// Sends DISCONNECT (no will) after every request queued before it; the driver then stops
    /// and the link's `recv` returns `None`.
    ///
    /// # Errors
    /// The connection is closed.
    pub async fn disconnect(&self) -> Result<(), MqttError> {
        self.client
            .disconnect()
            .await
            .map_err(|e| MqttError::Request(Box::new(e)))
    }
}

/// Send-only handle of a [`Link`].
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    user_properties: Vec<(String, String)>,
}

impl Publisher {
    /// As [`Link::publish`].
    ///
    /// # Errors
    /// The connection is closed.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        retain: bool,
    ) -> Result<(), MqttError> {
        let props = PublishProperties {
            user_properties: self.user_properties.clone(),
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, retain, payload.into(), props)
            .await
            .map_err(|e| MqttError::Request(Box::new(e)))
    }
}

async fn wait_connack(
    eventloop: &mut EventLoop,
    tls: Option<&ClientTls>,
) -> Result<Vec<(String, String)>, MqttError> {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return Ok(ack
                    .properties
                    .map(|p| p.user_properties)
                    .unwrap_or_default());
            }
            Ok(_) => continue,
            Err(e) => {
                let explained = tls.and_then(|t| t.explain_chain(&e));
                return Err(MqttError::Connect {
                    reason: explained.unwrap_or_else(|| e.to_string()),
                    source: e,
                });
            }
        }
    }
}

async fn drive(
    mut eventloop: EventLoop,
    incoming: mpsc::Sender<Publish>,
    waiters: Waiters,
    closed: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
) {
    let why = loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            () = closed.cancelled() => break "closed locally".to_owned(),
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if incoming.send(p).await.is_err() {
                    break "receiver dropped".to_owned();
                }
            }
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                let mut w = waiters.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tx) = w.0.pop_front() {
                    w.1.insert(pkid, tx);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let tx = waiters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .1
                    .remove(&ack.pkid);
                if let Some(tx) = tx {
                    let _ = tx.send(ack.return_codes);
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                break format!("broker sent DISCONNECT ({:?})", d.reason_code);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Read until the broker closes; publishes still arriving are dropped unacked.
                let until_closed = async { while eventloop.poll().await.is_ok() {} };
                let _ = tokio::time::timeout(DISCONNECT_LINGER, until_closed).await;
                break "disconnected".to_owned();
            }
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884, false)
        );
        assert_eq!(
            parse_url("mqtt://broker/").unwrap(),
            ("broker".into(), 1883, false)
        );
        assert_eq!(
            parse_url("mqtts://broker").unwrap(),
            ("broker".into(), 8883, true)
        );
        assert_eq!(
            parse_url("mqtts://127.0.0.1:8884").unwrap(),
            ("127.0.0.1".into(), 8884, true)
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://:1").is_err());
        assert!(parse_url("mqtt://h:port").is_err());
    }
}
