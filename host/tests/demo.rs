//! `shmsnap demo` (the README's main command) runs, survives its kills and cleans up.

use std::process::Command;

#[test]
fn demo_restores_verified_primes_after_client_and_host_kills_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_shmsnap"))
        .args(["demo", "--kills", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let (_, rest) = l
                .split_once(" with ")
                .or_else(|| l.split_once("restored "))?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    // Start (0), after the client kill, after the host kill: never fewer primes.
    assert_eq!(restored.len(), 3, "{text}");
    assert!(restored.windows(2).all(|w| w[0] <= w[1]), "{text}");
    assert!(restored[2] > 0, "{text}");
    assert!(text.contains(": sound ("), "{text}");
    let dir = text
        .lines()
        .find_map(|l| l.strip_prefix("demo: writing to "))
        .and_then(|l| l.split(" (").next())
        .unwrap();
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}
