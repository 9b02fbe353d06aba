//! Local producers: HTTP ingest and its body parsing.

pub mod body;
pub mod http;
