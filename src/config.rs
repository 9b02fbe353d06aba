//! TOML configuration (DESIGN §7): every key has a default, unknown keys are refused, `validate()`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::event::DEFAULT_MAX_EVENT_BYTES;

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
    /// Broker, `mqtt://host[:port]`. Default `mqtt://127.0.0.1:1883`.
    pub url: String,
    /// Topic filters to subscribe to (QoS 1). Default `["sensors/#"]`.
    pub topics: Vec<String>,
    /// MQTT client id. Default `edge-relay-ingest-{gateway_id}`.
    pub client_id: Option<String>,
    /// File with the broker password (username = client id). Read at start, never logged.
    pub password_file: Option<PathBuf>,
}

impl Default for MqttIngestConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".to_owned(),
            topics: vec!["sensors/#".to_owned()],
            client_id: None,
            password_file: None,
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
    /// mqtt: server-name filter to discover.
    pub server_name: String,
    /// File holding a bearer token (http) or password (mqtt). Read at start, never logged.
    pub token_file: Option<PathBuf>,
    /// Name of the ingest tool. Default `edge_ingest`.
    pub ingest_tool: String,
    /// Name of the cursor tool. Default `edge_cursor`.
    pub cursor_tool: String,
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
}

/// `[relay]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Most events per `edge_ingest` call. Default 500.
    pub batch_max_events: usize,
    /// Most encoded event bytes per call (one event always goes). Default 256 KiB.
    pub batch_max_bytes: usize,
    /// First reconnect delay, ms. Default 200.
    pub backoff_initial_ms: u64,
    /// Reconnect delay cap, ms. Default 30000.
    pub backoff_max_ms: u64,
    /// Timeout of every upstream request (connect, initialize, each tool call), ms. Default 10000.
    pub request_timeout_ms: u64,
}

/// A secret read from a file; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Reads the file, trimming surrounding whitespace.
    ///
    /// # Errors
    /// The file cannot be read or is empty.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading secret {}: {e}", path.display()))?;
        let text = text.trim();
        anyhow::ensure!(!text.is_empty(), "secret file {} is empty", path.display());
        Ok(Self(text.to_owned()))
    }

    /// The secret itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
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
            server_name: "edge/ingest".to_owned(),
            token_file: None,
            ingest_tool: crate::contract::INGEST_TOOL.to_owned(),
            cursor_tool: crate::contract::CURSOR_TOOL.to_owned(),
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
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 500,
            batch_max_bytes: 256 * 1024,
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
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
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

    /// Every value that `run` would refuse or crash on: empty names, bounds, unusable URLs.
    /// Each names its key as in the TOML file.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                out.push(problem.to_owned());
            }
        };
        check(!self.gateway_id.is_empty(), "gateway_id must not be empty");
        let http = &self.ingest.http;
        check(
            http.max_event_bytes >= 16,
            "ingest.http.max_event_bytes must be at least 16",
        );
        check(
            http.max_body_bytes >= http.max_event_bytes,
            "ingest.http.max_body_bytes must be >= max_event_bytes",
        );
        check(
            http.max_body_bytes <= 1 << 30,
            "ingest.http.max_body_bytes must be at most 1 GiB",
        );
        check(
            (1..=65_536).contains(&http.max_connections),
            "ingest.http.max_connections must be in 1..=65536",
        );
        let up = &self.upstream;
        check(
            !up.ingest_tool.is_empty() && !up.cursor_tool.is_empty(),
            "upstream.ingest_tool and upstream.cursor_tool must not be empty",
        );
        if up.transport == Transport::Mqtt {
            check(
                crate::mqtt::topics::valid_server_name(&up.server_name)
                    || up.server_name.ends_with("/#")
                    || up.server_name == "#",
                "upstream.server_name must be a server name or filter like \"edge/ingest\" or \"edge/#\"",
            );
        }
        if let Some(mqtt) = &self.ingest.mqtt {
            check(
                !mqtt.topics.is_empty(),
                "ingest.mqtt.topics must not be empty",
            );
        }
        let buf = &self.buffer;
        check(
            buf.max_bytes >= 1024 * 1024,
            "buffer.max_bytes must be at least 1 MiB",
        );
        check(
            buf.max_bytes >= 4 * http.max_body_bytes as u64,
            "buffer.max_bytes must be at least 4 x ingest.http.max_body_bytes",
        );
        // sled asserts (and the daemon aborts) below this.
        check(
            buf.cache_bytes >= 256,
            "buffer.cache_bytes must be at least 256",
        );
        let relay = &self.relay;
        check(
            (1..=10_000).contains(&relay.batch_max_events),
            "relay.batch_max_events must be in 1..=10000",
        );
        check(
            relay.batch_max_bytes >= 1024,
            "relay.batch_max_bytes must be at least 1024",
        );
        check(
            relay.backoff_initial_ms >= 1 && relay.backoff_initial_ms <= relay.backoff_max_ms,
            "relay.backoff_initial_ms must be >= 1 and <= backoff_max_ms",
        );
        check(
            relay.backoff_max_ms <= 24 * 3600 * 1000,
            "relay.backoff_max_ms must be at most a day",
        );
        check(
            relay.request_timeout_ms >= 100,
            "relay.request_timeout_ms must be at least 100",
        );
        check(
            relay.request_timeout_ms <= 3600 * 1000,
            "relay.request_timeout_ms must be at most an hour",
        );
        let schemes: &[&str] = match up.transport {
            Transport::Http => &["http", "https"],
            Transport::Mqtt => &["mqtt"],
        };
        out.extend(url_problem("upstream.url", &up.url, schemes));
        if let Some(mqtt) = &self.ingest.mqtt {
            out.extend(url_problem("ingest.mqtt.url", &mqtt.url, &["mqtt"]));
        }
        out
    }

    /// What `run` would fail on in this machine: a `data_dir` it cannot create or write, a
    /// secret file it cannot read or that is empty.
    pub fn environment_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = writable_dir(&self.data_dir) {
            out.push(format!("data_dir {}: {e}", self.data_dir.display()));
        }
        let secrets = [
            (
                "ingest.http.token_file",
                self.ingest.http.token_file.as_deref(),
            ),
            (
                "ingest.mqtt.password_file",
                self.ingest
                    .mqtt
                    .as_ref()
                    .and_then(|m| m.password_file.as_deref()),
            ),
            ("upstream.token_file", self.upstream.token_file.as_deref()),
        ];
        for (key, path) in secrets {
            if let Some(Err(e)) = path.map(Secret::from_file) {
                out.push(format!("{key}: {e:#}"));
            }
        }
        out
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

/// Why `url` cannot be used for `key`: unparsable, another scheme, no host, a bad port.
fn url_problem(key: &str, url: &str, schemes: &[&str]) -> Option<String> {
    let wanted = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let uri = match url.parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(e) => {
            return Some(format!(
                "{key} {:?} is not a URL: {e}",
                crate::redact::url(url)
            ));
        }
    };
    let shown = crate::redact::url(url);
    if !uri.scheme_str().is_some_and(|s| schemes.contains(&s)) {
        return Some(format!("{key} {shown:?} must start with {wanted}"));
    }
    let Some(authority) = uri.authority() else {
        return Some(format!("{key} {shown:?} has no host"));
    };
    if authority.host().is_empty() {
        return Some(format!("{key} {shown:?} has no host"));
    }
    // `http::Uri` takes any digits as a port and then reports none for `:99999`.
    let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let after_host = host_port
        .rsplit_once(']')
        .map_or(host_port, |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Some(format!("{key} {shown:?} has a port outside 1..=65535"));
    }
    None
}

/// Whether `run` could create `dir` (its nearest existing ancestor is a writable directory) or
/// write in it, as this user; nothing is created.
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let absolute = std::path::absolute(dir)?;
    let existing = absolute
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !existing.is_dir() {
        let what = format!("{} is not a directory", existing.display());
        return Err(std::io::Error::new(std::io::ErrorKind::NotADirectory, what));
    }
    let path = std::ffi::CString::new(existing.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", existing.display()),
        ));
    }
    Ok(())
}

impl RelayConfig {
    /// `request_timeout_ms` as a `Duration`.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
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
        let err = Config::from_toml("[upstream]\nurl = \"ftp://x\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("upstream.url"), "{err:#}");
    }

    #[test]
    fn every_problem_that_run_would_hit_is_listed() {
        let text = "[upstream]\nurl = \"http://u:pw@h:99999/mcp\"\n[buffer]\ncache_bytes = 0\n\
                    [ingest.mqtt]\nurl = \"mqtt://bad host\"\n";
        let problems: Config = toml::from_str(text).unwrap();
        let problems = problems.problems();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("buffer.cache_bytes"), "{problems:#?}");
        assert!(problems[1].contains("upstream.url") && problems[1].contains("port"));
        assert!(!problems[1].contains("pw"), "{problems:#?}");
        assert!(problems[2].contains("ingest.mqtt.url"), "{problems:#?}");
        for bad in [
            "http://",
            "http:// h/mcp",
            "http://h:0/",
            "ftp://h/",
            "http:///mcp",
        ] {
            assert!(url_problem("k", bad, &["http"]).is_some(), "{bad}");
        }
        for good in [
            "http://h/mcp",
            "https://[::1]:8787/mcp",
            "http://127.0.0.1:65535",
        ] {
            assert_eq!(url_problem("k", good, &["http", "https"]), None, "{good}");
        }
    }

    #[test]
    fn toml_errors_take_one_line() {
        let err = Config::from_toml("[relay]\nbatch_max_event = 3\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("line 2, column 1 (batch_max_event = 3): unknown field"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn secret_is_masked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let s = Secret::from_file(&path).unwrap();
        assert_eq!(s.expose(), "s3cret");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }
}
