//! An rmcp [`Transport`] over MCP over MQTT, for either role: JSON-RPC messages are PUBLISHed on
//! the session's RPC topic (`initialize` on the server control topic) and received from a
//! per-session inbox that the owner of the MQTT link fills.

use std::marker::PhantomData;

use rmcp::service::{RxJsonRpcMessage, ServiceRole, TxJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::link::{MqttError, Publisher};

/// Messages of one session waiting for rmcp; the link owner waits when it is full.
pub const INBOX: usize = 64;

/// Sending half of a session's inbox, held by whoever reads the MQTT link.
pub struct Inbox<R: ServiceRole> {
    tx: mpsc::Sender<RxJsonRpcMessage<R>>,
}

impl<R: ServiceRole> Inbox<R> {
    /// Parses one PUBLISH payload and queues it for rmcp. Returns `false` once the session is
    /// gone. A payload that is not a JSON-RPC message of the peer's role is logged and skipped.
    pub async fn deliver(&self, payload: &[u8]) -> bool {
        match serde_json::from_slice::<RxJsonRpcMessage<R>>(payload) {
            Ok(message) => self.tx.send(message).await.is_ok(),
            Err(e) => {
                log::warn!(error:% = e; "MCP over MQTT: skipping a message that is not JSON-RPC");
                !self.tx.is_closed()
            }
        }
    }

    /// True when the session's transport was dropped or closed.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One MCP session over MQTT (spec: mqtt-ai/mcp-over-mqtt, basic/mqtt_transport.md).
pub struct MqttTransport<R: ServiceRole> {
    publisher: Publisher,
    control_topic: Option<String>,
    rpc_topic: String,
    incoming: mpsc::Receiver<RxJsonRpcMessage<R>>,
    closed: CancellationToken,
    _drop: DropGuard,
    _role: PhantomData<R>,
}

/// The `method` of a JSON-RPC message, read without building the rest of it (a batch of
/// events can be large); `None` for a response or a payload that is not JSON-RPC.
fn method_of(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Head>(payload)
        .ok()?
        .method
        .map(|m| m.into_owned())
}

/// Whether `payload` is a JSON-RPC message whose `method` is `method`.
pub fn has_method(payload: &[u8], method: &str) -> bool {
    method_of(payload).as_deref() == Some(method)
}

/// Whether the peer said `notifications/disconnected` (mcp-over-mqtt §Disconnect).
pub fn is_disconnected(payload: &[u8]) -> bool {
    has_method(payload, "notifications/disconnected")
}

/// True for a request that opens a session and so goes to the server control topic:
/// `initialize` (mcp-over-mqtt §Initialization) or `server/discover` (MCP 2026-07-28).
fn opens_session(payload: &[u8]) -> bool {
    matches!(
        method_of(payload).as_deref(),
        Some("initialize" | "server/discover")
    )
}

impl<R: ServiceRole> MqttTransport<R> {
    /// A session publishing on `rpc_topic` (and `initialize` / `server/discover` on
    /// `control_topic`, client side).
    ///
    /// `closed` is cancelled when the transport is closed or dropped, so the link owner can
    /// end the session's MQTT side (publish `notifications/disconnected`, unsubscribe...).
    pub fn new(
        publisher: Publisher,
        control_topic: Option<String>,
        rpc_topic: String,
        closed: CancellationToken,
    ) -> (Self, Inbox<R>) {
        let (tx, incoming) = mpsc::channel(INBOX);
        let transport = Self {
            publisher,
            control_topic,
            rpc_topic,
            incoming,
            _drop: closed.clone().drop_guard(),
            closed,
            _role: PhantomData,
        };
        (transport, Inbox { tx })
    }
}

impl<R: ServiceRole> Transport<R> for MqttTransport<R> {
    type Error = MqttError;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<R>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let publisher = self.publisher.clone();
        let rpc = self.rpc_topic.clone();
        let control = self.control_topic.clone();
        async move {
            let payload = serde_json::to_vec(&item).map_err(MqttError::Encode)?;
            let topic = match control {
                Some(control) if opens_session(&payload) => control,
                _ => rpc,
            };
            publisher.publish(&topic, payload, false).await
        }
    }

    fn receive(&mut self) -> impl Future<Output = Option<RxJsonRpcMessage<R>>> + Send {
        self.incoming.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.incoming.close();
        self.closed.cancel();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_session_openers() {
        assert!(opens_session(
            br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#
        ));
        assert!(opens_session(
            br#"{"jsonrpc":"2.0","id":0,"method":"server/discover","params":{}}"#
        ));
        assert!(!opens_session(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#
        ));
        assert!(!opens_session(b"not json"));
    }
}
