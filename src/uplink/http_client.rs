//! TEMPORARY STUB (replaced by the real hyper client).
use std::time::Duration;
#[derive(Debug, Clone)]
pub struct HttpTimeouts { pub connect: Duration, pub response_headers: Duration }
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct HttpClientError;
#[derive(Clone)]
pub struct HyperHttpClient;
impl HyperHttpClient { pub fn new(_t: HttpTimeouts) -> Result<Self, HttpClientError> { Ok(Self) } }
