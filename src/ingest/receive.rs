//! Receiving a `POST /v1/events` body within its byte budgets: size, read time, memory.
//!
//! Design: no slot is held while a body arrives, so slow producers delay only themselves.
//! Memory is bounded by two byte budgets instead: `held` counts the bytes of every body in
//! memory (arriving, waiting, parsed, being committed) and refuses at once when exhausted
//! (waiting there could deadlock half-received bodies); `parsing` bounds the memory of bodies
//! expanded into JSON values at once, estimated from their size and value count (a body of
//! one-digit numbers grows ~16x, one of long strings hardly), and makes them queue.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest a client may take to send a request body, from the end of its headers.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Bodies of `max_body_bytes` that may be in memory at once (the `held` budget).
pub const HELD_BODIES: usize = 16;
/// Estimated bytes of parsed bodies in memory at once (the `parsing` budget); a body whose
/// estimate is larger waits until it can be parsed alone.
pub const PARSE_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Estimated bytes a parsed JSON value takes besides its text (a `serde_json::Value` is 32).
const BYTES_PER_VALUE: usize = 32;

/// Budgets are counted in KiB so that any `max_body_bytes` fits a semaphore's `u32` permits.
const UNIT: usize = 1024;

fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// Why a body was not received. Nothing of it is stored.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Declared or sent more than `max_body_bytes` (HTTP 413).
    #[error("body exceeds {limit} bytes (ingest.http.max_body_bytes)")]
    TooLarge {
        /// `ingest.http.max_body_bytes`.
        limit: usize,
    },
    /// Not fully sent within [`BODY_READ_TIMEOUT`] (HTTP 408).
    #[error("request body not received within {BODY_READ_TIMEOUT:?}")]
    Timeout,
    /// Other bodies fill the memory budget (HTTP 503; retry with the same ids).
    #[error("ingest busy: {budget} bytes of request bodies already in memory; retry shortly")]
    Busy {
        /// The `held` budget, bytes.
        budget: usize,
    },
    /// The connection failed mid-body (HTTP 400).
    #[error("reading body: {0}")]
    Read(#[from] hyper::Error),
}

/// A received body and its share of the `held` budget (returned when dropped).
pub struct Received {
    /// The body bytes.
    pub bytes: Vec<u8>,
    _held: Option<OwnedSemaphorePermit>,
}

/// The two byte budgets of one ingest endpoint; clones share them.
#[derive(Clone)]
pub struct BodyBudget {
    max_body_bytes: usize,
    held: Arc<Semaphore>,
    held_bytes: usize,
    parsing: Arc<Semaphore>,
    parse_bytes: usize,
}

impl BodyBudget {
    /// Budgets for bodies of at most `max_body_bytes`: [`HELD_BODIES`] of them in memory,
    /// [`PARSE_BUDGET_BYTES`] of parsed values at once.
    pub fn new(max_body_bytes: usize) -> Self {
        let held_bytes = max_body_bytes.saturating_mul(HELD_BODIES);
        let parse_bytes = PARSE_BUDGET_BYTES;
        Self {
            max_body_bytes,
            held: Arc::new(Semaphore::new(units(held_bytes) as usize)),
            held_bytes,
            parsing: Arc::new(Semaphore::new(units(parse_bytes) as usize)),
            parse_bytes,
        }
    }

    /// `max_body_bytes`.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The `parsing` budget, bytes.
    pub fn parse_bytes(&self) -> usize {
        self.parse_bytes
    }

    /// Refuses a declared `Content-Length` above the limit before any of the body is read.
    ///
    /// # Errors
    /// [`ReceiveError::TooLarge`].
    pub fn check_declared(&self, declared: Option<u64>) -> Result<(), ReceiveError> {
        match declared {
            Some(n) if n > self.max_body_bytes as u64 => Err(ReceiveError::TooLarge {
                limit: self.max_body_bytes,
            }),
            _ => Ok(()),
        }
    }

    /// Reads the whole body within [`BODY_READ_TIMEOUT`], taking `held` budget as bytes arrive.
    ///
    /// # Errors
    /// Any [`ReceiveError`].
    pub async fn receive(
        &self,
        body: Incoming,
        declared: Option<u64>,
    ) -> Result<Received, ReceiveError> {
        self.check_declared(declared)?;
        tokio::time::timeout(BODY_READ_TIMEOUT, self.read(body, declared))
            .await
            .map_err(|_| ReceiveError::Timeout)?
    }

    async fn read(
        &self,
        mut body: Incoming,
        declared: Option<u64>,
    ) -> Result<Received, ReceiveError> {
        let capacity = declared.map_or(0, |n| n as usize);
        let mut received = Received {
            bytes: Vec::with_capacity(capacity),
            _held: None,
        };
        let mut held_units = 0u32;
        while let Some(frame) = body.frame().await {
            let Ok(chunk) = frame?.into_data() else {
                continue;
            };
            let len = received.bytes.len() + chunk.len();
            if len > self.max_body_bytes {
                return Err(ReceiveError::TooLarge {
                    limit: self.max_body_bytes,
                });
            }
            let more = units(len) - held_units;
            if more > 0 {
                let permit = self
                    .held
                    .clone()
                    .try_acquire_many_owned(more)
                    .map_err(|_| ReceiveError::Busy {
                        budget: self.held_bytes,
                    })?;
                match &mut received._held {
                    Some(held) => held.merge(permit),
                    none => *none = Some(permit),
                }
                held_units += more;
            }
            received.bytes.extend_from_slice(&chunk);
        }
        Ok(received)
    }

    /// Waits (FIFO) for `parsing` budget for `body` ([`parse_cost`], at most the whole
    /// budget); hold it until the parsed events are committed or dropped. `None` only if the
    /// budget was closed.
    pub async fn parse_slot(&self, body: &[u8]) -> Option<OwnedSemaphorePermit> {
        let need = units(parse_cost(body).min(self.parse_bytes)).max(1);
        self.parsing.clone().acquire_many_owned(need).await.ok()
    }
}

/// Estimated bytes `body` takes once parsed: its text plus `BYTES_PER_VALUE` per value
/// (counted by separators and openers, strings included, so it errs high).
pub fn parse_cost(body: &[u8]) -> usize {
    let values = body
        .iter()
        .filter(|b| matches!(b, b',' | b':' | b'[' | b'{'))
        .count();
    body.len() + values * BYTES_PER_VALUE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_length_over_the_limit_is_refused_before_reading() {
        let budget = BodyBudget::new(1000);
        assert!(budget.check_declared(Some(1000)).is_ok());
        assert!(budget.check_declared(None).is_ok());
        let err = budget.check_declared(Some(1001)).unwrap_err();
        assert!(
            matches!(err, ReceiveError::TooLarge { limit: 1000 }),
            "{err}"
        );
    }

    #[test]
    fn many_small_values_cost_more_than_their_text() {
        assert_eq!(parse_cost(b"\"long text\""), 11);
        assert_eq!(parse_cost(b"[1,2,3]"), 7 + 3 * BYTES_PER_VALUE);
    }

    #[tokio::test]
    async fn parse_slots_queue_by_bytes() {
        let budget = BodyBudget::new(1024);
        let half = vec![b' '; PARSE_BUDGET_BYTES / 2];
        let a = budget.parse_slot(&half).await.unwrap();
        let b = budget.parse_slot(&half).await.unwrap();
        let third = budget.parse_slot(b"1");
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending(), "budget spent");
        drop(a);
        assert!(third.await.is_some());
        drop(b);
    }
}
