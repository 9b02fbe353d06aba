//! Local producers: HTTP ingest and its body parsing, MQTT ingest from the gateway's broker.

pub mod admit;
pub mod body;
pub mod http;
pub mod mqtt;
pub mod numbers;
pub mod receive;
