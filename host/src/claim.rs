//! One writer per region, the host's part (DESIGN §5.1, §8): clearing the claim a dead client
//! left in the region, so that its restart can attach.
//!
//! A client takes the region's claim when its writer attaches and releases it when the writer
//! is dropped; a client killed by a signal never releases it. The host knows when its client
//! is dead: it reaped it and killed its descendants (and, at start, a predecessor's leftovers).
//! [`reclaim`] is called then — after the final snapshot of an exited client, before its
//! restart; and at start, for a region inherited from the fd store — and clears the claim
//! through the host's read-write mapping of the header page
//! ([`shmsnap_linux::status::reclaim_dead_claim`]).

use shmsnap_linux::status::{reclaim_dead_claim, ClaimWord};
use shmsnap_linux::Memfd;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::strategy::StrategyKind;

/// Clears the claim a dead client left on `memfd`'s region (`when`: for the log line), if
/// any; `true` if one was cleared (logged at info with the holder's pid, and counted in
/// `metrics`). Under the exit strategy the region may not be a shmsnap region: the claim is
/// cleared only under a queue or triple header.
///
/// Call it only when no client of the region can be running.
pub fn reclaim(
    memfd: &Memfd,
    strategy: StrategyKind,
    metrics: Option<&Metrics>,
    when: &str,
) -> bool {
    let whose = match strategy {
        StrategyKind::Exit => ClaimWord::IfShmsnapHeader,
        StrategyKind::Queue | StrategyKind::Triple => ClaimWord::Ours,
    };
    match reclaim_dead_claim(memfd, whose) {
        Ok(Some(holder)) => {
            info!(
                holder_pid = holder.pid(),
                claim = holder.get(),
                "cleared the region's claim held by pid {} ({when}: the client and its \
                 descendants were stopped), so the next client can attach",
                holder.pid()
            );
            if let Some(m) = metrics {
                m.claim_reclaimed();
            }
            true
        }
        Ok(None) => false,
        Err(e) => {
            warn!(
                "cannot clear a dead client's claim on the region ({when}): {e}; a restarted \
                 client may be refused as a second writer"
            );
            false
        }
    }
}
