//! The MCP client session to the upstream (DESIGN §2–3): rmcp's client over a chosen transport.

pub mod http;
pub mod http_client;
pub mod mqtt;

use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion,
};
use rmcp::service::{ClientInitializeError, RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpError;
use serde::Serialize;

use crate::contract::{Ack, CLIENT_NAME, CursorArgs, IngestArgs};
use http_client::HttpClientError;

/// How long a graceful session close (`DELETE` of the session) may take.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an upstream exchange failed. Every variant means "do not advance the cursor".
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// No answer within the named timeout; the request may or may not have been processed.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited (`initialize`, `edge_ingest answer`, ...).
        what: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The server forgot our session (HTTP 404, MCP 2025-06-18 Streamable HTTP §Session
    /// Management); a new session is needed.
    #[error("session expired (HTTP 404): {0}")]
    SessionExpired(String),
    /// Connecting or the `initialize` handshake failed.
    #[error("connect/initialize failed: {0}")]
    Connect(String),
    /// The transport failed mid-request (connection reset, closed, broken SSE stream).
    #[error("transport: {0}")]
    Transport(String),
    /// The upstream answered with a JSON-RPC error or a tool result with `isError: true`.
    #[error("upstream refused {tool}: {message}")]
    Refused {
        /// Tool called.
        tool: String,
        /// The upstream's message.
        message: String,
    },
    /// The upstream answered 429 or 503 with `Retry-After`: wait that long (within
    /// `relay.backoff_max_ms`) before the next attempt.
    #[error("{message} (upstream asks to retry after {retry_after:?})")]
    Throttled {
        /// How long the upstream asked to wait.
        retry_after: Duration,
        /// The transport's error.
        message: String,
    },
    /// The answer did not match the contract (no or wrong `structuredContent`).
    #[error("malformed answer from {tool}: {reason}")]
    Malformed {
        /// Tool called.
        tool: String,
        /// What was wrong.
        reason: String,
    },
}

impl UplinkError {
    /// The wait the upstream asked for ([`UplinkError::Throttled`]), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A transport error's `Retry-After`, when it is our HTTP client's 429/503.
fn throttled(
    error: &(dyn std::error::Error + Send + Sync + 'static),
    message: &str,
) -> Option<UplinkError> {
    let retry_after = match error.downcast_ref::<StreamableHttpError<HttpClientError>>()? {
        StreamableHttpError::Client(e) => e.retry_after()?,
        _ => return None,
    };
    Some(UplinkError::Throttled {
        retry_after,
        message: message.to_owned(),
    })
}

/// Tool names and the per-request timeout of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Name of the ingest tool (`upstream.ingest_tool`).
    pub ingest_tool: String,
    /// Name of the cursor tool (`upstream.cursor_tool`).
    pub cursor_tool: String,
    /// Timeout of `initialize` and of each tool call.
    pub request_timeout: Duration,
}

/// One initialized MCP client session. Dropping it abandons the session; prefer [`Session::close`].
pub struct Session {
    client: RunningService<RoleClient, ClientConfig>,
    config: SessionConfig,
}

/// `initialize` parameters of the relay: `clientInfo.name = "edge-relay"` (DESIGN §2).
pub fn client_info() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(CLIENT_NAME, env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

impl Session {
    /// Runs the `initialize` handshake over `transport` within the request timeout.
    ///
    /// # Errors
    /// [`UplinkError::Timeout`] or [`UplinkError::Connect`].
    pub async fn start<T, E, A>(transport: T, config: SessionConfig) -> Result<Self, UplinkError>
    where
        T: rmcp::transport::IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let timeout = config.request_timeout;
        let client = tokio::time::timeout(timeout, client_info().serve(transport))
            .await
            .map_err(|_| UplinkError::Timeout {
                what: "the initialize handshake".into(),
                after: timeout,
            })?
            .map_err(|e| match e {
                // The transport's own error, without rmcp's generic type names around it.
                ClientInitializeError::TransportError { error, context } => {
                    let message = format!("connect/initialize failed: {context}: {}", error.error);
                    throttled(&*error.error, &message).unwrap_or_else(|| {
                        UplinkError::Connect(format!("{context}: {}", error.error))
                    })
                }
                other => UplinkError::Connect(other.to_string()),
            })?;
        Ok(Self { client, config })
    }

    /// Server name and version from the `initialize` result, for logs.
    pub fn server_name(&self) -> String {
        self.client
            .peer_info()
            .and_then(|info| {
                let imp = info.server_info.as_ref()?;
                Some(format!("{} {}", imp.name, imp.version))
            })
            .unwrap_or_else(|| "unknown server".into())
    }

    /// Negotiated protocol version and the server's `serverInfo` (`name version`).
    pub fn negotiated(&self) -> (String, String) {
        let version = self
            .client
            .peer_info()
            .map(|info| info.protocol_version.to_string())
            .unwrap_or_else(|| "unknown".into());
        (version, self.server_name())
    }

    /// `tools/list` (all pages), within the request timeout.
    ///
    /// # Errors
    /// Any [`UplinkError`].
    pub async fn list_tools(&self) -> Result<Vec<rmcp::model::Tool>, UplinkError> {
        let timeout = self.config.request_timeout;
        tokio::time::timeout(timeout, self.client.peer().list_all_tools())
            .await
            .map_err(|_| UplinkError::Timeout {
                what: "the answer to tools/list".into(),
                after: timeout,
            })?
            .map_err(|e| service_error("tools/list", e))
    }

    /// `edge_cursor`: the upstream's contiguous high-water mark for this stream.
    ///
    /// # Errors
    /// Any [`UplinkError`].
    pub async fn cursor(&self, args: &CursorArgs) -> Result<Ack, UplinkError> {
        self.call(&self.config.cursor_tool, args).await
    }

    /// `edge_ingest`: delivers a batch; the answer's `acked_seq` is the only thing that may
    /// advance the cursor (DESIGN §2).
    ///
    /// # Errors
    /// Any [`UplinkError`]; after an error the batch may or may not be stored upstream.
    pub async fn ingest(&self, args: &IngestArgs) -> Result<Ack, UplinkError> {
        self.call(&self.config.ingest_tool, args).await
    }

    async fn call(&self, tool: &str, args: &impl Serialize) -> Result<Ack, UplinkError> {
        let arguments = match serde_json::to_value(args) {
            Ok(serde_json::Value::Object(map)) => map,
            other => {
                return Err(UplinkError::Malformed {
                    tool: tool.into(),
                    reason: format!("arguments did not encode as a JSON object: {other:?}"),
                });
            }
        };
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        let timeout = self.config.request_timeout;
        let result = tokio::time::timeout(timeout, self.client.peer().call_tool(params))
            .await
            .map_err(|_| UplinkError::Timeout {
                what: format!("the answer to {tool}"),
                after: timeout,
            })?
            .map_err(|e| service_error(tool, e))?;
        parse_ack(tool, result)
    }

    /// Ends the session politely (HTTP: `DELETE` with the session id), within [`CLOSE_TIMEOUT`].
    pub async fn close(mut self) {
        if let Err(e) = self.client.close_with_timeout(CLOSE_TIMEOUT).await {
            log::debug!(error:% = e; "closing the upstream session");
        }
    }
}

/// Reads `{acked_seq, acked_id}` from a tool result.
///
/// # Errors
/// [`UplinkError::Refused`] for `isError: true`; [`UplinkError::Malformed`] otherwise.
pub fn parse_ack(tool: &str, result: CallToolResult) -> Result<Ack, UplinkError> {
    let text = || {
        result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if result.is_error == Some(true) {
        return Err(UplinkError::Refused {
            tool: tool.into(),
            message: text(),
        });
    }
    let value = result
        .structured_content
        .clone()
        .ok_or_else(|| UplinkError::Malformed {
            tool: tool.into(),
            reason: format!("no structuredContent (text: {})", text()),
        })?;
    serde_json::from_value(value.clone()).map_err(|e| UplinkError::Malformed {
        tool: tool.into(),
        reason: format!("{e} in {value}"),
    })
}

fn service_error(tool: &str, e: ServiceError) -> UplinkError {
    match e {
        ServiceError::McpError(err) => UplinkError::Refused {
            tool: tool.into(),
            message: format!("JSON-RPC error {}: {}", err.code.0, err.message),
        },
        ServiceError::Timeout { timeout } => UplinkError::Timeout {
            what: format!("the answer to {tool}"),
            after: timeout,
        },
        ServiceError::TransportSend(t)
            if matches!(
                t.error
                    .downcast_ref::<StreamableHttpError<HttpClientError>>(),
                Some(StreamableHttpError::SessionExpired)
            ) =>
        {
            UplinkError::SessionExpired(t.error.to_string())
        }
        ServiceError::TransportSend(t) => {
            let message = format!("transport: {}", t.error);
            throttled(&*t.error, &message)
                .unwrap_or_else(|| UplinkError::Transport(t.error.to_string()))
        }
        other => UplinkError::Transport(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ContentBlock;
    use serde_json::json;

    #[test]
    fn reads_the_ack_and_refuses_broken_answers() {
        let ok = CallToolResult::structured(json!({"acked_seq": 7, "acked_id": null}));
        assert_eq!(parse_ack("t", ok).unwrap().cursor(), 7);
        let null = CallToolResult::structured(json!({"acked_seq": null, "acked_id": null}));
        assert_eq!(parse_ack("t", null).unwrap().acked_seq, None);

        let refused = CallToolResult::error(vec![ContentBlock::text("disk full")]);
        let err = parse_ack("edge_ingest", refused).unwrap_err();
        assert!(matches!(err, UplinkError::Refused { .. }));
        assert!(err.to_string().contains("disk full"), "{err}");

        let text_only = CallToolResult::success(vec![ContentBlock::text("ok")]);
        let err = parse_ack("edge_ingest", text_only).unwrap_err();
        assert!(err.to_string().contains("no structuredContent"), "{err}");

        let wrong = CallToolResult::structured(json!({"acked_seq": "seven"}));
        let err = parse_ack("edge_ingest", wrong).unwrap_err();
        assert!(matches!(err, UplinkError::Malformed { .. }), "{err}");
    }
}
