//! `edge-relay check-config FILE`: validates a config and prints it, secrets masked.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::redact;

/// Prints `FILE: ok` and the effective config (URL userinfo masked), or each problem on
/// stderr as `FILE: problem` and returns failure.
pub fn run(file: &Path) -> ExitCode {
    match Config::check_file(file) {
        Ok(mut config) => {
            config.upstream.url = redact::url(&config.upstream.url).into_owned();
            for url in &mut config.upstream.urls {
                *url = redact::url(url).into_owned();
            }
            if let Some(mqtt) = &mut config.ingest.mqtt {
                mqtt.url = redact::url(&mqtt.url).into_owned();
            }
            println!("{}: ok\n{config:#?}", file.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in problems {
                eprintln!("{}: {problem}", file.display());
            }
            ExitCode::FAILURE
        }
    }
}
