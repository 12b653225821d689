//! `completions` and `man`: shell completions and man pages generated from the same clap
//! definition as `--help`, so they cannot drift from the binary that prints them.
//!
//! Nothing generated is committed: the binary prints it on demand (packagers and the README
//! run `shmsnap completions bash > …` and `shmsnap man --dir …` at install time), and the
//! tests check what it prints.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::exit::{Code, Failure};

/// The CLI definition with the names of subcommand pages filled in (`shmsnap-run`).
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<ExitCode, Failure> {
    // clap_complete's scripts offer hidden subcommands too: complete a copy without them (the
    // exec shim is not for people).
    let full = Cli::command();
    let mut cmd = clap::Command::new("shmsnap")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "shmsnap", &mut out);
    write_stdout(&out)
}

/// Prints the man page of `subcommand` (shmsnap-SUBCOMMAND(1)), or of shmsnap(1), on stdout;
/// or, with `dir`, writes every page there (shmsnap.1, shmsnap-run.1, …).
pub fn man(subcommand: Option<&str>, dir: Option<&Path>) -> Result<ExitCode, Failure> {
    let cmd = command();
    if let Some(dir) = dir {
        write_pages(&cmd, dir).map_err(|e| {
            Failure::new(
                Code::IoErr,
                format!("cannot write the man pages into {}: {e}", dir.display()),
            )
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let page = match subcommand {
        None => cmd,
        Some(name) => cmd
            .get_subcommands()
            .find(|s| s.get_name() == name && !s.is_hide_set())
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = cmd
                    .get_subcommands()
                    .filter(|s| !s.is_hide_set())
                    .map(|s| s.get_name())
                    .collect();
                Failure::new(
                    Code::Usage,
                    format!(
                        "no subcommand {name:?}; man pages exist for {}",
                        names.join(", ")
                    ),
                )
            })?,
    };
    let mut out = Vec::new();
    page_of(page)
        .render(&mut out)
        .map_err(|e| Failure::new(Code::IoErr, format!("cannot render the man page: {e}")))?;
    write_stdout(&out)
}

/// The man page of `cmd` (a built command), titled like git's (`shmsnap-run(1)`).
fn page_of(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .source(concat!("shmsnap ", env!("CARGO_PKG_VERSION")))
        .manual("shmsnap manual")
}

/// Writes the page of `cmd` and of its visible subcommands, recursively, into `dir`.
fn write_pages(cmd: &clap::Command, dir: &Path) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    page_of(cmd.clone()).generate_to(dir)?;
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<ExitCode, Failure> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `shmsnap man | head`: the reader left; not an error worth a message.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(Failure::new(
            Code::IoErr,
            format!("cannot write to stdout: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page of subcommand `name`, rendered.
    fn page(name: &str) -> String {
        let sub = command()
            .get_subcommands()
            .find(|s| s.get_name() == name)
            .cloned()
            .unwrap_or_else(|| panic!("no subcommand {name}"));
        let mut out = Vec::new();
        page_of(sub).render(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn restore_inspect_and_verify_pages_explain_chains() {
        let restore = page("restore");
        assert!(restore.contains(".TH shmsnap-restore 1"), "{restore}");
        for word in [
            "\\-\\-state",
            "\\-\\-to",
            "\\-\\-at",
            "\\-\\-seq",
            "\\-\\-force",
            "Snapshot chains",
            "RFC 3339",
            "@UNIX_SECONDS",
            "next_seq is at most N+1",
        ] {
            assert!(restore.contains(word), "shmsnap-restore(1) lacks {word}");
        }
        for name in ["inspect", "verify"] {
            assert!(page(name).contains("Snapshot chains"), "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        write_pages(&command(), dir.path()).unwrap();
        assert!(dir.path().join("shmsnap-restore.1").is_file());
    }

    #[test]
    fn completions_offer_restore_and_its_options() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "shmsnap", &mut out);
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains("restore"), "{shell}");
            for long in ["seq", "at", "force", "to"] {
                let word = match shell {
                    Shell::Fish => format!("-l {long}"),
                    _ => format!("--{long}"),
                };
                assert!(script.contains(&word), "{shell} completions lack {word}");
            }
        }
    }
}
