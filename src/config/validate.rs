//! Config checks beyond types: every value `run` would refuse or crash on, and what it needs
//! of the machine (a writable `data_dir`, readable secret files); TOML errors on one line.

use std::path::Path;

use super::{Config, Secret, TlsConfig, Transport};
use crate::tls::{ClientTls, x509};

impl Config {
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
        check(
            buf.commit_delay_max_us <= 100_000,
            "buffer.commit_delay_max_us must be at most 100000 (0.1 s)",
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
            (1..=64).contains(&relay.max_in_flight),
            "relay.max_in_flight must be in 1..=64",
        );
        check(
            (1..=64).contains(&relay.max_in_flight_plain),
            "relay.max_in_flight_plain must be in 1..=64",
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
            Transport::Mqtt => &["mqtt", "mqtts"],
        };
        // `urls`, when set, replaces `url` (which then keeps its default, unused).
        if up.urls.is_empty() {
            out.extend(url_problem("upstream.url", &up.url, schemes));
        }
        for (i, url) in up.urls.iter().enumerate() {
            out.extend(url_problem(&format!("upstream.urls[{i}]"), url, schemes));
        }
        for url in up.endpoints() {
            out.extend(tls_problems("upstream", url, &up.tls));
        }
        if let Some(mqtt) = &self.ingest.mqtt {
            out.extend(url_problem(
                "ingest.mqtt.url",
                &mqtt.url,
                &["mqtt", "mqtts"],
            ));
            out.extend(tls_problems("ingest.mqtt", &mqtt.url, &mqtt.tls));
        }
        out
    }

    /// The TLS settings that are in use (`[upstream.tls]`, `[ingest.mqtt.tls]`).
    fn tls_sections(&self) -> Vec<ClientTls> {
        let mut out = vec![crate::uplink::upstream_tls(self)];
        if let Some(mqtt) = &self.ingest.mqtt {
            out.push(ClientTls::new("ingest.mqtt.tls", mqtt.tls.clone()));
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
        for tls in self
            .tls_sections()
            .into_iter()
            .filter(|t| !t.config().is_empty())
        {
            // Files exist and parse, the key is the certificate's, the certificate is current.
            if let Err(e) = tls.load() {
                out.push(e.to_string());
            } else if let Ok(Some(cert)) = tls.client_cert()
                && cert.not_after < x509::unix_now()
            {
                out.push(format!(
                    "{}.cert_file {}: the certificate expired {}",
                    tls.section(),
                    tls.config()
                        .cert_file
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display(),
                    x509::format_time(cert.not_after)
                ));
            }
        }
        out
    }
}

/// What is wrong with the TLS table of `section` (`upstream`, `ingest.mqtt`) for `url`: half a
/// client certificate, no root to trust, a table that a plain-text URL would ignore.
fn tls_problems(section: &str, url: &str, tls: &TlsConfig) -> Vec<String> {
    let mut out = Vec::new();
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        out.push(format!(
            "{section}.tls.cert_file and {section}.tls.key_file go together"
        ));
    }
    if tls.ca_file.is_none() && !tls.trusts_public_roots() {
        out.push(format!(
            "{section}.tls.public_roots = false needs {section}.tls.ca_file"
        ));
    }
    if let Some(name) = &tls.server_name
        && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        out.push(format!(
            "{section}.tls.server_name {name:?} is not a DNS name or IP address"
        ));
    }
    let secure = url.starts_with("https://") || url.starts_with("mqtts://");
    if !tls.is_empty() && !secure {
        out.push(format!(
            "{section}.tls is set but {section}.url {:?} is not https:// or mqtts://",
            crate::redact::url(url)
        ));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
