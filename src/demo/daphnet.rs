//! The embedded Daphnet recording (data/README.md) turned into producer events.

use serde_json::{Value, json};

/// The recording: Daphnet Freezing of Gait, subject 6 run 2, 64 Hz (CC BY 4.0, Bächlin et al. 2010).
pub const CSV: &str = include_str!("../../data/daphnet_S06R02E0.csv");
/// Sample rate of the recording, Hz.
pub const SAMPLE_HZ: f64 = 64.0;
/// Body locations, in CSV column order; each becomes a `sensor` source.
pub const LOCATIONS: [&str; 3] = ["ankle", "leg", "trunk"];

/// One CSV row: offset from the first sample and the events it produces.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Milliseconds since the first row (from the recording's own timestamps).
    pub offset_ms: u64,
    /// Producer events (JSON objects without `id`), 3 sensor events plus a tool event on an
    /// `is_anomaly` edge.
    pub events: Vec<Value>,
}

/// Parses the embedded recording.
///
/// # Errors
/// A malformed row, with its line number.
pub fn samples() -> Result<Vec<Sample>, String> {
    parse(CSV)
}

fn parse(csv: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    let mut first_ms = None;
    let mut freezing = false;
    for (n, line) in csv.lines().enumerate().skip(1) {
        let bad = |what: &str| format!("line {}: {what}: {line}", n + 1);
        let cols: Vec<&str> = line.split(',').collect();
        if cols.len() != 11 {
            return Err(bad("expected 11 columns"));
        }
        let ms = clock_ms(cols[0]).ok_or_else(|| bad("bad timestamp"))?;
        let first = *first_ms.get_or_insert(ms);
        let axes: Vec<i64> = cols[1..10]
            .iter()
            .map(|c| c.trim().parse::<i64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("bad accelerometer value"))?;
        let mut events: Vec<Value> = LOCATIONS
            .iter()
            .zip(axes.chunks(3))
            .map(|(loc, a)| {
                json!({"source": loc, "kind": "sensor",
                       "data": {"fwd": a[0], "vert": a[1], "lat": a[2], "unit": "mg"}})
            })
            .collect();
        let anomaly = cols[10].trim() == "1";
        if anomaly != freezing {
            freezing = anomaly;
            let what = if anomaly {
                "freeze_start"
            } else {
                "freeze_end"
            };
            events.push(json!({"source": "fog-detector", "kind": "tool",
                               "data": {"event": what, "row": n}}));
        }
        out.push(Sample {
            offset_ms: ms.saturating_sub(first),
            events,
        });
    }
    Ok(out)
}

/// `1970-01-01 00:04:40.015` → milliseconds of the day.
fn clock_ms(ts: &str) -> Option<u64> {
    let time = ts.split(' ').nth(1)?;
    let mut parts = time.split(':');
    let h: u64 = parts.next()?.parse().ok()?;
    let m: u64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some((h * 3600 + m * 60) * 1000 + (s * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_recording_parses() {
        let s = samples().unwrap();
        assert_eq!(s.len(), 7040);
        assert_eq!(s[0].offset_ms, 0);
        assert_eq!(s[1].offset_ms, 15);
        assert!(s.last().unwrap().offset_ms > 100_000);
        assert_eq!(s[0].events[0]["data"]["vert"], 1000);
        assert_eq!(s[0].events[2]["source"], "trunk");
    }

    #[test]
    fn anomaly_edges_become_tool_events() {
        let csv = "h\n1970-01-01 00:00:00.000,1,2,3,4,5,6,7,8,9,0\n\
                   1970-01-01 00:00:00.015,1,2,3,4,5,6,7,8,9,1\n\
                   1970-01-01 00:00:00.031,1,2,3,4,5,6,7,8,9,1\n\
                   1970-01-01 00:00:00.046,1,2,3,4,5,6,7,8,9,0\n";
        let s = parse(csv).unwrap();
        let tools: Vec<_> = s
            .iter()
            .flat_map(|x| &x.events)
            .filter(|e| e["kind"] == "tool")
            .map(|e| e["data"]["event"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(tools, ["freeze_start", "freeze_end"]);
        assert!(parse("h\n1970-01-01 00:00:00.000,1,2\n").is_err());
    }
}
