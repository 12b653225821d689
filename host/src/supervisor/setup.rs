//! Everything before the event loop: the region (restored, empty or inherited), the
//! snapshotter on its thread, the service manager, the signal thread, the first client.

use std::process::ExitCode;
use std::sync::mpsc::{self, Sender};
use std::time::Instant;

use shmsnap_linux::listen::{take_listen_fd, ListenError};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::Memfd;
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM, SIGUSR1};
use tracing::{info, warn};

use super::client::{self, resolve_command, ClientSpec};
use super::restart::RestartPolicy;
use super::worker::{Requests, Worker};
use super::{start_metrics, Event, Supervisor};
use crate::config::RunConfig;
use crate::exit::{Code, Failure, FinalSnapshot};
use crate::flow::{Origin, Point};
use crate::notify::Notifier;
use crate::snap::Snapshotter;
use crate::startup::{open_persister, prepare_region, Prepared};
use crate::strategy::{self, OnUsr1};
use crate::watchdog::Watchdog;

/// Runs the supervisor until the client is done (per the restart policy) or a stop signal.
///
/// # Errors
///
/// A [`Failure`] for anything that prevents starting (bad snapshot, unwritable directory,
/// command not found, ...). Once the client runs, problems are logged, not fatal.
pub fn run(args: RunConfig) -> Result<ExitCode, Failure> {
    let standby = args.standby;
    let Some(mut sup) = start(args)? else {
        // A standby told to stop before its client started (logged where it stopped).
        info!("exiting with status 0");
        return Ok(ExitCode::SUCCESS);
    };
    let status = sup.event_loop();
    client::kill_tree(sup.cgroup.as_ref());
    if let Some(cg) = sup.cgroup.take() {
        cg.remove();
    }
    let lost = sup.lease_lost.take();
    // Lets a running snapshot finish: a copy is never cut short by the exit. (The uploader
    // and the lease thread end with it.)
    sup.worker.stop();
    let status = status?;
    if let Some(loss) = lost {
        if standby {
            // Its region is this run's history, not the new primary's: out of the fd store.
            sup.notifier.remove_fd(&sup.spec.fd_name);
            // Everything else of this run goes with the exec (close-on-exec fds, threads).
            return become_standby(&loss);
        }
        let who = loss
            .holder
            .map_or("nobody is known to hold it".to_owned(), |h| {
                format!("{h} holds it")
            });
        return Err(Failure::new(
            Code::TempFail,
            format!(
                "{}; the client was stopped ({who}). Start this host again with --standby to \
                 follow the new primary, or once it is stopped",
                loss.why
            ),
        ));
    }
    info!("exiting with status {status}");
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
}

/// A primary that lost its lease, run with `--standby`: it runs again as a new process (the
/// same command line: a fresh run id, every thread and lock of this run gone), which finds
/// the lease held and stands by — or, if nobody took it (an outage), takes it back with its
/// local state checked against the bucket.
fn become_standby(loss: &crate::replica::keeper::Loss) -> Result<ExitCode, Failure> {
    use std::os::unix::process::CommandExt;
    info!(
        "role change: primary -> standby ({}); starting again as a standby",
        loss.why
    );
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new("/proc/self/exe")
        .args(args)
        .exec();
    Err(Failure::new(
        Code::OsErr,
        format!("cannot start again as a standby: {err}"),
    ))
}

/// Sets everything up and starts the first client; `None` for a standby stopped by SIGTERM
/// or SIGINT before its client started.
///
/// # Errors
///
/// A [`Failure`] for anything that prevents starting (bad snapshot, unwritable directory,
/// command not found, ...).
pub fn start(args: RunConfig) -> Result<Option<Supervisor>, Failure> {
    let program = args
        .command
        .first()
        .ok_or_else(|| Failure::new(Code::Usage, "no command given"))?;
    resolve_command(program)?;
    // Before any thread starts: the environment changes (LISTEN_*), and fd 3 is reserved so
    // no later fd can take the slot the client's region goes to.
    let inherited = inherited_region(&args.fd_name);
    shmsnap_linux::handover::reserve_fd3()
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot reserve fd 3: {e}")))?;
    let persister = open_persister(&args.state, args.keep)?;
    // Under the state lock: a predecessor's leftovers in the client cgroup are killed here.
    let cgroup = crate::cgroup::setup(args.cgroup, &args.state);
    // Before the replica: a standby's role and lag are served while it stands by.
    let metrics = start_metrics(args.metrics)?;
    // Under the state lock, before the region: the lease, and the state from the replica
    // when the state file is missing (a new machine); with --standby, all of standing by.
    let opts = crate::replica::Options {
        keep: args.replica_keep,
        ttl: args.lease_ttl,
        standby: args.standby,
    };
    // A standby may stand by for days: SIGTERM/SIGINT must stop it cleanly (exit 0, the
    // lease released if it took it) until the signal thread below takes them over.
    let stop = if args.standby && args.replica.is_some() {
        Some(crate::replica::standby::Stop::register()?)
    } else {
        None
    };
    let replica = match args.replica.as_deref() {
        None => None,
        Some(url) => {
            match crate::replica::start(
                url,
                opts,
                &persister,
                args.fallback,
                &metrics,
                stop.as_ref(),
            )? {
                Some(started) => Some(started),
                None => return Ok(None),
            }
        }
    };
    // A standby that took over from another host: the state file now holds the bucket's
    // newest point; a region in the fd store is from this machine's earlier stint as primary,
    // another history. Dropped (and replaced in the store below).
    let (inherited, dropped) = match inherited {
        Some(m)
            if replica
                .as_ref()
                .is_some_and(crate::replica::Started::took_over) =>
        {
            warn!(
                "not reusing the region from the service manager's fd store: this host took \
                 over from another one, and the state file holds the bucket's newest point"
            );
            shmsnap_linux::handover::close_keeping_fd3(m.into_fd()).map_err(|e| {
                Failure::new(Code::OsErr, format!("cannot close the stale region: {e}"))
            })?;
            (None, true)
        }
        other => (other, false),
    };
    let from_store = inherited.is_some();
    let (Prepared { memfd, restored }, moved) = region(&args, &persister, inherited)?;
    let moved = moved || dropped;
    let origin = match (&restored, from_store) {
        (_, true) => Origin::FdStore,
        (Some(info), false) => Origin::Restored(info),
        (None, false) => Origin::Empty,
    };
    let mut strategy = strategy::choose::from_config(&args);
    strategy.attach_cgroup(cgroup.as_ref().map(crate::cgroup::ClientCgroup::dir));
    let schedule = strategy.schedule();
    let status_area = strategy.status_area();
    let restored_generation = restored.as_ref().map(|info| info.meta.generation);
    let mut snap = Snapshotter::new(persister, strategy, memfd, origin)?;
    if let Ok(len) = snap.memfd().len() {
        metrics.set_region_size(len);
    }
    snap.attach_metrics(&metrics);
    // A client's request goes from the watcher straight to the snapshot thread's queue
    // (DESIGN §14) when the strategy takes snapshots on demand (SIGUSR1's path).
    let requests = Requests::default();
    let on_demand = matches!(schedule.on_usr1, OnUsr1::Snapshot);
    let (tx, events, watcher) = event_sources(&snap, status_area && on_demand, &requests)?;
    if let Some(sig) = stop
        .as_ref()
        .and_then(crate::replica::standby::Stop::signal)
    {
        // Came after the standby's last check and before the signal thread: the client is
        // stopped as soon as it runs (its final snapshot, then the lease released).
        let _ = tx.send(Event::Signal(sig));
    }
    if let Some(started) = replica {
        if let Some(floor) = started.floor() {
            snap.raise_generation_floor(floor);
        }
        attach_replica(&mut snap, started, &metrics, restored_generation, &tx)?;
    }
    let notifier = Notifier::from_env();
    if moved {
        notifier.replace_fd(snap.memfd(), &args.fd_name);
    } else {
        notifier.store_fd(snap.memfd(), &args.fd_name);
    }
    let spec = ClientSpec::of(&args);
    let mut cmd = client::command(&spec, snap.memfd(), cgroup.as_ref())?;

    let worker = Worker::spawn(snap, tx.clone(), metrics.clone(), &requests)?;
    // Spawned from this thread, which lives as long as the host: PDEATHSIG fires when the
    // thread that forked the client exits.
    worker.client_starting();
    let client = client::spawn(&mut cmd, &metrics)?;
    worker.client_running(client.pid());
    notifier.ready(&format!("client running; state {}", args.state.display()));
    Ok(Some(Supervisor {
        cmd,
        spec,
        watcher,
        requests,
        status_area: status_area && on_demand,
        cgroup,
        client,
        worker,
        events,
        notifier,
        schedule,
        restart: RestartPolicy::new(args.restart, args.max_backoff),
        interval: args.interval,
        stop_timeout: args.stop_timeout,
        next_tick: schedule.ticks.then(|| Instant::now() + args.interval),
        stop_deadline: None,
        metrics,
        watchdog: Watchdog::from_env(Instant::now()),
        // Until a snapshot is attempted, the disk holds what the region was started from.
        saved: FinalSnapshot::NothingToPersist,
        stop_on_lease_loss: args.stop_on_lease_loss,
        lease_lost: None,
    }))
}

/// Starts the replica's lease and uploader threads and attaches the uploader to `snap` as a
/// sink. The snapshot the region was restored from (generation `restored`) is offered first,
/// so that a bucket missing it gets it even if the client never commits again (one already
/// there stays).
fn attach_replica(
    snap: &mut Snapshotter,
    started: crate::replica::Started,
    metrics: &crate::metrics::Metrics,
    restored: Option<u64>,
    events: &Sender<Event>,
) -> Result<(), Failure> {
    let tx = events.clone();
    started.lease_state().on_loss(Box::new(move |loss| {
        let _ = tx.send(Event::LeaseLost(loss));
    }));
    let shipper = started.spawn(metrics.clone(), snap.status())?;
    if let Some(generation) = restored {
        shipper.offer(
            Point::Base { generation },
            &snap.target(),
            snap.published_seq(),
        );
    }
    snap.attach_sink(Box::new(shipper));
    Ok(())
}

/// The supervisor's event channel and what feeds it besides the worker and the client: the
/// signal thread; and the thread that turns a client's snapshot request into a job on
/// `requests`, the snapshot thread's queue (merged with every other request, as SIGUSR1's),
/// when `watch` (the strategy has a status area and snapshots on demand). Makes this process
/// the child subreaper first, so that the client's orphans are reaped here.
fn event_sources(
    snap: &Snapshotter,
    watch: bool,
    requests: &Requests,
) -> Result<
    (
        Sender<Event>,
        mpsc::Receiver<Event>,
        crate::durable::Watcher,
    ),
    Failure,
> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot become a child subreaper: {e}")))?;
    let (tx, events) = mpsc::channel();
    signal_thread(tx.clone())?;
    let requests = requests.clone();
    let watcher = crate::durable::watch_requests(snap.memfd(), watch, move || {
        requests.client_request(std::time::Instant::now())
    })
    .map_err(|e| Failure::new(Code::OsErr, format!("cannot start the request thread: {e}")))?;
    Ok((tx, events, watcher))
}

/// The region: the inherited one (moved to a fresh memfd if its client sealed it, grown to
/// `--size`), or a new one with the newest snapshot restored into it. `true`: the inherited
/// region was moved (the fd store must get the new one).
fn region(
    args: &RunConfig,
    persister: &Persister,
    inherited: Option<Memfd>,
) -> Result<(Prepared, bool), Failure> {
    let Some(memfd) = inherited else {
        return Ok((prepare_region(persister, args.size, args.fallback)?, false));
    };
    let (memfd, moved) = unsealed(memfd)?;
    let len = memfd.len().map_err(|e| {
        Failure::new(
            Code::OsErr,
            format!("cannot stat the inherited region: {e}"),
        )
    })?;
    // `--size` is a minimum: a larger inherited region (a client grew it) is kept as it is.
    let size = args.size.map_or(len, |s| s.max(len));
    if size > len {
        memfd.grow(size).map_err(|e| {
            Failure::new(
                Code::OsErr,
                format!("cannot grow the inherited region from {len} to {size} bytes: {e}"),
            )
        })?;
    }
    info!(
        "reusing the region from the service manager's fd store ({size} bytes; no restore from disk)"
    );
    let prepared = Prepared {
        memfd,
        restored: None,
    };
    Ok((prepared, moved))
}

/// The inherited region, or — if its client sealed it against writes (write tracking,
/// DESIGN §11), which no new client could map writable — a fresh copy of it; `true` if
/// copied. The old memfd is dropped here (the fd store keeps it until it is replaced).
fn unsealed(memfd: Memfd) -> Result<(Memfd, bool), Failure> {
    let os = |what: &str, e: std::io::Error| {
        Failure::new(Code::OsErr, format!("{what} the inherited region: {e}"))
    };
    if !memfd
        .is_write_sealed()
        .map_err(|e| os("cannot read the seals of", e))?
    {
        return Ok((memfd, false));
    }
    let t = Instant::now();
    let (fresh, stats) = memfd
        .fresh_copy(crate::startup::REGION_NAME)
        .map_err(|e| os("cannot move", e))?;
    // It sits at fd 3 (LISTEN_FDS), which must stay occupied.
    shmsnap_linux::handover::close_keeping_fd3(memfd.into_fd())
        .map_err(|e| os("cannot close", e))?;
    info!(
        data_bytes = stats.bytes,
        ms = t.elapsed().as_secs_f64() * 1e3,
        "moved the inherited region into a fresh memfd: its last client had sealed it against \
         other writers (write tracking), and the next client must be able to map it writable"
    );
    Ok((fresh, true))
}

/// The region fd passed by the service manager (fd store), if any.
fn inherited_region(name: &str) -> Option<Memfd> {
    match take_listen_fd(name) {
        Ok(fd) => match Memfd::from_fd(fd) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("ignoring the passed fd named {name}: {e}");
                None
            }
        },
        Err(ListenError::Missing { .. }) => None,
        Err(e) => {
            warn!("ignoring LISTEN_FDS: {e}");
            None
        }
    }
}

/// A thread that waits for signals (signal-hook) and forwards them as events.
fn signal_thread(tx: Sender<Event>) -> Result<(), Failure> {
    let mut signals = signal_hook::iterator::Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot install signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot start the signal thread: {e}")))?;
    Ok(())
}
