//! The process as a systemd service: signals, logs, the notify protocol and the watchdog.
//!
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token (a second signal exits at once).
//! - [`logging`]: journald with structured fields, or stderr.
//! - [`systemd`]: sd_notify `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`.
//! - [`heartbeat`]: progress heartbeats of the relay and writer loops, the watchdog's verdict.

pub mod heartbeat;
pub mod logging;
pub mod shutdown;
pub mod systemd;
