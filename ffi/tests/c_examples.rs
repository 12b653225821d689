//! The C examples and the header, built by the system C compiler with warnings as errors:
//! the embedding example (writer and host in one C file, no binary), under AddressSanitizer
//! too; the minimal client and the key-value client under the real host (the latter built
//! with AddressSanitizer); the header as strict C99 and as C++; the pkg-config file.

mod common;

use std::ffi::OsStr;
use std::process::Command;

use common::*;

/// Every example compiles with `-Wall -Wextra -Werror` against the generated header.
#[test]
fn every_example_compiles_with_warnings_as_errors() {
    for name in [
        "minimal",
        "kv_counter",
        "triple_board",
        "ack_counter",
        "embed",
    ] {
        let exe = compile(name, "", &[]);
        assert!(exe.is_file(), "{name}");
    }
}

/// Compiles a translation unit that includes only the header, with `compiler` and `flags`.
fn compile_header_only(compiler: &str, flags: &[&str], ext: &str) {
    let a = artifacts();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join(format!("h.{ext}"));
    std::fs::write(
        &src,
        "#include <shmsnap.h>\nint main(void) { return shmsnap_version() == 0; }\n",
    )
    .unwrap();
    let out = Command::new(compiler)
        .args(flags)
        .arg("-I")
        .arg(&a.include)
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(dir.path().join("h.o"))
        .output()
        .expect("run the compiler");
    assert!(
        out.status.success(),
        "{compiler} {flags:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_header_is_clean_strict_c99_and_cxx() {
    compile_header_only(
        "cc",
        &["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"],
        "c",
    );
    compile_header_only(
        "c++",
        &["-std=c++11", "-Wall", "-Wextra", "-Wpedantic", "-Werror"],
        "cc",
    );
}

#[test]
fn the_pkg_config_file_builds_a_client_and_names_this_version() {
    let a = artifacts();
    let pc = |args: &[&str]| {
        let out = Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", a.include.parent().unwrap())
            .arg(format!("--define-variable=libdir={}", a.lib_dir.display()))
            .args(args)
            .arg("shmsnap")
            .output()
            .expect("run pkg-config");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(pc(&["--modversion"]).trim(), env!("CARGO_PKG_VERSION"));
    let flags = pc(&["--cflags", "--libs"]);
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("minimal");
    let out = Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror"])
        .arg(a.examples.join("minimal.c"))
        .args(flags.split_whitespace())
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Outside the host it says why it cannot run, through shmsnap_error_message.
    let out = Command::new(&exe)
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LISTEN_PID is not set"), "{err}");
}

/// Runs the embedding example; returns (stdout, stderr).
fn run_embed(exe: &std::path::Path, env: &[(&str, &str)]) -> (String, String) {
    let out = Command::new(exe)
        .envs(env.iter().copied())
        .output()
        .expect("run embed");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(0), "embed failed:\n{so}\n{se}");
    (so, se)
}

#[test]
fn the_embedding_example_restores_exactly_what_was_committed() {
    let exe = compile("embed", "", &[]);
    let (out, _) = run_embed(&exe, &[]);
    for line in [
        "embed: a second writer is refused",
        "exactly as committed",
        "board exactly as published",
        "embed: ok",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

const ASAN: &[&str] = &["-fsanitize=address", "-fno-omit-frame-pointer", "-g"];

#[test]
fn the_embedding_example_is_clean_under_address_sanitizer() {
    let exe = compile("embed", "-asan", ASAN);
    // Leak checking on (the default on x86-64 Linux, made explicit): every handle the example
    // opens must be freed by its close.
    let (out, err) = run_embed(&exe, &[("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")]);
    assert!(out.contains("embed: ok"), "{out}");
    assert!(!err.contains("AddressSanitizer"), "{err}");
}

/// The host's `run` of a C client with `args`, to completion; returns its stdout.
fn run_to_exit(state: &std::path::Path, host_args: &[&str], client: &[&OsStr]) -> String {
    let mut host = run_host(state, host_args, client);
    let status = host.wait_timeout(SLOW).expect("the host exits");
    assert_eq!(
        status.code(),
        Some(0),
        "host:\n{}\n{}",
        host.out.text(),
        host.err.text()
    );
    host.out.text()
}

#[test]
fn the_minimal_client_counts_its_starts_under_the_host() {
    let exe = compile("minimal", "", &[]);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("counter.snap");
    let args = ["--strategy", "queue", "--size", "1M"];
    for n in 1..=3 {
        let out = run_to_exit(&state, &args, &[exe.as_os_str()]);
        let want = format!("minimal: start number {n}");
        assert!(out.lines().any(|l| l == want), "start {n}: {out}");
    }
    assert_verifies(&state);
}

#[test]
fn the_kv_client_under_address_sanitizer_restores_and_continues_under_the_host() {
    let exe = compile("kv_counter", "-asan", ASAN);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("kv.snap");
    let args = ["--strategy", "queue", "--size", "2M", "--interval", "20ms"];
    let env_exe = exe.as_os_str();
    for (limit, restored) in [("2000", 0), ("4000", 2000)] {
        let mut host = {
            let mut c = shmsnap(["run", "--state"]);
            c.arg(&state)
                .args(args)
                .env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
                .arg("--")
                .args([env_exe, OsStr::new("0"), OsStr::new(limit)]);
            Proc::spawn(c)
        };
        let status = host.wait_timeout(SLOW).expect("the host exits");
        let (out, err) = (host.out.text(), host.err.text());
        assert_eq!(status.code(), Some(0), "{out}\n{err}");
        assert!(
            out.contains(&format!("restored {restored} ops, all 32 counters correct")),
            "{out}"
        );
        assert!(out.contains(&format!("c-kv: done at {limit} ops")), "{out}");
        assert!(
            !err.contains("AddressSanitizer") && !out.contains("CORRUPT"),
            "{out}\n{err}"
        );
    }
    assert_verifies(&state);
}
