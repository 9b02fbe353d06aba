//! `edge-relay`: parses the command line, sets up logging and runs the subcommand
//! ([`edge_relay::cli`]).

use std::process::ExitCode;

use clap::Parser;

use edge_relay::cli::{Cli, dispatch};
use edge_relay::service::logging;

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
