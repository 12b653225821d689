//! The smallest useful client: counts its own restarts in the region.
//!
//! ```text
//! cargo build --release -p shmsnap --example minimal_client
//! target/release/shmsnap run --state counter.snap --strategy queue -- \
//!     target/release/examples/minimal_client
//! ```
//!
//! Each start reads the newest committed counter (restored by the host), adds one and commits
//! it. Kill it any way you like; the count never goes backwards.

use std::error::Error;

use shmsnap_core::LayoutRequest;
use shmsnap_linux::ClientRegion;

fn main() -> Result<(), Box<dyn Error>> {
    let mut region = ClientRegion::from_host()?; // fd 3, the systemd way
    let request = LayoutRequest {
        entries: 64,
        data_size: 4096,
    };
    let mut writer = region.writer(request)?; // one writer per region, claimed with our pid
    let mut starts = 0u64;
    if let Some(newest) = writer.region().newest() {
        let mut buf = [0u8; 8];
        writer.region().read_payload(&newest, &mut buf)?;
        starts = u64::from_le_bytes(buf);
    }
    starts += 1;
    writer.commit(&starts.to_le_bytes())?; // wait-free; the host snapshots it
    println!("minimal_client: start number {starts}");
    Ok(())
}
