//! What the [`Outbox`](super::Outbox) handle asks of the single writer task, and its answers.

use tokio::sync::oneshot;
use uuid::Uuid;

use super::encoded::Encoded;
use super::error::OutboxError;

/// Bound of the writer's command queue; producers wait (backpressure) when it is full.
pub const COMMAND_QUEUE: usize = 1024;

/// Answer to a committed append: seqs and ids in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// `(seq, id)` per submitted event; a repeated `id` yields its original seq.
    pub assigned: Vec<(u64, Uuid)>,
}

/// A request to the writer, with the channel of its answer.
pub(super) enum Command {
    Append {
        events: Vec<Encoded>,
        reply: oneshot::Sender<Result<Appended, OutboxError>>,
    },
    Ack {
        upto: u64,
        reply: oneshot::Sender<Result<(), OutboxError>>,
    },
    Progress {
        acked: Option<u64>,
        sent: u64,
        reply: oneshot::Sender<Result<(), OutboxError>>,
    },
}
