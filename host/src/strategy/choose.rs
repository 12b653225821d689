//! The one place a strategy kind (`--strategy`, and the rest of `run`'s configuration)
//! becomes a [`Strategy`].

use shmsnap_linux::chain::CompactionPolicy;

use super::{exit, queue, triple, Strategy, StrategyKind};
use crate::config::RunConfig;

/// The strategy `kind` with the default compaction policy (tests).
#[cfg(test)]
pub fn from_kind(kind: StrategyKind) -> Box<dyn Strategy> {
    from_kind_with(kind, Some(CompactionPolicy::default()))
}

/// The strategy of `shmsnap run`'s configuration (`--strategy`, `--incremental`,
/// `--compact-ratio`, `--compact-deltas`).
pub fn from_config(config: &RunConfig) -> Box<dyn Strategy> {
    from_kind_with(
        config.strategy,
        config.incremental.then_some(config.compaction),
    )
}

/// The strategy `kind` (the one place a kind becomes a strategy); the queue strategy takes
/// deltas under `policy` (`None`: bases only).
fn from_kind_with(kind: StrategyKind, policy: Option<CompactionPolicy>) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::Exit => Box::new(exit::Exit),
        StrategyKind::Queue => Box::new(queue::Queue::new(policy)),
        StrategyKind::Triple => Box::new(triple::Triple::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_command_line_strategy_has_its_own_code() {
        assert_eq!(from_kind(StrategyKind::Exit).kind(), StrategyKind::Exit);
        assert_eq!(from_kind(StrategyKind::Queue).kind(), StrategyKind::Queue);
        assert_eq!(from_kind(StrategyKind::Triple).kind(), StrategyKind::Triple);
    }
}
