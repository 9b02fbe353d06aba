//! What the bench reads off the machine (RSS, write_bytes, disk use), its goal table and the
//! plain-file fdatasync floor.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use edge_relay::event::{Event, NewEvent, now_rfc3339};

use super::*;

/// A `/proc/<pid>/status` field in MiB (0 when unreadable).
pub(crate) fn proc_status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0) as f64
        / 1024.0
}

/// `write_bytes` of `/proc/<pid>/io`: bytes the process caused to be written to the block
/// layer, from its start (0 when unreadable).
pub(crate) fn write_bytes(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the VmHWM of process `pid` (`"self"` for this one) to its current RSS (Linux >= 4.0);
/// false if not supported or not permitted.
pub(crate) fn reset_peak_rss(pid: &str) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Size of a directory tree: file lengths, and allocated blocks as `du` counts them
/// (directories included).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DiskUse {
    pub(crate) apparent: u64,
    pub(crate) allocated: u64,
}

impl DiskUse {
    pub(crate) fn of(dir: &Path) -> Self {
        let mut total = DiskUse::default();
        if let Ok(m) = std::fs::symlink_metadata(dir) {
            total.allocated += m.blocks() * 512;
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => {
                    let sub = DiskUse::of(&entry.path());
                    total.apparent += sub.apparent;
                    total.allocated += sub.allocated;
                }
                Ok(m) => {
                    total.apparent += m.len();
                    total.allocated += m.blocks() * 512;
                }
                Err(_) => {}
            }
        }
        total
    }

    /// The larger of the two: what the goals are checked against.
    pub(crate) fn worst(&self) -> u64 {
        self.apparent.max(self.allocated)
    }
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn per(bytes: u64, events: u64) -> f64 {
    bytes as f64 / events.max(1) as f64
}

/// Figures with their goals, printed as they are measured and again as a table at the end.
#[derive(Default)]
pub(crate) struct Goals(Vec<[String; 4]>);

impl Goals {
    /// Prints `figure: measured detail (goal ...)` and keeps the row without the detail;
    /// `met` is `None` without a goal.
    pub(crate) fn add(
        &mut self,
        figure: &str,
        measured: String,
        detail: &str,
        goal: &str,
        met: Option<bool>,
    ) {
        let verdict = match met {
            Some(true) => ": met",
            Some(false) => ": NOT met",
            None => "",
        };
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" {detail}")
        };
        if goal.is_empty() {
            println!("{figure}: {measured}{detail}");
        } else {
            println!("{figure}: {measured}{detail} (goal {goal}{verdict})");
        }
        let met = met.map_or("", |m| if m { "yes" } else { "no" });
        self.0
            .push([figure.into(), measured, goal.into(), met.into()]);
    }

    pub(crate) fn print(&self) {
        let width = |i: usize| {
            self.0
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (w0, w1, w2) = (width(0), width(1), width(2).max(4));
        println!(
            "{:<w0$} | {:<w1$} | {:<w2$} | met",
            "figure", "measured", "goal"
        );
        println!("{}", "-".repeat(w0 + w1 + w2 + 12));
        for [figure, measured, goal, met] in &self.0 {
            println!("{figure:<w0$} | {measured:<w1$} | {goal:<w2$} | {met}");
        }
    }
}

/// One run of the plain-file floor.
pub(crate) struct Floor {
    pub(crate) group: usize,
    pub(crate) events: u64,
    /// Bytes appended: each event's stored JSON and a newline.
    pub(crate) bytes: u64,
    /// Time spent in `write` + `fdatasync` (encoding the events is not counted).
    pub(crate) took: Duration,
    pub(crate) written: u64,
    pub(crate) sync_median: Duration,
    pub(crate) sync_p99: Duration,
}

impl Floor {
    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.took.as_secs_f64()
    }

    pub(crate) fn encoded(&self) -> f64 {
        per(self.bytes - self.events, self.events)
    }
}

/// Appends the stored form of `n` events (built as the outbox builds them: a fresh UUIDv7 id,
/// seq, the gateway's clock as time) to a new file in `dir`, one `fdatasync` per `group` events;
/// the floor any durable store pays for the same bytes and the same acknowledgement promise.
pub(crate) fn floor(dir: &Path, lines: &Lines, n: usize, group: usize) -> Floor {
    let max_event_bytes = edge_relay::event::DEFAULT_MAX_EVENT_BYTES;
    let path = dir.join(format!("floor-{group}.ndjson"));
    let mut file = std::fs::File::create(&path).expect("create floor file");
    let templates: Vec<NewEvent> = (0..lines.count())
        .map(|i| {
            let value = serde_json::from_str(lines.line(i)).expect("recording line");
            NewEvent::from_json(value, max_event_bytes).expect("recording event")
        })
        .collect();
    let written = write_bytes("self");
    let (mut took, mut bytes) = (Duration::ZERO, 0u64);
    let mut syncs = Vec::with_capacity(n.div_ceil(group));
    let mut buf = Vec::with_capacity(group * 256);
    for first in (0..n).step_by(group) {
        buf.clear();
        for i in first..(first + group).min(n) {
            let t = &templates[i % templates.len()];
            let event = Event {
                id: t.id.unwrap_or_else(uuid::Uuid::now_v7),
                seq: i as u64 + 1,
                source: t.source.clone(),
                kind: t.kind.clone(),
                time: t.time.clone().unwrap_or_else(now_rfc3339),
                data: t.data.clone(),
            };
            serde_json::to_writer(&mut buf, &event).expect("encode");
            buf.push(b'\n');
        }
        let start = Instant::now();
        file.write_all(&buf).expect("append to the floor file");
        let synced = Instant::now();
        file.sync_data().expect("fdatasync the floor file");
        syncs.push(synced.elapsed());
        took += start.elapsed();
        bytes += buf.len() as u64;
    }
    let written = write_bytes("self") - written;
    drop(file);
    std::fs::remove_file(&path).expect("remove the floor file");
    syncs.sort();
    Floor {
        group,
        events: n as u64,
        bytes,
        took,
        written,
        sync_median: syncs[syncs.len() / 2],
        sync_p99: syncs[syncs.len() * 99 / 100],
    }
}
