//! `shmsnap`: the host — supervisor, snapshotter, inspector.
//!
//! | module | idea |
//! |---|---|
//! | [`cli`] | the command line |
//! | [`supervise`] | `run`: start, watch, restart the client; signals; the loop |
//! | [`snap`] | restore at start; consistent snapshots while the client runs |
//! | [`inspect`] | `inspect` and `verify` of snapshot files |
//! | [`notify`] | systemd: fd store, `READY=1`, `STATUS=` |
//! | [`demo`] | `demo`: the primes client under the host, SIGKILLed |
//! | [`examples`] | bundled example clients (public client API only) |
//! | [`exit`] | exit codes |
#![deny(unsafe_code)]

mod cli;
mod demo;
mod examples;
mod exit;
mod inspect;
mod notify;
mod snap;
mod supervise;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, Example};
use crate::exit::{Code, Failure};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error exits 64, as `--help` documents (clap's own default is 2); `--help`
        // and `--version` print to stdout and exit 0.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(Code::Usage as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The exec shim must not log or change anything: it replaces itself with the client.
    if let Command::Exec { command } = &cli.command {
        return exec_shim(command);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // No colour escapes in logs that go to a file, a pipe or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run(args) => supervise::run(args),
        Command::Inspect(args) => inspect::inspect(&args.file, args.json),
        Command::Verify(args) => inspect::verify(&args.file),
        Command::Demo(args) => demo::run(&args),
        Command::Example(args) => match args.which {
            Example::Primes {
                limit,
                pause,
                batch,
                linger,
            } => examples::primes::run(limit, pause, batch, linger),
            Example::Kv { ops, pause } => examples::kv::run(ops, pause),
        },
        Command::Exec { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            error_line(&f.to_string());
            f.exit_code()
        }
    }
}

fn exec_shim(command: &[std::ffi::OsString]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        error_line("__exec: no command");
        return ExitCode::from(Code::Usage as u8);
    };
    let e = shmsnap_linux::handover::exec_as_listener(program, args);
    let f = Failure::new(
        Code::NotFound,
        format!("cannot execute {}: {e}", program.to_string_lossy()),
    );
    error_line(&f.to_string());
    f.exit_code()
}

/// Prints `shmsnap: MESSAGE` to stderr in one `write` (stderr is unbuffered, and `eprintln!`
/// writes piece by piece: the host's and the client's lines on a shared stderr would tear).
fn error_line(message: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("shmsnap: {message}\n").as_bytes());
}
