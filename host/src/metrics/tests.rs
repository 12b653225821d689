//! The metrics families and their HTTP endpoint, scraped with a real HTTP client.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use super::*;

fn serve() -> (Metrics, SocketAddr) {
    let m = Metrics::new();
    let addr = m.serve("127.0.0.1:0".parse().unwrap()).unwrap();
    (m, addr)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, content type, body) of `GET http://addr/path`.
fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut req = agent().get(format!("http://{addr}{path}"));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let mut resp = req.call().expect("scrape");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.body_mut().read_to_string().unwrap();
    (resp.status().as_u16(), ct, body)
}

/// Every sample of a text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                k.to_owned(),
                v.parse().unwrap_or_else(|_| panic!("bad value {l:?}")),
            )
        })
        .collect()
}

fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, ct, body) = get(addr, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    samples(&body)
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("{key} missing; have {:#?}", s.keys()))
}

fn persisted(generation: u64) -> SnapshotRecord {
    SnapshotRecord {
        result: Some(SnapshotResult::Persisted),
        phases: vec![
            (Phase::Scan, Duration::from_micros(300)),
            (Phase::Copy, Duration::from_millis(3)),
            (Phase::Validate, Duration::from_micros(20)),
            (Phase::Sync, Duration::from_millis(2)),
            (Phase::Rename, Duration::from_micros(100)),
        ],
        bytes_copied: 4096,
        entries_kept: 5,
        entries_dropped: 1,
        generation: Some(generation),
        unproven: None,
    }
}

#[test]
fn scraped_values_move_with_the_recorded_events() {
    let (m, addr) = serve();
    let before = scrape(addr);
    for r in ["persisted", "skipped", "starved", "failed"] {
        assert_eq!(
            value(
                &before,
                &format!("shmsnap_snapshots_total{{result=\"{r}\"}}")
            ),
            0.0
        );
    }
    assert_eq!(value(&before, "shmsnap_client_starts_total"), 0.0);
    assert_eq!(
        value(&before, "shmsnap_last_persisted_snapshot_timestamp_seconds"),
        0.0
    );
    assert!(value(&before, "shmsnap_last_persisted_snapshot_age_seconds") >= 0.0);
    assert_eq!(value(&before, "shmsnap_build_info{version=\"0.1.0\"}"), 1.0);
    for r in [
        "not_sealed",
        "registration",
        "other_writer",
        "census_failed",
    ] {
        let k = format!("shmsnap_incremental_unproven_total{{reason=\"{r}\"}}");
        assert_eq!(value(&before, &k), 0.0, "{k}");
    }

    m.set_region_size(2 << 20);
    m.client_started();
    m.client_started();
    m.client_exited(ClientExit::Signal(9));
    m.client_exited(ClientExit::Code(3));
    m.client_exited(ClientExit::SpawnFailed);
    m.record_snapshot(&persisted(7));
    m.record_phase(Phase::Upload, Duration::from_millis(40));
    m.record_snapshot(&SnapshotRecord {
        unproven: Some("other_writer"),
        ..persisted(8)
    });
    m.record_snapshot(&SnapshotRecord {
        result: Some(SnapshotResult::Starved),
        phases: vec![(Phase::Copy, Duration::from_millis(1))],
        bytes_copied: 100,
        entries_dropped: 2,
        ..Default::default()
    });
    m.record_snapshot(&SnapshotRecord {
        result: Some(SnapshotResult::Skipped),
        ..Default::default()
    });
    m.record_snapshot(&SnapshotRecord::default()); // no result: counts nothing

    let after = scrape(addr);
    let v = |k: &str| value(&after, k);
    assert_eq!(v("shmsnap_region_size_bytes"), (2 << 20) as f64);
    assert_eq!(v("shmsnap_client_starts_total"), 2.0);
    assert_eq!(
        v("shmsnap_client_exits_total{cause=\"signal\",code=\"SIGKILL\"}"),
        1.0
    );
    assert_eq!(
        v("shmsnap_client_exits_total{cause=\"exit\",code=\"3\"}"),
        1.0
    );
    assert_eq!(
        v("shmsnap_client_exits_total{cause=\"spawn_failed\",code=\"\"}"),
        1.0
    );
    assert_eq!(v("shmsnap_snapshots_total{result=\"persisted\"}"), 2.0);
    assert_eq!(v("shmsnap_snapshots_total{result=\"starved\"}"), 1.0);
    assert_eq!(v("shmsnap_snapshots_total{result=\"skipped\"}"), 1.0);
    assert_eq!(v("shmsnap_snapshots_total{result=\"failed\"}"), 0.0);
    assert_eq!(v("shmsnap_snapshot_copied_bytes_total"), 8292.0);
    assert_eq!(v("shmsnap_snapshot_entries_kept_total"), 10.0);
    assert_eq!(v("shmsnap_snapshot_entries_dropped_total"), 4.0);
    assert_eq!(v("shmsnap_snapshot_generation"), 8.0);
    assert_eq!(
        v("shmsnap_incremental_unproven_total{reason=\"other_writer\"}"),
        1.0
    );
    assert_eq!(
        v("shmsnap_incremental_unproven_total{reason=\"registration\"}"),
        0.0
    );
    assert_eq!(
        v("shmsnap_snapshot_phase_duration_seconds_count{phase=\"copy\"}"),
        3.0
    );
    assert_eq!(
        v("shmsnap_snapshot_phase_duration_seconds_count{phase=\"sync\"}"),
        2.0
    );
    // The incremental scan (two persisted records) and the replica upload (one) are phases too.
    assert_eq!(
        v("shmsnap_snapshot_phase_duration_seconds_count{phase=\"scan\"}"),
        2.0
    );
    assert_eq!(
        v("shmsnap_snapshot_phase_duration_seconds_count{phase=\"upload\"}"),
        1.0
    );
    let upload_sum = v("shmsnap_snapshot_phase_duration_seconds_sum{phase=\"upload\"}");
    assert!((upload_sum - 0.04).abs() < 1e-9, "{upload_sum}");
    let copy_sum = v("shmsnap_snapshot_phase_duration_seconds_sum{phase=\"copy\"}");
    assert!((copy_sum - 0.007).abs() < 1e-9, "{copy_sum}");
    // 3 ms and 1 ms lie in the 4 ms bucket (0.5 ms doubling), 2 ms syncs in the 2 ms one.
    assert_eq!(
        v("shmsnap_snapshot_phase_duration_seconds_bucket{phase=\"copy\",le=\"0.004\"}"),
        3.0
    );
    assert_eq!(
        v("shmsnap_snapshot_phase_duration_seconds_bucket{phase=\"copy\",le=\"0.001\"}"),
        1.0
    );
    assert!(v("shmsnap_last_persisted_snapshot_timestamp_seconds") > 1.7e9);
}

#[test]
fn snapshot_age_restarts_from_a_persisted_snapshot_only() {
    let m = Metrics::new();
    let start = *m.age.since.lock().unwrap();
    m.record_snapshot(&SnapshotRecord {
        result: Some(SnapshotResult::Failed),
        ..Default::default()
    });
    assert_eq!(
        *m.age.since.lock().unwrap(),
        start,
        "a failure is not a snapshot"
    );
    m.record_snapshot(&persisted(1));
    assert!(*m.age.since.lock().unwrap() > start);
}

/// The replica lag is computed at scrape time: a replica behind since 5 s ago reads at least
/// 5 s in the scrape without any further update (it used to freeze at its last update while an
/// upload or an outage held the uploader up), and 0 once caught up.
#[test]
fn replica_lag_grows_at_scrape_time_and_is_zero_when_caught_up() {
    let m = Metrics::new();
    let text = |m: &Metrics| samples(&m.encode(Format::Prometheus));
    assert_eq!(value(&text(&m), "shmsnap_replica_lag_seconds"), 0.0);
    let five_ago = std::time::Instant::now()
        .checked_sub(std::time::Duration::from_secs(5))
        .expect("the clock is past 5 s");
    m.replica_behind_since(Some(five_ago));
    assert!(value(&text(&m), "shmsnap_replica_lag_seconds") >= 5.0);
    m.replica_behind_since(None);
    assert_eq!(value(&text(&m), "shmsnap_replica_lag_seconds"), 0.0);
}

/// `promtool check metrics` on `text`: `Some(clean, report)`, or `None` when promtool is not
/// installed (a failure when `CI` is set: `.ci/run` installs it).
fn promtool(text: &str) -> Option<(bool, String)> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("promtool is required in CI (apt-get install prometheus): {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: promtool not found ({e}); apt-get install prometheus");
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits non-zero on parse errors and on lint findings ("counter metrics should
    // have \"_total\" suffix", ...), and prints them.
    Some((out.status.success() && report.trim().is_empty(), report))
}

#[test]
fn scraped_text_passes_promtool() {
    let (m, addr) = serve();
    m.record_snapshot(&persisted(1));
    m.client_started();
    m.client_exited(ClientExit::Signal(15));
    let (_, _, text) = get(addr, "/metrics", None);
    if let Some((clean, report)) = promtool(&text) {
        assert!(clean, "promtool:\n{report}\n{text}");
    }
}

#[test]
fn promtool_rejects_a_misnamed_counter() {
    // The twin of the test above: promtool must be able to fail.
    let text = "# HELP shmsnap_snapshots Snapshots.\n# TYPE shmsnap_snapshots counter\nshmsnap_snapshots 1\n";
    if let Some((clean, report)) = promtool(text) {
        assert!(
            !clean,
            "promtool accepted a counter without _total: {report}"
        );
    }
}

#[test]
fn openmetrics_is_served_when_the_scraper_asks_for_it() {
    let (_m, addr) = serve();
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (status, ct, body) = get(addr, "/metrics?x=1", Some(accept));
    assert_eq!(status, 200);
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE shmsnap_snapshots counter"), "{body}");
}

#[test]
fn other_paths_and_methods_are_refused() {
    let (_m, addr) = serve();
    assert_eq!(get(addr, "/", None).0, 404);
    assert_eq!(get(addr, "/metricsx", None).0, 404);
    let resp = agent()
        .post(format!("http://{addr}/metrics"))
        .send("x")
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
}

/// Sends raw bytes, returns whatever the server answers before it closes.
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may close before reading everything (too long a head): ignore EPIPE.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_requests_get_no_metrics_and_do_not_stop_the_server() {
    let (_m, addr) = serve();
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 << 10));
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(
        raw(addr, &huge),
        "",
        "a head over 8 KiB is dropped unanswered"
    );
    assert!(raw(addr, b"\x00\xff garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
    assert!(raw(addr, b"GET /metrics SMTP/1.0\r\n\r\n").starts_with("HTTP/1.1 400 "));
    assert_eq!(
        raw(addr, b"GET /metr"),
        "",
        "a connection closed mid-head is dropped"
    );
    let head = raw(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    assert!(scrape(addr).len() > 10, "the server still answers");
}

#[test]
fn request_heads_parse_strictly() {
    let r = Request::parse(
        b"GET /metrics?a=b HTTP/1.1\r\nHost: x\r\naccept: application/openmetrics-text\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/metrics");
    assert!(r.accepts_openmetrics);
    assert!(Request::parse(b"GET /metrics\r\n\r\n").is_none());
    assert!(Request::parse(b"GET /metrics HTTP/1.1 extra\r\n\r\n").is_none());
    assert!(Request::parse(b"\r\n\r\n").is_none());
}

#[test]
fn metrics_addresses_parse_with_a_hint_on_error() {
    assert_eq!(parse_addr("127.0.0.1:9187").unwrap().port(), 9187);
    assert_eq!(parse_addr("[::1]:0").unwrap().port(), 0);
    assert!(parse_addr("localhost:9187").unwrap().ip().is_loopback());
    let e = parse_addr("9187").unwrap_err();
    assert!(e.contains("127.0.0.1:9187"), "{e}");
}

#[test]
fn signals_are_named_and_unknown_ones_numbered() {
    assert_eq!(signal_name(9), "SIGKILL");
    assert_eq!(signal_name(15), "SIGTERM");
    assert_eq!(signal_name(40), "SIG40");
    assert_eq!(signal_name(0), "SIG0");
    assert_eq!(signal_name(-1), "SIG-1");
}
