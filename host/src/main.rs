//! `shmsnap`: the host — supervisor, snapshotter, inspector.
//!
//! | module | idea |
//! |---|---|
//! | [`cgroup`] | the client's own cgroup, killed whole |
//! | [`claim`] | one writer per region: clearing a dead client's claim before its restart |
//! | [`cli`] | the command line, turned into [`config`] values |
//! | [`config`] | what the commands are asked to do, as plain values (no clap below the CLI) |
//! | [`supervisor`] | `run`: start, watch, restart the client; signals; the event loop |
//! | [`strategy`] | one file per snapshot strategy, all answering the same questions |
//! | [`startup`] | the start-up restore: the newest restorable point into a fresh region |
//! | [`snap`] | consistent snapshots of the live region while the client runs |
//! | [`inspect`] | `inspect` and `verify` of snapshot files and their chains |
//! | [`chains`] | the restore library: a state's chains, a point picked and materialized |
//! | [`restore`] | `restore`: one point of a chain (or of a replica) as a standalone snapshot file |
//! | [`replica`] | replicas in object storage: upload, lease, `restore --from`, `inspect --replica` |
//! | [`notify`] | systemd: fd store, `READY=1`, `STATUS=` |
//! | [`durable`] | durability feedback: the status area at start and after each snapshot, client requests |
//! | [`demo`] | `demo`: the primes client under the host, SIGKILLed |
//! | [`examples`] | bundled example clients (public client API only) |
//! | [`exit`] | exit codes |
//! | [`flow`] | the values passed between parts on a snapshot, and the sinks told of one |
//! | [`metrics`] | Prometheus metrics and their HTTP endpoint (`--metrics`) |
//! | [`watchdog`] | systemd watchdog pings while the loop makes progress |
//! | [`logging`] | `--log-format text\|json` |
//! | [`progress`] | progress bars on a terminal |
//! | [`time`] | `--at` times, durations, RFC 3339 in messages |
//! | [`generate`] | `completions` and `man` from the CLI definition |
#![deny(unsafe_code)]

mod cgroup;
mod chains;
mod claim;
mod cli;
mod config;
mod demo;
mod durable;
mod examples;
mod exit;
mod flow;
mod generate;
mod inspect;
mod logging;
mod metrics;
mod notify;
mod progress;
mod replica;
mod restore;
mod snap;
mod startup;
mod strategy;
mod supervisor;
mod time;
mod watchdog;

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
    if let Command::Exec { cgroup, command } = &cli.command {
        return exec_shim(cgroup.as_deref(), command);
    }
    let log_format = cli.log_format;
    logging::init(log_format);
    let result = match cli.command {
        Command::Run(args) => supervisor::setup::run(args.into_config()),
        Command::Inspect(args) => match (&args.replica, &args.file) {
            (Some(url), _) => replica::inspect::inspect(url, args.json, args.verify),
            (None, Some(file)) => inspect::inspect(file, args.json),
            (None, None) => unreachable!("clap requires FILE or --replica"),
        },
        Command::Verify(args) => inspect::verify(&args.file),
        Command::Restore(args) => restore::run(&args.into_request()),
        Command::Demo(args) => demo::run(args.kills, args.keep_dir),
        Command::Example(args) => match args.which {
            Example::Primes {
                limit,
                pause,
                batch,
                linger,
                ack,
                ack_replicated,
            } => examples::primes::run(
                limit,
                pause,
                batch,
                linger,
                examples::primes::Ack::from_args(ack, ack_replicated),
            ),
            Example::Kv { ops, pause } => examples::kv::run(ops, pause),
            Example::Pages {
                interval,
                percent,
                commits,
                limit,
            } => examples::pages::run(interval, percent, commits, limit),
            Example::Life {
                generations,
                pause,
                side,
                seed,
                reinit_at,
                reinit_by,
            } => examples::life::run(
                generations,
                pause,
                side,
                seed,
                reinit_at.map(|g| (g, reinit_by)),
            ),
        },
        Command::Completions(args) => generate::completions(args.shell),
        Command::Man(args) => generate::man(args.subcommand.as_deref(), args.dir.as_deref()),
        Command::Exec { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            match log_format {
                // A log pipeline gets the final error as one more JSON line.
                logging::LogFormat::Json => tracing::error!(exit_code = f.code as u8, "{f}"),
                logging::LogFormat::Text => error_line(&f.to_string()),
            }
            f.exit_code()
        }
    }
}

fn exec_shim(cgroup: Option<&std::path::Path>, command: &[std::ffi::OsString]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        error_line("__exec: no command");
        return ExitCode::from(Code::Usage as u8);
    };
    // Joined before the exec, as the client's own pid: nothing the client starts is outside.
    if let Some(dir) = cgroup {
        if let Err(e) = cgroup::join(dir) {
            let f = Failure::new(
                Code::OsErr,
                format!("cannot move the client into cgroup {}: {e}", dir.display()),
            );
            error_line(&f.to_string());
            return f.exit_code();
        }
    }
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
