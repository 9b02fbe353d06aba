//! The relay's answer to a producer's accepted `POST /v1/events`: which seqs the events got.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Body of a `200` to `POST /v1/events`: `{"accepted": n, "first_seq": a, "last_seq": b,
/// "seqs": [...], "ids": [...]}`.
///
/// The events are committed (fsynced in the outbox) when this is sent. `seqs[i]` and `ids[i]`
/// belong to the body's `i`-th event; a retried event (same `id`) answers its original seq, so
/// `seqs` is not necessarily contiguous or increasing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestAnswer {
    /// Number of events in the body (all of them: a body is committed whole or not at all).
    pub accepted: usize,
    /// Lowest of `seqs`; `null` for an empty body.
    pub first_seq: Option<u64>,
    /// Highest of `seqs`; `null` for an empty body.
    pub last_seq: Option<u64>,
    /// The seq of each event, in body order (seqs start at 1).
    pub seqs: Vec<u64>,
    /// The id of each event, in body order: the producer's, or the one the relay assigned.
    pub ids: Vec<Uuid>,
}

impl IngestAnswer {
    /// The answer for events committed as `assigned` `(seq, id)` pairs, in body order.
    pub fn new(assigned: &[(u64, Uuid)]) -> Self {
        let seqs: Vec<u64> = assigned.iter().map(|(seq, _)| *seq).collect();
        Self {
            accepted: assigned.len(),
            first_seq: seqs.iter().min().copied(),
            last_seq: seqs.iter().max().copied(),
            ids: assigned.iter().map(|(_, id)| *id).collect(),
            seqs,
        }
    }

    /// The answer as JSON text, its keys in alphabetical order: the same bytes as
    /// `serde_json::to_value(self)` printed (whose map sorts keys), without building that
    /// `Value` (a string per id).
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Sorted<'a> {
            accepted: usize,
            first_seq: Option<u64>,
            ids: &'a [Uuid],
            last_seq: Option<u64>,
            seqs: &'a [u64],
        }
        let sorted = Sorted {
            accepted: self.accepted,
            first_seq: self.first_seq,
            ids: &self.ids,
            last_seq: self.last_seq,
            seqs: &self.seqs,
        };
        // Encoding numbers, uuids and options into memory cannot fail.
        serde_json::to_vec(&sorted).unwrap_or_default()
    }

    /// The `(seq, id)` pairs, in body order.
    ///
    /// # Errors
    /// `seqs` and `ids` differ in length (not an answer this relay sends).
    pub fn pairs(&self) -> Result<Vec<(u64, Uuid)>, String> {
        if self.seqs.len() != self.ids.len() {
            return Err(format!(
                "{} seqs but {} ids in the ingest answer",
                self.seqs.len(),
                self.ids.len()
            ));
        }
        Ok(self
            .seqs
            .iter()
            .copied()
            .zip(self.ids.iter().copied())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn wire_shape_round_trips() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let answer = IngestAnswer::new(&[(4, a), (3, b)]);
        let wire = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            wire,
            json!({"accepted": 2, "first_seq": 3, "last_seq": 4, "seqs": [4, 3], "ids": [a, b]})
        );
        let back: IngestAnswer = serde_json::from_value(wire).unwrap();
        assert_eq!(back.pairs().unwrap(), vec![(4, a), (3, b)]);
        let empty = serde_json::to_value(IngestAnswer::new(&[])).unwrap();
        assert_eq!(empty["first_seq"], serde_json::Value::Null);
        for answer in [answer, IngestAnswer::new(&[])] {
            let value = serde_json::to_value(&answer).unwrap().to_string();
            assert_eq!(String::from_utf8(answer.to_json()).unwrap(), value);
        }
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let mut answer = IngestAnswer::new(&[(1, Uuid::now_v7())]);
        answer.seqs.push(2);
        assert!(answer.pairs().unwrap_err().contains("2 seqs but 1 ids"));
    }
}
