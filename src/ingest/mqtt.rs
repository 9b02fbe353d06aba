//! Local MQTT ingest (docs/DESIGN.md §10): subscribes on the gateway's broker and commits every publish
//! as an event before its PUBACK goes out.
//!
//! Payload → event: `source` = the topic, `kind` = [`KIND`], `time` = commit time, `id` = the
//! payload's own UUID `id` field when it is a JSON object with one, else a fresh UUIDv7, and
//! `data` =
//! - the payload's JSON value when it parses as JSON (so `42` is a number, `"a"` a string);
//! - else, if it is UTF-8, the payload as a JSON string (an empty payload gives `""`);
//! - else `{"encoding":"base64","base64":"<RFC 4648, padded>"}` (a JSON payload of exactly this
//!   shape cannot be told apart; producers of binary data should not send one).
//!
//! Nothing is dropped silently: a message whose `data` would exceed `max_event_bytes`, or whose
//! topic is longer than [`MAX_SOURCE_LEN`], is stored as a placeholder of kind [`KIND_REJECTED`]
//! with `data = {"reason": str, "topic": str (at most 256 bytes), "bytes": payload length}`.
//!
//! Delivery is at least once from the local broker. The PUBACK goes out only after `append`
//! returned (fsync); while the outbox refuses (full with `overflow = "reject"`, storage error),
//! messages stay unacknowledged and are retried with backoff. The broker session is persistent
//! ([`SESSION_EXPIRY`]), so unacknowledged QoS 1 messages come again after a reconnect or
//! restart. MQTT gives a message no stable id: one committed whose PUBACK was lost (crash, or
//! the connection dropped between commit and ack) is redelivered and stored again under a new
//! seq — unless the payload is a JSON object with a UUID `id` field, which then becomes the
//! event's idempotency key and the redelivery returns the original seq. A graceful stop acks all
//! it committed before DISCONNECT, so it duplicates nothing.
//! QoS 0 messages are at most once: received but uncommitted ones are lost when the connection
//! drops or the daemon stops. The broker bounds what it keeps for us (Mosquitto
//! `max_queued_messages`, session expiry) and drops publishes over
//! [`crate::mqtt::link::MAX_PACKET_BYTES`].

use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::FutureExt;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Publish, RetainForwardRule};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::MqttIngestConfig;
use crate::config::secret::Secret;
use crate::event::{DEFAULT_MAX_EVENT_BYTES, MAX_SOURCE_LEN, NewEvent};
use crate::mqtt::link::{Acker, Link, LinkOptions, MqttError};
use crate::outbox::{Outbox, OutboxError};
use crate::reconnect::{Backoff, Pace, Reconnect};
use crate::tls::ClientTls;

/// `kind` of an event made from an MQTT message.
pub const KIND: &str = "mqtt";
/// `kind` of the placeholder stored for a message that cannot become an event.
pub const KIND_REJECTED: &str = "mqtt-rejected";
/// How long the broker keeps our session (subscriptions, unacknowledged and queued messages)
/// after a disconnect.
pub const SESSION_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Most messages committed in one append (one fsync): every publish already received goes in.
pub const MAX_BATCH_EVENTS: usize = 256;
/// Longest wait for the broker's CONNACK.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the SUBACK.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// First and largest delay between connection attempts.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
/// See [`RECONNECT_INITIAL`].
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// First and largest delay before retrying an append the outbox refused.
pub const OUTBOX_RETRY_INITIAL: Duration = Duration::from_millis(50);
/// See [`OUTBOX_RETRY_INITIAL`].
pub const OUTBOX_RETRY_MAX: Duration = Duration::from_secs(2);
/// Bound of the queue of committed messages waiting for their PUBACK. A broker cannot have more
/// unacknowledged QoS 1 messages with us than there are packet ids, so it never fills.
const ACK_QUEUE: usize = 1 << 16;
/// Longest wait at shutdown for the PUBACKs of committed messages and the DISCONNECT to go out.
pub const ACK_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The local MQTT ingest. Run it with [`IngestMqtt::run`].
pub struct IngestMqtt {
    outbox: Outbox,
    url: String,
    client_id: String,
    topics: Vec<String>,
    password: Option<Secret>,
    tls: ClientTls,
    max_event_bytes: usize,
}

impl IngestMqtt {
    /// An ingest from `config`'s broker into `outbox`; the client id defaults to
    /// `edge-relay-ingest-{gateway}`. Events larger than [`DEFAULT_MAX_EVENT_BYTES`] become
    /// placeholders unless [`IngestMqtt::max_event_bytes`] says otherwise.
    pub fn new(
        outbox: Outbox,
        gateway: &str,
        config: &MqttIngestConfig,
        password: Option<Secret>,
    ) -> Self {
        Self {
            outbox,
            url: config.url.clone(),
            client_id: config
                .client_id
                .clone()
                .unwrap_or_else(|| format!("edge-relay-ingest-{gateway}")),
            topics: config.topics.clone(),
            password,
            tls: ClientTls::new("ingest.mqtt.tls", config.tls.clone()),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// Sets the cap on an event's encoded `data`, bytes (`ingest.http.max_event_bytes`).
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event_bytes = bytes;
        self
    }

    /// Ingests until `shutdown`, reconnecting with capped, jittered backoff. On shutdown an
    /// append in progress finishes and is acked, then the session ends with DISCONNECT.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut reconnect = Reconnect::new(module_path!(), RECONNECT_INITIAL, RECONNECT_MAX)
            .field("broker", self.url.as_str())
            .field("client_id", self.client_id.as_str());
        while !shutdown.is_cancelled() {
            let mut connected_at = None;
            let err = match self.session(&shutdown, &mut connected_at).await {
                Ok(()) => break,
                Err(e) => e,
            };
            let healthy_for = connected_at.map_or(Duration::ZERO, |t| t.elapsed());
            if reconnect
                .retry(&err, healthy_for, Pace::Backoff, &shutdown)
                .await
                .is_none()
            {
                break;
            }
        }
        log::info!("mqtt ingest stopped");
    }

    /// The TLS settings of an `mqtts://` broker (`[ingest.mqtt.tls]`).
    pub fn tls(&self) -> &ClientTls {
        &self.tls
    }

    /// One connection: connect, subscribe, commit-and-ack batches until an error or shutdown
    /// (`Ok`), then let the queued PUBACKs and a DISCONNECT go out.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        connected_at: &mut Option<Instant>,
    ) -> anyhow::Result<()> {
        let options = LinkOptions {
            url: self.url.clone(),
            tls: Some(self.tls.clone()),
            client_id: self.client_id.clone(),
            component: None,
            meta: None,
            will: None,
            password: self.password.clone(),
            manual_acks: true,
            persistent_session: Some(SESSION_EXPIRY.as_secs() as u32),
        };
        let mut link = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = Link::connect(options, CONNECT_TIMEOUT) => {
                r.with_context(|| format!("connecting to {}", self.url))?
            }
        };
        // Design: a resumed session's messages flow before the SUBACK, and PUBACKs queue behind
        // them in rumqttc's request channel; the link's driver serves both only while someone
        // drains its incoming queue. So ingest runs during the subscribe, and PUBACKs go through
        // a pump task: no wait here ever stops the draining.
        let mut incoming = link.take_incoming();
        let (acks, queued) = mpsc::channel(ACK_QUEUE);
        let pump = tokio::spawn(pump_acks(link.acker(), queued));
        // Retain handling 1: a resumed session's subscriptions stay, so retained messages are
        // not sent (and stored) again on every reconnect.
        let filters = self.topics.iter().map(|t| {
            let mut f = Filter::new(t.clone(), QoS::AtLeastOnce);
            f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
            f
        });
        let ended = {
            let work = self.ingest(&link, &mut incoming, &acks, shutdown);
            tokio::pin!(work);
            tokio::select! {
                r = link.subscribe_filters(filters.collect(), SUBSCRIBE_TIMEOUT) => match r {
                    Ok(()) => {
                        *connected_at = Some(Instant::now());
                        log::info!(broker = self.url.as_str(), client_id = self.client_id.as_str();
                            "mqtt ingest subscribed to {:?}", self.topics);
                        (&mut work).await.map_err(anyhow::Error::from)
                    }
                    Err(e) => Err(anyhow::Error::from(e)
                        .context(format!("subscribing to {:?}", self.topics))),
                },
                r = &mut work => r.map_err(anyhow::Error::from),
            }
        };
        if ended.is_err() {
            pump.abort();
            return ended;
        }
        drop(acks);
        let mut discarded = 0usize;
        let drain = async {
            while incoming.recv().await.is_some() {
                discarded += 1
            }
        };
        let timed_out = tokio::time::timeout(ACK_DRAIN_TIMEOUT, drain)
            .await
            .is_err();
        pump.abort();
        log::info!(discarded = discarded, timed_out = timed_out; "mqtt session closed; messages \
            received but not committed come again if QoS 1, are lost if QoS 0");
        Ok(())
    }

    /// Takes every publish already received (up to [`MAX_BATCH_EVENTS`]) into one commit, until
    /// shutdown (`Ok`) or the connection ends.
    async fn ingest(
        &self,
        link: &Link,
        incoming: &mut mpsc::Receiver<Publish>,
        acks: &mpsc::Sender<Publish>,
        shutdown: &CancellationToken,
    ) -> Result<(), MqttError> {
        let mut retry = Backoff::new(OUTBOX_RETRY_INITIAL, OUTBOX_RETRY_MAX);
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                p = incoming.recv() => p.ok_or_else(|| link.closed_error())?,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_EVENTS {
                let Ok(p) = incoming.try_recv() else { break };
                batch.push(p);
            }
            // Messages buffered before the connection died are redelivered anyway.
            if link.closed().now_or_never().is_some() {
                return Err(link.closed_error());
            }
            if !self
                .commit(link, &batch, acks, &mut retry, shutdown)
                .await?
            {
                return Ok(());
            }
        }
    }

    /// Commits `batch` in order and queues each committed part's PUBACKs; `Ok(false)` on
    /// shutdown. A part the outbox refuses as full is halved (so the buffer fills up to the last
    /// event that fits); a single refused event is retried after a backoff. Never acks what is
    /// not committed; what is not acked is the broker's to redeliver.
    async fn commit(
        &self,
        link: &Link,
        batch: &[Publish],
        acks: &mpsc::Sender<Publish>,
        retry: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<bool, MqttError> {
        let events: Vec<NewEvent> = batch
            .iter()
            .map(|p| {
                to_event(
                    &String::from_utf8_lossy(&p.topic),
                    &p.payload,
                    self.max_event_bytes,
                )
            })
            .collect();
        for e in events.iter().filter(|e| e.kind == KIND_REJECTED) {
            log::warn!(topic = e.source.as_str(); "MQTT message stored as {KIND_REJECTED}: {}",
                e.data["reason"].as_str().unwrap_or_default());
        }
        let (mut done, mut chunk) = (0, events.len());
        while done < events.len() {
            let end = (done + chunk).min(events.len());
            let err = match self.outbox.append(events[done..end].to_vec()).await {
                Ok(_) => {
                    for p in batch[done..end].iter().filter(|p| p.qos != QoS::AtMostOnce) {
                        // Only what the PUBACK needs, so payloads are not kept alive.
                        let ack = Publish {
                            pkid: p.pkid,
                            qos: p.qos,
                            ..Publish::default()
                        };
                        acks.try_send(ack)
                            .map_err(|e| MqttError::AckQueue(Box::new(e)))?;
                    }
                    retry.reset();
                    done = end;
                    continue;
                }
                Err(e) => e,
            };
            if matches!(err, OutboxError::Full { .. }) && end - done > 1 {
                chunk = (end - done) / 2;
                continue;
            }
            let delay = retry.next_delay(rand::random::<f64>());
            log::warn!(pending = events.len() - done;
                "outbox refused MQTT messages, not acking them: {err:#}; retry in {delay:?}");
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                () = link.closed() => return Err(link.closed_error()),
                () = tokio::time::sleep(delay) => {}
            }
        }
        Ok(!shutdown.is_cancelled())
    }
}

/// Sends the PUBACKs in commit order; once the ingest drops its sender, sends DISCONNECT.
async fn pump_acks(acker: Acker, mut queued: mpsc::Receiver<Publish>) {
    while let Some(publish) = queued.recv().await {
        if acker.ack(&publish).await.is_err() {
            return;
        }
    }
    let _ = acker.disconnect().await;
}

/// The event stored for one MQTT message (see the module doc); `id` is a fresh UUIDv7 so a
/// retried append is idempotent.
pub fn to_event(topic: &str, payload: &[u8], max_event_bytes: usize) -> NewEvent {
    let event = |source: &str, kind: &str, data: Value| NewEvent {
        id: Some(Uuid::now_v7()),
        source: source.to_owned(),
        kind: kind.to_owned(),
        time: None,
        data,
    };
    let short_topic = truncate(topic, MAX_SOURCE_LEN);
    let reject = |reason: String| {
        let data = json!({"reason": reason, "topic": short_topic, "bytes": payload.len()});
        let source = Some(short_topic).filter(|t| !t.is_empty());
        event(source.unwrap_or("(empty topic)"), KIND_REJECTED, data)
    };
    if topic.is_empty() || topic.len() > MAX_SOURCE_LEN {
        return reject(format!(
            "topic is {} bytes, a source must have 1 to {MAX_SOURCE_LEN}",
            topic.len()
        ));
    }
    let data = payload_data(payload);
    let size = serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
    if size > max_event_bytes {
        return reject(format!(
            "payload of {} bytes is {size} bytes as event data, the limit is {max_event_bytes} \
             (ingest.http.max_event_bytes)",
            payload.len()
        ));
    }
    // A producer-chosen UUID `id` in a JSON object is the idempotency key: a redelivery after
    // a crash then returns the original seq instead of storing the message twice.
    let producer_id = data
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let mut new = event(topic, KIND, data);
    if producer_id.is_some() {
        new.id = producer_id;
    }
    new
}

/// JSON value, else JSON string, else base64 object (see the module doc).
fn payload_data(payload: &[u8]) -> Value {
    if let Ok(value) = serde_json::from_slice::<Value>(payload) {
        return value;
    }
    match std::str::from_utf8(payload) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({"encoding": "base64", "base64": STANDARD.encode(payload)}),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_json_text_and_binary_payloads() {
        let b64 = |s: &str| json!({"encoding": "base64", "base64": s});
        let cases: [(&[u8], Value); 9] = [
            (br#"{"t": 21.5}"#, json!({"t": 21.5})),
            (b"42", json!(42)),
            (b"hello world", json!("hello world")),
            (b"", json!("")),
            (&[0xff], b64("/w==")),
            (&[0xff, 0xfe], b64("//4=")),
            (&[0xff, 0x00, 0x01], b64("/wAB")),
            (b"foobar\xff", b64("Zm9vYmFy/w==")),
            (&[0x80, 0, 0, 0x3e, 0x3f], b64("gAAAPj8=")),
        ];
        for (payload, data) in cases {
            let e = to_event("sensors/a", payload, 1024);
            assert_eq!((e.source.as_str(), e.kind.as_str()), ("sensors/a", KIND));
            assert_eq!(e.data, data, "{payload:?}");
            assert!(e.id.is_some() && e.time.is_none());
        }
    }

    #[test]
    fn oversize_payloads_and_long_topics_become_placeholders() {
        let e = to_event("s/big", &[b'x'; 100], 64);
        assert_eq!(
            (e.source.as_str(), e.kind.as_str()),
            ("s/big", KIND_REJECTED)
        );
        assert_eq!(
            (&e.data["topic"], &e.data["bytes"]),
            (&json!("s/big"), &json!(100))
        );
        assert!(
            e.data["reason"].as_str().unwrap().contains("limit is 64"),
            "{}",
            e.data
        );
        // The limit is on the encoded data: 62 chars of text are 64 bytes as a JSON string.
        assert_eq!(to_event("s", &[b'x'; 62], 64).kind, KIND);
        assert_eq!(to_event("s", &[b'x'; 63], 64).kind, KIND_REJECTED);
        let e = to_event(&format!("{}é", "t".repeat(MAX_SOURCE_LEN - 1)), b"1", 1024);
        assert_eq!(e.kind, KIND_REJECTED);
        assert_eq!(
            e.source,
            "t".repeat(MAX_SOURCE_LEN - 1),
            "cut at a char boundary"
        );
        assert_eq!(to_event("", b"1", 1024).source, "(empty topic)");
    }
}
