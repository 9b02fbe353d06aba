//! The contract check of an upstream's tools (docs/DESIGN.md §3): what `probe` prints, and what `run`
//! reports when a tool call is refused.

use rmcp::model::Tool;
use serde_json::Value;

use super::error::UplinkError;
use super::session::{Session, SessionConfig};

/// Arguments the ingest tool's input schema must declare.
pub const INGEST_ARGS: [&str; 3] = ["gateway", "stream", "events"];
/// Arguments the `edge_cursor` tool's input schema must declare.
pub const CURSOR_ARGS: [&str; 2] = ["gateway", "stream"];

/// Names in `want` missing from a JSON schema's `properties`.
pub fn missing_properties(schema: &serde_json::Map<String, Value>, want: &[&str]) -> Vec<String> {
    let props = schema.get("properties").and_then(Value::as_object);
    want.iter()
        .filter(|name| props.is_none_or(|p| !p.contains_key(**name)))
        .map(|name| (*name).to_owned())
        .collect()
}

/// A server's tools held against the contract.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// Contract tools found with every argument (names).
    pub ok: Vec<String>,
    /// One sentence per problem: `tool edge_cursor is missing`, `edge_ingest has no `events`
    /// argument`, `edge_ingest's output schema has no `acked_seq``. Empty: the contract is met.
    pub problems: Vec<String>,
    /// Every tool the server offers, in its order.
    pub offered: Vec<String>,
}

impl Diagnosis {
    /// Checks `tools` for the ingest and `edge_cursor` tools named in `config`.
    pub fn of(tools: &[Tool], config: &SessionConfig) -> Self {
        let mut diagnosis = Diagnosis {
            offered: tools.iter().map(|t| t.name.to_string()).collect(),
            ..Self::default()
        };
        for (name, want) in [
            (&config.ingest_tool, &INGEST_ARGS[..]),
            (&config.cursor_tool, &CURSOR_ARGS[..]),
        ] {
            let Some(tool) = tools.iter().find(|t| t.name == name.as_str()) else {
                diagnosis.problems.push(format!("tool {name} is missing"));
                continue;
            };
            let missing = missing_properties(&tool.input_schema, want);
            for arg in &missing {
                diagnosis
                    .problems
                    .push(format!("{name} has no `{arg}` argument"));
            }
            if let Some(output) = &tool.output_schema
                && !missing_properties(output, &["acked_seq"]).is_empty()
            {
                let problem = format!("{name}'s output schema has no `acked_seq`");
                diagnosis.problems.push(problem);
            } else if missing.is_empty() {
                diagnosis.ok.push(name.clone());
            }
        }
        diagnosis
    }

    /// Lists the tools of `session` (`tools/list`) and checks them.
    ///
    /// # Errors
    /// `tools/list` failed.
    pub async fn of_session(
        session: &Session,
        config: &SessionConfig,
    ) -> Result<Self, UplinkError> {
        Ok(Self::of(&session.list_tools().await?, config))
    }

    /// The problems as one line: `upstream lacks the contract: tool edge_cursor is missing;
    /// ...`; `None` when the contract is met.
    pub fn summary(&self) -> Option<String> {
        (!self.problems.is_empty())
            .then(|| format!("upstream lacks the contract: {}", self.problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn tool(name: &str, props: Value) -> Tool {
        let schema = json!({"type": "object", "properties": props});
        Tool::new(
            name.to_owned(),
            "",
            Arc::new(schema.as_object().unwrap().clone()),
        )
    }

    #[test]
    fn finds_missing_schema_properties() {
        let schema = json!({"type":"object","properties":{"gateway":{},"stream":{}}});
        let schema = schema.as_object().unwrap();
        assert!(missing_properties(schema, &CURSOR_ARGS).is_empty());
        assert_eq!(missing_properties(schema, &INGEST_ARGS), ["events"]);
        assert_eq!(missing_properties(&serde_json::Map::new(), &["a"]), ["a"]);
    }

    #[test]
    fn names_each_problem_once() {
        let config = SessionConfig {
            ingest_tool: "edge_ingest".into(),
            cursor_tool: "edge_cursor".into(),
            request_timeout: std::time::Duration::from_secs(1),
            era: Default::default(),
        };
        let tools = [tool("edge_ingest", json!({"gateway": {}, "stream": {}}))];
        let d = Diagnosis::of(&tools, &config);
        assert_eq!(
            d.problems,
            [
                "edge_ingest has no `events` argument",
                "tool edge_cursor is missing"
            ]
        );
        assert_eq!(
            d.summary().unwrap(),
            "upstream lacks the contract: edge_ingest has no `events` argument; tool edge_cursor is missing"
        );
        let full = json!({"gateway": {}, "stream": {}, "events": {}});
        let tools = [
            tool("edge_ingest", full),
            tool("edge_cursor", json!({"gateway": {}, "stream": {}})),
        ];
        let d = Diagnosis::of(&tools, &config);
        assert!(d.summary().is_none(), "{d:?}");
        assert_eq!(d.ok, ["edge_ingest", "edge_cursor"]);
    }
}
