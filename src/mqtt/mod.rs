//! MCP over MQTT plumbing shared by the uplink, the reference upstream and the local ingest.

pub mod link;
pub mod topics;
pub mod transport;
