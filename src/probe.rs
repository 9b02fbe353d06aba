//! `edge-relay probe`: initialize against the configured upstream, list its tools, check them
//! against the contract (DESIGN §2), and read this gateway's cursor.

use std::fmt::Write as _;

use anyhow::Context;
use serde_json::Value;
use uuid::Uuid;

use crate::config::Config;
use crate::contract::CursorArgs;
use crate::uplink::SessionConfig;

/// Arguments each tool's input schema must declare (DESIGN §2).
pub const INGEST_ARGS: [&str; 3] = ["gateway", "stream", "events"];
/// Arguments of the cursor tool.
pub const CURSOR_ARGS: [&str; 2] = ["gateway", "stream"];

/// Names in `want` missing from a JSON schema's `properties`.
pub fn missing_properties(schema: &serde_json::Map<String, Value>, want: &[&str]) -> Vec<String> {
    let props = schema.get("properties").and_then(Value::as_object);
    want.iter()
        .filter(|name| props.is_none_or(|p| !p.contains_key(**name)))
        .map(|name| (*name).to_owned())
        .collect()
}

/// Runs the probe; returns the report text. `stream` is this gateway's stream, when known.
///
/// # Errors
/// Connecting fails, or the upstream does not meet the contract (the message lists every
/// problem found).
pub async fn probe(config: &Config, stream: Option<Uuid>) -> anyhow::Result<String> {
    let connector = crate::build_connector(config)?;
    let session_config = SessionConfig {
        ingest_tool: config.upstream.ingest_tool.clone(),
        cursor_tool: config.upstream.cursor_tool.clone(),
        request_timeout: config.relay.request_timeout(),
    };
    let mut out = String::new();
    let session = connector
        .connect(session_config)
        .await
        .with_context(|| format!("connecting to {}", connector.describe()))?;
    let (version, server) = session.negotiated();
    let _ = writeln!(
        out,
        "upstream: {}\nserver: {server}\nprotocol version: {version}",
        connector.describe()
    );
    let tools = session.list_tools().await?;
    let mut problems = Vec::new();
    for (name, want) in [
        (&config.upstream.ingest_tool, &INGEST_ARGS[..]),
        (&config.upstream.cursor_tool, &CURSOR_ARGS[..]),
    ] {
        match tools.iter().find(|t| t.name == name.as_str()) {
            None => problems.push(format!("tool {name:?} is missing")),
            Some(tool) => {
                let missing = missing_properties(&tool.input_schema, want);
                if missing.is_empty() {
                    let _ = writeln!(out, "tool {name}: ok");
                } else {
                    problems.push(format!(
                        "tool {name:?} input schema lacks {}",
                        missing.join(", ")
                    ));
                }
                if let Some(output) = &tool.output_schema
                    && !missing_properties(output, &["acked_seq"]).is_empty()
                {
                    problems.push(format!("tool {name:?} output schema lacks acked_seq"));
                }
            }
        }
    }
    let others: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    let _ = writeln!(out, "tools offered: {}", others.join(", "));
    if problems.is_empty() {
        match stream {
            Some(stream) => {
                let ack = session
                    .cursor(&CursorArgs {
                        gateway: config.gateway_id.clone(),
                        stream,
                    })
                    .await?;
                let _ = writeln!(
                    out,
                    "cursor of gateway {} stream {stream}: acked_seq={} acked_id={}",
                    config.gateway_id,
                    ack.acked_seq.map_or("null".into(), |s| s.to_string()),
                    ack.acked_id.map_or("null".into(), |s| s.to_string())
                );
            }
            None => {
                let _ = writeln!(out, "cursor: no outbox stream yet (start the daemon once)");
            }
        }
    }
    session.close().await;
    if problems.is_empty() {
        out.push_str("contract: ok\n");
        Ok(out)
    } else {
        anyhow::bail!("{out}contract NOT met:\n  - {}", problems.join("\n  - "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_missing_schema_properties() {
        let schema = json!({"type":"object","properties":{"gateway":{},"stream":{}}});
        let schema = schema.as_object().unwrap();
        assert!(missing_properties(schema, &CURSOR_ARGS).is_empty());
        assert_eq!(missing_properties(schema, &INGEST_ARGS), ["events"]);
        assert_eq!(missing_properties(&serde_json::Map::new(), &["a"]), ["a"]);
    }
}
