//! TOML configuration (docs/DESIGN.md §12): every key has a default, unknown keys are refused, `validate()`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::event::DEFAULT_MAX_EVENT_BYTES;

pub mod secret;
mod validate;

pub use secret::Secret;

/// Whole daemon configuration; `Config::default()` is what `edge-relay run` uses with no file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Gateway id sent upstream with every batch. Default: the host name.
    pub gateway_id: String,
    /// Directory of the sled outbox. Default: `$STATE_DIRECTORY`, else `./edge-relay-data`.
    pub data_dir: PathBuf,
    /// Local producers.
    pub ingest: IngestConfig,
    /// Where events go.
    pub upstream: UpstreamConfig,
    /// Outbox bounds.
    pub buffer: BufferConfig,
    /// Delivery pacing.
    pub relay: RelayConfig,
}

/// `[ingest]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// `[ingest.http]`: the local HTTP endpoint.
    pub http: HttpIngestConfig,
    /// `[ingest.mqtt]`: subscribe to the gateway's broker. Absent: off.
    pub mqtt: Option<MqttIngestConfig>,
}

/// `[ingest.mqtt]` section: local producers publish to the gateway's broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttIngestConfig {
    /// Broker, `mqtt://host[:port]` or `mqtts://host[:port]`. Default `mqtt://127.0.0.1:1883`.
    pub url: String,
    /// Topic filters to subscribe to (QoS 1). Default `["sensors/#"]`.
    pub topics: Vec<String>,
    /// MQTT client id. Default `edge-relay-ingest-{gateway_id}`.
    pub client_id: Option<String>,
    /// File with the broker password (username = client id). Read at start, never logged.
    pub password_file: Option<PathBuf>,
    /// `[ingest.mqtt.tls]`: trust and client certificate for an `mqtts://` broker.
    pub tls: TlsConfig,
}

impl Default for MqttIngestConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".to_owned(),
            topics: vec!["sensors/#".to_owned()],
            client_id: None,
            password_file: None,
            tls: TlsConfig::default(),
        }
    }
}

/// `[ingest.http]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpIngestConfig {
    /// Listen address. Default `127.0.0.1:7878`.
    pub listen: SocketAddr,
    /// Largest accepted request body, bytes. Default 4 MiB.
    pub max_body_bytes: usize,
    /// Largest accepted event `data`, bytes (encoded JSON). Default 64 KiB.
    pub max_event_bytes: usize,
    /// Most connections open at once (1..=65536); more wait in the kernel's backlog. Default 512.
    /// Each takes a file descriptor: the unit's `LimitNOFILE` is sized for the default.
    pub max_connections: usize,
    /// File with a bearer token that `POST /v1/events` must carry (`Authorization: Bearer ...`).
    /// Read at start, never logged. Absent: no token is asked for.
    pub token_file: Option<PathBuf>,
}

/// Upstream transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MCP Streamable HTTP.
    Http,
    /// MCP over MQTT (mqtt-ai "MCP over MQTT", MQTT 5.0).
    Mqtt,
}

/// `[upstream]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `http` or `mqtt`. Default `http`.
    pub transport: Transport,
    /// http: the MCP endpoint (`http://` or `https://`); mqtt: the broker.
    pub url: String,
    /// Several endpoints (or brokers) of one fleet upstream, in order of preference; when
    /// set, replaces `url`. The relay fails over between them (`uplink::failover`).
    pub urls: Vec<String>,
    /// mqtt: server-name filter to discover.
    pub server_name: String,
    /// File holding a bearer token (http) or password (mqtt). Read at start, never logged.
    pub token_file: Option<PathBuf>,
    /// Name of the ingest tool. Default `edge_ingest`.
    pub ingest_tool: String,
    /// Name of the `edge_cursor` tool. Default `edge_cursor`.
    pub cursor_tool: String,
    /// `[upstream.tls]`: trust and client certificate for `https://` and `mqtts://`.
    pub tls: TlsConfig,
}

/// A TLS client's settings (`[upstream.tls]`, `[ingest.mqtt.tls]`). Every file is PEM and is
/// read again for each new connection, so a rotated certificate needs no restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// CA certificate(s) the server's chain must lead to. Set, it *replaces* the public (webpki)
    /// roots unless `public_roots = true`: a private CA should not also trust every public one.
    pub ca_file: Option<PathBuf>,
    /// Also trust the public webpki roots. Default: only when `ca_file` is unset.
    pub public_roots: Option<bool>,
    /// Client certificate chain (leaf first) presented to servers that ask; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1); never logged. Under
    /// systemd, pass it as a credential (`LoadCredential=`).
    pub key_file: Option<PathBuf>,
    /// Name the server certificate must carry, instead of the URL's host (e.g. when connecting
    /// by IP address). SNI still sends the URL's host.
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Whether the public roots are trusted: `public_roots`, by default only without `ca_file`.
    pub fn trusts_public_roots(&self) -> bool {
        self.public_roots.unwrap_or(self.ca_file.is_none())
    }

    /// True when nothing is set (the defaults: public roots, no client certificate).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl UpstreamConfig {
    /// The upstream URLs in order of preference: `urls` when set, else `url` alone.
    pub fn endpoints(&self) -> Vec<&str> {
        if self.urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.urls.iter().map(String::as_str).collect()
        }
    }
}

/// What the outbox does when `max_bytes` would be exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Refuse the new events (HTTP 507); nothing accepted is lost.
    Reject,
    /// Delete the oldest undelivered events, count them and report the gap upstream.
    DropOldest,
}

/// `[buffer]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Cap on buffered (undelivered) event bytes, as encoded in the outbox. Default 512 MiB.
    pub max_bytes: u64,
    /// Overflow policy. Default `reject`.
    pub overflow: Overflow,
    /// sled page cache cap, bytes. Default 4 MiB.
    pub cache_bytes: u64,
    /// How many delivered events keep their `id` for producer idempotency. Default 100000.
    pub id_retention: u64,
    /// Free space (statvfs, bytes available to the daemon) kept on the data dir's filesystem:
    /// below it appends are refused (507) while acks and deletes go on, so delivery can always
    /// free space. Default 32 MiB.
    pub min_free_bytes: u64,
    /// Size of the store's log file from which it is compacted into a fresh store once the
    /// backlog is at most 1 MiB, giving back the disk a drained backlog held (sled never
    /// shrinks its files); 0 turns compaction off. Default 16 MiB.
    pub compact_min_bytes: u64,
    /// Longest a group commit waits, in microseconds, for the appends it expects (as many as
    /// the last group had plus those that queued during its fsync): at most the last commit's
    /// own time, and never when no more are expected (one producer); 0 turns it off. Fewer,
    /// larger group commits: fewer fsyncs per event, so less flash wear, for at most one
    /// commit time of added latency (`outbox::writer`). Default 1000, at most 100000.
    pub commit_delay_max_us: u64,
}

/// `[relay]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Most events per `edge_ingest` call. Default 500.
    pub batch_max_events: usize,
    /// Most encoded event bytes per call (one event always goes). Default 256 KiB.
    pub batch_max_bytes: usize,
    /// Most `edge_ingest` calls outstanding at once (1 = stop-and-wait), 1..=64, to an
    /// upstream that takes `events_zstd`. Over HTTP each takes its own pooled connection; over
    /// MQTT they share the session. Default 16.
    pub max_in_flight: usize,
    /// The same to an upstream that takes plain `events` only, 1..=64. Default 4: a plain
    /// batch in flight holds its events as JSON values (rmcp's arguments), several MiB of RSS
    /// per call for a 500-event batch.
    pub max_in_flight_plain: usize,
    /// Send batches as `events_zstd` (zstd-compressed NDJSON) to an upstream whose ingest tool
    /// lists it in its `inputSchema`; plain `events` to any other. Default true.
    pub compress: bool,
    /// First reconnect delay, ms. Default 200.
    pub backoff_initial_ms: u64,
    /// Reconnect delay cap, ms. Default 30000.
    pub backoff_max_ms: u64,
    /// Timeout of every upstream request (connect, initialize, each tool call), ms. Default 10000.
    pub request_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            gateway_id: default_gateway_id(),
            data_dir: default_data_dir(),
            ingest: IngestConfig::default(),
            upstream: UpstreamConfig::default(),
            buffer: BufferConfig::default(),
            relay: RelayConfig::default(),
        }
    }
}

impl Default for HttpIngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            max_body_bytes: 4 * 1024 * 1024,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_connections: 512,
            token_file: None,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Http,
            url: "http://127.0.0.1:8787/mcp".to_owned(),
            urls: Vec::new(),
            server_name: "edge/ingest".to_owned(),
            token_file: None,
            ingest_tool: crate::contract::INGEST_TOOL.to_owned(),
            cursor_tool: crate::contract::CURSOR_TOOL.to_owned(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: 512 * 1024 * 1024,
            overflow: Overflow::Reject,
            cache_bytes: 4 * 1024 * 1024,
            id_retention: 100_000,
            min_free_bytes: 32 * 1024 * 1024,
            compact_min_bytes: 16 * 1024 * 1024,
            commit_delay_max_us: 1000,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 500,
            batch_max_bytes: 256 * 1024,
            max_in_flight: 16,
            max_in_flight_plain: 4,
            compress: true,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            request_timeout_ms: 10_000,
        }
    }
}

fn default_gateway_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

fn default_data_dir() -> PathBuf {
    data_dir_from_state_directory(std::env::var_os("STATE_DIRECTORY").as_deref())
}

/// systemd's `$STATE_DIRECTORY` is a colon-separated list (one per `StateDirectory=` entry);
/// the outbox lives in the first. Unset or empty: `./edge-relay-data`.
fn data_dir_from_state_directory(state: Option<&std::ffi::OsStr>) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    state
        .and_then(|s| s.as_bytes().split(|b| *b == b':').next())
        .filter(|first| !first.is_empty())
        .map_or_else(
            || PathBuf::from("./edge-relay-data"),
            |first| PathBuf::from(std::ffi::OsStr::from_bytes(first)),
        )
}

impl Config {
    /// Parses TOML text and validates it.
    ///
    /// # Errors
    /// A syntax error, unknown key or wrong type (one line, with its location), or every
    /// [`Config::problems`] finding, one per line.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let config: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!(toml_error(text, &e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// As [`Config::from_toml`], prefixed with the file name.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| path.display().to_string())
    }

    /// The config in `path` ([`Config::load`]), or every key's default without one (the
    /// subcommands' `--config`).
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_or_default(path: Option<&Path>) -> anyhow::Result<Self> {
        path.map_or_else(|| Ok(Self::default()), Self::load)
    }

    /// Everything `edge-relay check-config` reports for `path`: a parse error, or every value
    /// problem ([`Config::problems`]) and every problem of the machine it runs on
    /// ([`Config::environment_problems`]), one line each. Empty: `run` will accept it.
    pub fn check_file(path: &Path) -> Result<Self, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("reading it: {e}")])?;
        let config: Config = toml::from_str(&text).map_err(|e| vec![toml_error(&text, &e)])?;
        let mut problems = config.problems();
        problems.extend(config.environment_problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Checks values that types alone cannot ([`Config::problems`]).
    ///
    /// # Errors
    /// Every problem, one per line.
    pub fn validate(&self) -> anyhow::Result<()> {
        let problems = self.problems();
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    }
}

impl RelayConfig {
    /// `request_timeout_ms` as a `Duration`.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// A TOML error on one line: `line L, column C (that line's text): message` (toml's own
/// Display takes six lines with a snippet).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    let Some(span) = e.span() else {
        return message.to_owned();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.len() - line_start + 1;
    let source: String = text[line_start..]
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(80)
        .collect();
    format!("line {line}, column {column} ({source}): {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_defaults_to_the_first_state_directory() {
        let dir = |s: Option<&str>| data_dir_from_state_directory(s.map(std::ffi::OsStr::new));
        assert_eq!(
            dir(Some("/var/lib/edge-relay")),
            Path::new("/var/lib/edge-relay")
        );
        assert_eq!(dir(Some("/var/lib/a:/var/lib/b")), Path::new("/var/lib/a"));
        assert_eq!(dir(Some("")), Path::new("./edge-relay-data"));
        assert_eq!(dir(None), Path::new("./edge-relay-data"));
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.ingest.http.listen.port(), 7878);
        assert_eq!(c.buffer.overflow, Overflow::Reject);
        assert_eq!(c.relay.batch_max_events, 500);
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../config/edge-relay.toml");
        let c = Config::from_toml(text).unwrap();
        // Installed as /etc/edge-relay/edge-relay.toml on every gateway: the id stays the host's.
        assert_eq!(c.gateway_id, Config::default().gateway_id);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Config::from_toml("[relay]\nbatch_max_event = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("batch_max_event"), "{err:#}");
        let err = Config::from_toml("[buffer]\noverflow = \"drop\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("overflow"), "{err:#}");
        let err = Config::from_toml("[relay]\nbatch_max_events = 0\n").unwrap_err();
        assert!(format!("{err:#}").contains("batch_max_events"), "{err:#}");
        for (key, window) in [("max_in_flight", 0), ("max_in_flight_plain", 65)] {
            let err = Config::from_toml(&format!("[relay]\n{key} = {window}\n"));
            let err = format!("{:#}", err.unwrap_err());
            assert!(err.contains(&format!("{key} must be in 1..=64")), "{err}");
        }
        let err = Config::from_toml("[upstream]\nurl = \"ftp://x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("upstream.url"), "{err:#}");
    }
}
