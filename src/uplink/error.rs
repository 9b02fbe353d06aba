//! Why an upstream exchange failed ([`UplinkError`]), mapped from rmcp's errors.

use std::time::Duration;

use rmcp::model::{ErrorCode, ErrorData, ProtocolVersion};
use rmcp::service::{ClientInitializeError, ServiceError};

/// What a transport knows about one of its errors that rmcp's error types do not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportSignal {
    /// The server forgot the session (Streamable HTTP: 404 to a request carrying
    /// `Mcp-Session-Id`, MCP 2025-11-25, Basic/Transports, §Session Management).
    SessionExpired,
    /// The server asked to wait this long before the next attempt (HTTP 429/503 with
    /// `Retry-After`).
    Throttled(Duration),
}

/// A transport's reading of its own errors, given to [`super::session::Session::start`]: `None` when the error
/// is a plain transport failure.
pub type ReadTransportError =
    fn(&(dyn std::error::Error + Send + Sync + 'static)) -> Option<TransportSignal>;

/// [`ReadTransportError`] of a transport with nothing to add (MCP over MQTT).
pub fn nothing_to_read(
    _: &(dyn std::error::Error + Send + Sync + 'static),
) -> Option<TransportSignal> {
    None
}

/// Why an upstream exchange failed. Every variant means "do not advance the acked seq".
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// No answer within the named timeout; the request may or may not have been processed.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited (`the session start`, `the answer to edge_ingest`, ...).
        what: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The server forgot our legacy session (HTTP 404 to a request carrying `Mcp-Session-Id`,
    /// MCP 2025-11-25, Basic/Transports, §Session Management); a new session is needed. The
    /// current era has no sessions, so this never happens there.
    #[error("session expired (HTTP 404): {0}")]
    SessionExpired(String),
    /// Connecting, `server/discover` or the `initialize` handshake failed.
    #[error("connect/initialize failed: {0}")]
    Connect(String),
    /// The server serves none of the revisions asked for: it answered JSON-RPC error -32022
    /// (MCP 2026-07-28, Basic/Lifecycle, §Version Negotiation) with the ones it serves.
    #[error("the upstream serves none of MCP {asked}: it serves {}", versions(.served))]
    Unsupported {
        /// The revisions this connect offered, comma-separated.
        asked: String,
        /// The revisions the server listed in `data.supported`.
        served: Vec<ProtocolVersion>,
    },
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

    /// True when a served revision has the `initialize` handshake: the legacy era is open.
    pub fn offers_legacy(&self) -> bool {
        match self {
            Self::Unsupported { served, .. } => served.iter().any(ProtocolVersion::has_initialize),
            _ => false,
        }
    }
}

/// A transport error's `Retry-After`, when its transport read one (`read`).
fn throttled(
    error: &(dyn std::error::Error + Send + Sync + 'static),
    read: ReadTransportError,
    message: &str,
) -> Option<UplinkError> {
    match read(error)? {
        TransportSignal::Throttled(retry_after) => Some(UplinkError::Throttled {
            retry_after,
            message: message.to_owned(),
        }),
        TransportSignal::SessionExpired => None,
    }
}

/// -32022 with its `data.supported` list, as [`UplinkError::Unsupported`].
fn unsupported(error: &ErrorData, asked: &[ProtocolVersion]) -> Option<UplinkError> {
    if error.code != ErrorCode::UNSUPPORTED_PROTOCOL_VERSION {
        return None;
    }
    let served = error.data.as_ref()?.get("supported")?;
    let served = serde_json::from_value::<Vec<ProtocolVersion>>(served.clone()).ok()?;
    Some(UplinkError::Unsupported {
        asked: versions(asked),
        served,
    })
}

fn versions(list: &[ProtocolVersion]) -> String {
    let names: Vec<&str> = list.iter().map(ProtocolVersion::as_str).collect();
    names.join(", ")
}

/// A failed session start (`asked`: the revisions offered) as an [`UplinkError`]; `read` is the
/// transport's reading of its own errors.
pub(super) fn start_error(
    e: ClientInitializeError,
    asked: &[ProtocolVersion],
    read: ReadTransportError,
) -> UplinkError {
    match e {
        // The transport's own error, without rmcp's generic type names around it.
        ClientInitializeError::TransportError { error, context } => {
            let message = format!("connect/initialize failed: {context}: {}", error.error);
            throttled(&*error.error, read, &message)
                .unwrap_or_else(|| UplinkError::Connect(format!("{context}: {}", error.error)))
        }
        ClientInitializeError::NoCompatibleProtocolVersion {
            server_supported, ..
        } => UplinkError::Unsupported {
            asked: versions(asked),
            served: server_supported,
        },
        ClientInitializeError::JsonRpcError(error) => {
            unsupported(&error, asked).unwrap_or_else(|| {
                let text = format!("JSON-RPC error {}: {}", error.code.0, error.message);
                UplinkError::Connect(text)
            })
        }
        ClientInitializeError::LegacyFallbackFailed { discover, fallback } => {
            UplinkError::Connect(format!(
                "server/discover failed ({discover}), then initialize failed ({})",
                start_error(*fallback, asked, read)
            ))
        }
        other => UplinkError::Connect(other.to_string()),
    }
}

/// A failed request of an open session as an [`UplinkError`]; `tool` names the request, `read`
/// is the transport's reading of its own errors.
pub(super) fn service_error(tool: &str, e: ServiceError, read: ReadTransportError) -> UplinkError {
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
            if read(&*t.error) == Some(TransportSignal::SessionExpired) =>
        {
            UplinkError::SessionExpired(t.error.to_string())
        }
        ServiceError::TransportSend(t) => {
            let message = format!("transport: {}", t.error);
            throttled(&*t.error, read, &message)
                .unwrap_or_else(|| UplinkError::Transport(t.error.to_string()))
        }
        other => UplinkError::Transport(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unsupported_version_names_both_sides_and_whether_legacy_is_open() {
        let error = ErrorData::new(
            ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
            "Unsupported protocol version: 2026-07-28",
            Some(json!({"supported": ["2025-06-18", "2025-11-25"]})),
        );
        let asked = [ProtocolVersion::V_2026_07_28];
        let e = start_error(
            ClientInitializeError::JsonRpcError(error),
            &asked,
            nothing_to_read,
        );
        assert!(e.offers_legacy(), "{e}");
        assert_eq!(
            e.to_string(),
            "the upstream serves none of MCP 2026-07-28: it serves 2025-06-18, 2025-11-25"
        );
        let current_only = ClientInitializeError::NoCompatibleProtocolVersion {
            client_supported: vec![ProtocolVersion::V_2025_11_25],
            server_supported: vec![ProtocolVersion::V_2026_07_28],
        };
        let e = start_error(
            current_only,
            &[ProtocolVersion::V_2025_11_25],
            nothing_to_read,
        );
        assert!(matches!(e, UplinkError::Unsupported { .. }) && !e.offers_legacy());
        let other = ErrorData::new(ErrorCode::METHOD_NOT_FOUND, "no", None);
        let e = start_error(
            ClientInitializeError::JsonRpcError(other),
            &asked,
            nothing_to_read,
        );
        assert!(e.to_string().contains("JSON-RPC error -32601: no"), "{e}");
    }
}
