//! Prints the module import graph of a crate's sources, one `a -> b` a line, then its cycles:
//! `cargo run -p shmsnap-testkit --example import_graph -- host/src`.

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: import_graph SRC_DIR");
        std::process::exit(64);
    };
    let dir = std::path::PathBuf::from(dir);
    let g = shmsnap_testkit::imports::graph(&dir)?;
    print!("{}", shmsnap_testkit::imports::edges_text(&g));
    for c in shmsnap_testkit::imports::cycles(&dir)? {
        println!("cycle: {}", c.join(", "));
    }
    Ok(())
}
