//! One MCP client session (rmcp's client) in either era, and the two contract calls over it.

use std::future::Future;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::error::{ReadTransportError, UplinkError, service_error, start_error};
use crate::contract::{Ack, CLIENT_NAME, CursorArgs, EVENTS_ZSTD, IngestArgs, IngestBatch};

/// How long a graceful session close may take in all (HTTP: `DELETE` of a legacy session;
/// MQTT: `notifications/disconnected` and DISCONNECT).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which MCP era a session start negotiates (MCP 2026-07-28, Basic/Lifecycle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EraChoice {
    /// `server/discover` at 2026-07-28 first (rmcp's `Auto` lifecycle). A server that rejects
    /// it as a legacy server would (an error other than -32020/-32021/-32022, a 4xx without a
    /// JSON-RPC body, no answer within 10 s) gets `initialize` on the same transport; one that
    /// answers -32022 listing only `initialize` revisions gets a second session start with
    /// `initialize` ([`negotiate`]).
    #[default]
    PreferCurrent,
    /// Only `server/discover` at 2026-07-28.
    Current,
    /// Only `initialize`, offering 2025-11-25 (the server may answer an older revision).
    Legacy,
}

/// Tool names, era and per-request timeout of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Name of the ingest tool (`upstream.ingest_tool`).
    pub ingest_tool: String,
    /// Name of the `edge_cursor` tool (`upstream.cursor_tool`).
    pub cursor_tool: String,
    /// Timeout of the session start and of each request.
    pub request_timeout: Duration,
    /// The era to negotiate.
    pub era: EraChoice,
}

/// Starts a session with `open` (one transport's session start) as `config.era` asks; when
/// that prefers the current era and the server answers -32022 listing only `initialize`
/// revisions, starts another with `initialize`. Both transports negotiate here.
///
/// # Errors
/// The last start's [`UplinkError`].
pub async fn negotiate<F, Fut>(config: SessionConfig, open: F) -> Result<Session, UplinkError>
where
    F: Fn(SessionConfig) -> Fut,
    Fut: Future<Output = Result<Session, UplinkError>>,
{
    let prefer_current = config.era == EraChoice::PreferCurrent;
    match open(config.clone()).await {
        Err(e) if prefer_current && e.offers_legacy() => {
            log::debug!(error:% = e; "the upstream serves only the initialize era; initializing");
            let legacy = SessionConfig {
                era: EraChoice::Legacy,
                ..config
            };
            open(legacy).await
        }
        other => other,
    }
}

/// The relay's client parameters: `clientInfo.name = "edge-relay"`, no
/// capabilities; `protocolVersion` is the newest `initialize` revision, for the legacy era.
pub fn client_info() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new(CLIENT_NAME, env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

/// What a session start agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The protocol version, e.g. `2026-07-28` or `2025-11-25`.
    pub version: String,
    /// True for the current era (MCP 2026-07-28 and later: `server/discover`, per-request
    /// `_meta`, no session); false for the `initialize` era.
    pub current_era: bool,
    /// The server's `serverInfo` as `name version`.
    pub server: String,
}

impl Negotiated {
    /// `current` or `legacy`, with how that era starts.
    pub fn era(&self) -> &'static str {
        if self.current_era {
            "current (server/discover, no session)"
        } else {
            "legacy (initialize, session)"
        }
    }
}

/// rmcp's lifecycle for `era`, and the revisions it offers (for error messages).
fn lifecycle(era: EraChoice) -> (ClientLifecycleMode, Vec<ProtocolVersion>) {
    let current = vec![ProtocolVersion::V_2026_07_28];
    match era {
        EraChoice::PreferCurrent => (
            ClientLifecycleMode::Auto {
                preferred_versions: current.clone(),
                legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
            },
            current,
        ),
        EraChoice::Current => (
            ClientLifecycleMode::Discover {
                preferred_versions: current.clone(),
            },
            current,
        ),
        EraChoice::Legacy => (
            ClientLifecycleMode::Initialize,
            vec![ProtocolVersion::LATEST_WITH_INITIALIZE],
        ),
    }
}

/// One open MCP client session. Dropping it abandons the session; prefer [`Session::close`].
pub struct Session {
    client: RunningService<RoleClient, ClientConfig>,
    config: SessionConfig,
    read: ReadTransportError,
    goodbye: Option<JoinHandle<()>>,
}

impl Session {
    /// Starts a session over `transport` in `config.era` (`server/discover` and/or
    /// `initialize`, rmcp's client lifecycles), within the request timeout. `read` is the
    /// transport's reading of its own errors (session expiry, `Retry-After`).
    ///
    /// # Errors
    /// [`UplinkError::Timeout`], [`UplinkError::Unsupported`] (-32022: the server serves
    /// none of the revisions offered) or [`UplinkError::Connect`].
    pub async fn start<T, E, A>(
        transport: T,
        config: SessionConfig,
        read: ReadTransportError,
    ) -> Result<Self, UplinkError>
    where
        T: rmcp::transport::IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let timeout = config.request_timeout;
        let (mode, asked) = lifecycle(config.era);
        let start = client_info().serve_with_lifecycle(transport, mode);
        let client = tokio::time::timeout(timeout, start)
            .await
            .map_err(|_| UplinkError::Timeout {
                what: "the session start (server/discover or initialize)".into(),
                after: timeout,
            })?
            .map_err(|e| start_error(e, &asked, read))?;
        Ok(Self {
            client,
            config,
            read,
            goodbye: None,
        })
    }

    /// Makes [`Session::close`] wait (within [`CLOSE_TIMEOUT`]) for `task`, the transport's
    /// own goodbye (MQTT: `notifications/disconnected` and DISCONNECT).
    pub fn with_goodbye(mut self, task: JoinHandle<()>) -> Self {
        self.goodbye = Some(task);
        self
    }

    /// Server name and version (`serverInfo`), for logs.
    pub fn server_name(&self) -> String {
        self.client
            .peer_info()
            .and_then(|info| {
                let imp = info.server_info.as_ref()?;
                Some(format!("{} {}", imp.name, imp.version))
            })
            .unwrap_or_else(|| "unknown server".into())
    }

    /// The negotiated protocol version and era, and the server's name.
    pub fn negotiated(&self) -> Negotiated {
        let version = self.client.peer_info().map(|i| i.protocol_version.clone());
        Negotiated {
            current_era: version.as_ref().is_some_and(|v| !v.has_initialize()),
            version: version.map_or_else(|| "unknown".into(), |v| v.to_string()),
            server: self.server_name(),
        }
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
            .map_err(|e| service_error("tools/list", e, self.read))
    }

    /// `edge_cursor`: the upstream's acked seq for this stream.
    ///
    /// # Errors
    /// Any [`UplinkError`].
    pub async fn cursor(&self, args: &CursorArgs) -> Result<Ack, UplinkError> {
        self.call(&self.config.cursor_tool, args).await
    }

    /// `edge_ingest`: delivers a batch; the answer's `acked_seq` is the only thing that may
    /// advance the acked seq (docs/DESIGN.md §8).
    ///
    /// # Errors
    /// Any [`UplinkError`]; after an error the batch may or may not be stored upstream.
    pub async fn ingest(&self, args: &IngestArgs) -> Result<Ack, UplinkError> {
        self.call(&self.config.ingest_tool, args).await
    }

    /// `edge_ingest` of a batch as the outbox stores it ([`IngestBatch::arguments`]); `packed`
    /// sends its events as `events_zstd` (only to an upstream that [`Session::offers_packed`]).
    ///
    /// # Errors
    /// As [`Session::ingest`]; [`UplinkError::Malformed`] for a stored line that is not JSON.
    pub async fn ingest_batch(
        &self,
        batch: &IngestBatch,
        packed: bool,
    ) -> Result<Ack, UplinkError> {
        let tool = &self.config.ingest_tool;
        let arguments = batch
            .arguments(packed)
            .map_err(|e| UplinkError::Malformed {
                tool: tool.clone(),
                reason: format!("a stored event is not JSON: {e}"),
            })?;
        self.call_with(tool, arguments).await
    }

    /// Whether the ingest tool's `inputSchema` lists `events_zstd` (one `tools/list`).
    ///
    /// # Errors
    /// Any [`UplinkError`] of the listing.
    pub async fn offers_packed(&self) -> Result<bool, UplinkError> {
        let tools = self.list_tools().await?;
        Ok(tools.iter().any(|tool| {
            tool.name == self.config.ingest_tool.as_str()
                && tool
                    .input_schema
                    .get("properties")
                    .and_then(|p| p.get(EVENTS_ZSTD))
                    .is_some()
        }))
    }

    async fn call(&self, tool: &str, args: &impl Serialize) -> Result<Ack, UplinkError> {
        match serde_json::to_value(args) {
            Ok(serde_json::Value::Object(map)) => self.call_with(tool, map).await,
            other => Err(UplinkError::Malformed {
                tool: tool.into(),
                reason: format!("arguments did not encode as a JSON object: {other:?}"),
            }),
        }
    }

    async fn call_with(
        &self,
        tool: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Ack, UplinkError> {
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        let timeout = self.config.request_timeout;
        let result = tokio::time::timeout(timeout, self.client.peer().call_tool(params))
            .await
            .map_err(|_| UplinkError::Timeout {
                what: format!("the answer to {tool}"),
                after: timeout,
            })?
            .map_err(|e| service_error(tool, e, self.read))?;
        parse_ack(tool, result)
    }

    /// Ends the session politely within [`CLOSE_TIMEOUT`]: HTTP legacy era `DELETE` of the
    /// session (the current era has none), MQTT `notifications/disconnected` and DISCONNECT.
    pub async fn close(mut self) {
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        if let Err(e) = self.client.close_with_timeout(CLOSE_TIMEOUT).await {
            log::debug!(error:% = e; "closing the upstream session");
        }
        if let Some(goodbye) = self.goodbye.take()
            && tokio::time::timeout_at(deadline, goodbye).await.is_err()
        {
            log::warn!("the upstream session's goodbye did not finish within {CLOSE_TIMEOUT:?}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ContentBlock;
    use serde_json::json;

    #[test]
    fn reads_the_ack_and_refuses_broken_answers() {
        let ok = CallToolResult::structured(json!({"acked_seq": 7, "acked_id": null}));
        assert_eq!(parse_ack("t", ok).unwrap().acked_seq_or_zero(), 7);
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
