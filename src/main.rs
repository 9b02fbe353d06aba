//! `edge-relay` command line: parses flags, sets up logging and calls into the library.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hyper::Method;

use edge_relay::config::{Config, TlsConfig};
use edge_relay::status::StatusReport;
use edge_relay::tls::ClientTls;
use edge_relay::tls::server::ServerTls;
use edge_relay::{demo, local_client, logging, shutdown, sink};

/// Durable, resumable relay of gateway events to an upstream MCP server.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: local ingest, sled outbox, relay to the upstream.
    Run {
        /// TOML config file; without it every key has its default.
        #[arg(long, short, env = "EDGE_RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// TOML config file.
        file: PathBuf,
    },
    /// Ask a running daemon for its status.
    Status {
        /// Print the raw JSON of GET /v1/status.
        #[arg(long)]
        json: bool,
        /// Daemon's ingest address.
        #[arg(long, default_value = "127.0.0.1:7878")]
        addr: SocketAddr,
    },
    /// Post events to a running daemon: one from flags, or a body (JSON, array or NDJSON) from stdin.
    Send {
        /// Event source (sensor id, tool name); required unless --stdin.
        #[arg(long, required_unless_present = "stdin")]
        source: Option<String>,
        /// Event kind.
        #[arg(long, default_value = "sensor")]
        kind: String,
        /// Event data as JSON.
        #[arg(long, default_value = "null")]
        data: String,
        /// Idempotency key (UUID); a repeat returns the original seq.
        #[arg(long)]
        id: Option<uuid::Uuid>,
        /// Read the request body from stdin instead.
        #[arg(long, conflicts_with_all = ["source", "id"])]
        stdin: bool,
        /// File with the daemon's ingest token (`ingest.http.token_file`), sent as a bearer token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Daemon's ingest address.
        #[arg(long, default_value = "127.0.0.1:7878")]
        addr: SocketAddr,
    },
    /// Offline look at a data dir (the daemon must be stopped): counters, disk use and the
    /// oldest backlog events as NDJSON.
    Inspect {
        /// TOML config file whose `data_dir` to inspect; without it every key has its default.
        #[arg(long, short, env = "EDGE_RELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Inspect this directory instead of the config's `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// How many of the oldest backlog events to print.
        #[arg(long, default_value_t = 0)]
        events: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the configured upstream: initialize, list its tools, check the contract, print
    /// this gateway's cursor (asked from the running daemon's stream). Non-zero exit if unmet.
    Probe {
        /// TOML config file; without it every key has its default.
        #[arg(long, short, env = "EDGE_RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the reference upstream: an MCP server implementing edge_ingest and edge_cursor.
    Sink {
        /// Listen address; the MCP endpoint is http://ADDR/mcp.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// Directory of the sink's own sled store.
        #[arg(long, default_value = "./edge-relay-sink-data")]
        data_dir: PathBuf,
        /// Store in this PostgreSQL database instead (postgres://user@host/db; several sink
        /// nodes may share one; README "Run a fleet").
        #[arg(long, env = "EDGE_RELAY_SINK_STORE", conflicts_with = "data_dir")]
        store: Option<String>,
        /// Also serve over MCP over MQTT through this broker (mqtt://host[:port] or mqtts://...).
        #[arg(long)]
        mqtt: Option<String>,
        /// server-name announced over MQTT.
        #[arg(long, default_value = "edge/ingest", requires = "mqtt")]
        server_name: String,
        /// MCP revisions served: both eras, only the current one (2026-07-28: server/discover,
        /// no sessions), or only the legacy initialize revisions (up to 2025-11-25).
        #[arg(long, value_enum, default_value_t = sink::Eras::Both)]
        eras: sink::Eras,
        /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by a CA in this PEM file (mutual TLS).
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// mqtts:// broker: trust only the CA(s) in this PEM file (default: the public roots).
        #[arg(long, requires = "mqtt")]
        mqtt_ca: Option<PathBuf>,
        /// mqtts:// broker: present this client certificate (PEM); needs --mqtt-key.
        #[arg(long, requires_all = ["mqtt", "mqtt_key"])]
        mqtt_cert: Option<PathBuf>,
        /// The private key of --mqtt-cert (PEM).
        #[arg(long, requires = "mqtt_cert")]
        mqtt_key: Option<PathBuf>,
    },
    /// End-to-end demo on the Daphnet recording, with upstream outages and a relay restart.
    Demo(demo::DemoOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Config::load(&path),
        None => Ok(Config::default()),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            edge_relay::run(load(config)?, shutdown::on_signals()?).await?;
        }
        Command::Probe { config } => {
            let config = load(config)?;
            let stream =
                local_client::request(config.ingest.http.listen, Method::GET, "/v1/status", vec![])
                    .await
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<StatusReport>(&body).ok())
                    .map(|r| r.stream);
            match edge_relay::probe::probe(&config, stream).await {
                Ok(report) => print!("{report}"),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Inspect {
            config,
            data_dir,
            events,
            json,
        } => {
            let dir = match data_dir {
                Some(dir) => dir,
                None => load(config)?.data_dir,
            };
            let seen = edge_relay::inspect::inspect(&dir, events)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&seen)?);
            } else {
                print!("{seen}");
            }
        }
        Command::CheckConfig { file } => match Config::check_file(&file) {
            Ok(mut config) => {
                config.upstream.url = edge_relay::redact::url(&config.upstream.url).into_owned();
                for url in &mut config.upstream.urls {
                    *url = edge_relay::redact::url(url).into_owned();
                }
                if let Some(mqtt) = &mut config.ingest.mqtt {
                    mqtt.url = edge_relay::redact::url(&mqtt.url).into_owned();
                }
                println!("{}: ok\n{config:#?}", file.display());
            }
            Err(problems) => {
                for problem in problems {
                    eprintln!("{}: {problem}", file.display());
                }
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::Status { json, addr } => {
            let (code, body) =
                local_client::request(addr, Method::GET, "/v1/status", vec![]).await?;
            anyhow::ensure!(code == 200, "daemon answered HTTP {code}: {body}");
            if json {
                println!("{body}");
            } else {
                let r: StatusReport = serde_json::from_str(&body).context("parsing /v1/status")?;
                println!(
                    "gateway {} stream {}\nupstream {}{}{}\nbacklog {} events, {} bytes\nnext_seq {} acked_seq {} dropped {}\ndelivered {} events in {} batches, {} sessions",
                    r.gateway,
                    r.stream,
                    r.upstream,
                    r.protocol_version
                        .map(|v| format!(", MCP {v}"))
                        .unwrap_or_default(),
                    r.last_error
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default(),
                    r.backlog_events,
                    r.backlog_bytes,
                    r.next_seq,
                    r.acked_seq,
                    r.dropped_events,
                    r.events_delivered,
                    r.batches_delivered,
                    r.reconnects
                );
                for path in &r.stores_moved_aside {
                    println!("store moved aside (could not be opened): {path}");
                }
            }
        }
        Command::Send {
            source,
            kind,
            data,
            id,
            stdin,
            token_file,
            addr,
        } => {
            let token = token_file
                .as_deref()
                .map(edge_relay::config::Secret::from_file)
                .transpose()?;
            let body = if stdin {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("reading stdin")?;
                buf
            } else {
                let data: serde_json::Value =
                    serde_json::from_str(&data).context("--data is not valid JSON")?;
                let mut event = serde_json::json!({"source": source, "kind": kind, "data": data});
                if let Some(id) = id {
                    event["id"] = serde_json::json!(id);
                }
                event.to_string().into_bytes()
            };
            let (code, body) = local_client::request_with_token(
                addr,
                Method::POST,
                "/v1/events",
                body,
                token.as_ref(),
            )
            .await?;
            println!("{body}");
            if code != 200 {
                eprintln!("error: daemon answered HTTP {code}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Sink {
            listen,
            data_dir,
            store,
            mqtt,
            server_name,
            eras,
            tls_cert,
            tls_key,
            client_ca,
            mqtt_ca,
            mqtt_cert,
            mqtt_key,
        } => {
            let token = shutdown::on_signals()?;
            let mqtt = mqtt.map(|url| sink::mqtt::MqttServe {
                url,
                server_name,
                password: None,
                reconnect_max: sink::mqtt::BACKOFF.1,
            });
            let mqtt_tls = TlsConfig {
                ca_file: mqtt_ca,
                cert_file: mqtt_cert,
                key_file: mqtt_key,
                ..TlsConfig::default()
            };
            let tls = tls_cert
                .zip(tls_key)
                .map(|(cert_file, key_file)| ServerTls {
                    cert_file,
                    key_file,
                    client_ca_file: client_ca,
                });
            let options = sink::SinkOptions {
                listen,
                store: store.map_or(
                    sink::StoreLocation::Dir(data_dir),
                    sink::StoreLocation::Postgres,
                ),
                mqtt,
                mqtt_tls: Some(ClientTls::new("--mqtt", mqtt_tls)),
                eras,
                tls,
            };
            sink::run(options, token).await?;
        }
        Command::Demo(options) => return demo::run(options).await,
    }
    Ok(ExitCode::SUCCESS)
}
