//! Topic names and user properties of MCP over MQTT (mqtt-ai/mcp-over-mqtt, basic/mqtt_transport.md,
//! commit cd3a13a of 2025-08-05, §Topics and §User Properties). No I/O.

/// User property on CONNECT and every PUBLISH: `mcp-client` or `mcp-server`.
pub const COMPONENT_TYPE: &str = "MCP-COMPONENT-TYPE";
/// User property on CONNECT: a JSON object describing the component.
pub const META: &str = "MCP-META";
/// User property on every PUBLISH: the sender's MQTT client id.
pub const MQTT_CLIENT_ID: &str = "MCP-MQTT-CLIENT-ID";
/// CONNACK user property: the broker-suggested server name (servers must use it).
pub const SERVER_NAME: &str = "MCP-SERVER-NAME";
/// CONNACK user property: JSON array of server-name filters a client must use.
pub const SERVER_NAME_FILTERS: &str = "MCP-SERVER-NAME-FILTERS";
/// `MCP-COMPONENT-TYPE` of a client.
pub const CLIENT: &str = "mcp-client";
/// `MCP-COMPONENT-TYPE` of a server.
pub const SERVER: &str = "mcp-server";

/// `notifications/disconnected`, sent on a client's presence topic (also its last will) and on
/// the RPC topic when either side ends a session.
pub const DISCONNECTED: &str = r#"{"jsonrpc":"2.0","method":"notifications/disconnected"}"#;

/// Retained server presence: `$mcp-server/presence/{server-id}/{server-name}`.
pub fn server_presence(server_id: &str, server_name: &str) -> String {
    format!("$mcp-server/presence/{server_id}/{server_name}")
}

/// Discovery filter: `$mcp-server/presence/+/{server-name-filter}`.
pub fn presence_filter(server_name_filter: &str) -> String {
    format!("$mcp-server/presence/+/{server_name_filter}")
}

/// Server control topic, where `initialize` goes: `$mcp-server/{server-id}/{server-name}`.
pub fn server_control(server_id: &str, server_name: &str) -> String {
    format!("$mcp-server/{server_id}/{server_name}")
}

/// Server capability-change topic: `$mcp-server/capability/{server-id}/{server-name}`.
pub fn server_capability(server_id: &str, server_name: &str) -> String {
    format!("$mcp-server/capability/{server_id}/{server_name}")
}

/// Client presence (and last will): `$mcp-client/presence/{mcp-client-id}`.
pub fn client_presence(client_id: &str) -> String {
    format!("$mcp-client/presence/{client_id}")
}

/// Client capability-change topic: `$mcp-client/capability/{mcp-client-id}`.
pub fn client_capability(client_id: &str) -> String {
    format!("$mcp-client/capability/{client_id}")
}

/// RPC topic of one session: `$mcp-rpc/{mcp-client-id}/{server-id}/{server-name}`.
pub fn rpc(client_id: &str, server_id: &str, server_name: &str) -> String {
    format!("$mcp-rpc/{client_id}/{server_id}/{server_name}")
}

/// `(server-id, server-name)` of a presence topic; the name is everything after the id.
pub fn parse_presence(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("$mcp-server/presence/")?;
    let (id, name) = rest.split_once('/')?;
    (!id.is_empty() && !name.is_empty()).then_some((id, name))
}

/// `mcp-client-id` of an RPC topic (`$mcp-rpc/{client}/{server-id}/{name}`).
pub fn parse_rpc_client(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("$mcp-rpc/")?;
    rest.split('/').next().filter(|c| !c.is_empty())
}

/// `mcp-client-id` of a client presence topic.
pub fn parse_client_presence(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("$mcp-client/presence/")
        .filter(|c| !c.is_empty() && !c.contains('/'))
}

/// Checks an id used in a topic level: not empty, none of `/`, `+`, `#` (spec §Terminology).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', '+', '#'])
}

/// Checks a server name: hierarchical with `/`, no wildcards, no leading or trailing `/`.
pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['+', '#'])
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_topics() {
        assert_eq!(
            server_presence("s1", "edge/ingest"),
            "$mcp-server/presence/s1/edge/ingest"
        );
        assert_eq!(
            parse_presence("$mcp-server/presence/s1/edge/ingest"),
            Some(("s1", "edge/ingest"))
        );
        assert_eq!(parse_presence("$mcp-server/presence/s1"), None);
        assert_eq!(presence_filter("edge/#"), "$mcp-server/presence/+/edge/#");
        assert_eq!(
            server_control("s1", "edge/ingest"),
            "$mcp-server/s1/edge/ingest"
        );
        let rpc_topic = rpc("c9", "s1", "edge/ingest");
        assert_eq!(rpc_topic, "$mcp-rpc/c9/s1/edge/ingest");
        assert_eq!(parse_rpc_client(&rpc_topic), Some("c9"));
        assert_eq!(parse_client_presence(&client_presence("c9")), Some("c9"));
        assert_eq!(client_capability("c9"), "$mcp-client/capability/c9");
        assert_eq!(
            server_capability("s1", "a/b"),
            "$mcp-server/capability/s1/a/b"
        );
    }

    #[test]
    fn validates_ids_and_names() {
        assert!(valid_id("edge-relay-0193"));
        assert!(!valid_id("a/b") && !valid_id("a+") && !valid_id(""));
        assert!(valid_server_name("edge/ingest") && valid_server_name("ingest"));
        assert!(
            !valid_server_name("edge/#")
                && !valid_server_name("/edge")
                && !valid_server_name("a//b")
        );
    }
}
