//! systemd integration: the fd store and readiness/status notifications (`sd-notify`).
//!
//! Active only when `NOTIFY_SOCKET` is set. The memfd is pushed to the service manager's fd
//! store (`FDSTORE=1`, `FDNAME=<name>`, `FDPOLL=0`), so a restarted host gets it back through
//! `LISTEN_FDS` with every byte the client committed, even if the host was SIGKILLed before
//! its last snapshot.
//!
//! When the host moves the region into a fresh memfd (its client sealed the old one against
//! writes, DESIGN §11), [`Notifier::replace_fd`] removes the stored fd by name and stores the
//! new one: two messages, because systemd reads `FDSTOREREMOVE=1` *or* `FDSTORE=1` in one.
//! A host killed between them leaves no region in the store; the next host then restores from
//! disk, which holds the region's state: the move happens only after the client's final
//! snapshot.

use std::os::fd::AsFd;

use sd_notify::NotifyState;
use tracing::warn;

/// Sends notifications if the process runs under a service manager.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier that is active iff `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
        }
    }

    /// Whether notifications are sent.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Replaces the fd stored under `name` by `fd` (`FDSTOREREMOVE=1`, then [`store_fd`]).
    ///
    /// [`store_fd`]: Notifier::store_fd
    pub fn replace_fd(&self, fd: impl AsFd, name: &str) {
        if !self.enabled {
            return;
        }
        let states = [NotifyState::FdStoreRemove, NotifyState::FdName(name)];
        if let Err(e) = sd_notify::notify(&states) {
            warn!("could not remove the old region from the service manager's fd store: {e}");
        }
        self.store_fd(fd, name);
    }

    /// Removes the fd stored under `name` (`FDSTOREREMOVE=1`): a region that must not be
    /// given to the next start.
    pub fn remove_fd(&self, name: &str) {
        if !self.enabled {
            return;
        }
        let states = [NotifyState::FdStoreRemove, NotifyState::FdName(name)];
        if let Err(e) = sd_notify::notify(&states) {
            warn!("could not remove the region from the service manager's fd store: {e}");
        }
    }

    /// Pushes the region fd to the fd store under `name`.
    pub fn store_fd(&self, fd: impl AsFd, name: &str) {
        if !self.enabled {
            return;
        }
        let name = format!("FDNAME={name}");
        let states = [
            NotifyState::FdStore,
            NotifyState::Custom(&name),
            NotifyState::Custom("FDPOLL=0"),
        ];
        if let Err(e) = sd_notify::notify_with_fds(&states, &[fd.as_fd()]) {
            warn!("could not push the region to the service manager's fd store: {e}");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A `STATUS=` line.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                warn!("could not notify the service manager: {e}");
            }
        }
    }
}
