//! A small HTTP/1.1 forwarder on loopback, for the replica tests: it stands between the host
//! and the test S3 server and misbehaves on purpose, as networks and stores do.
//!
//! Each request is read whole (head and `Content-Length` body), shown to the test's rule, and
//! then, as the rule says, forwarded (on a fresh upstream connection, with `Connection:
//! close`, so that each client connection carries one request), forwarded with its answer
//! dropped, answered 500, reset, or left hanging. Every request the rule saw is recorded.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as the rule sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path and query.
    pub target: String,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(&self.target)
    }

    /// A conditional `PUT` of a key ending in `/lease` (a lease write).
    pub fn is_lease_write(&self) -> bool {
        self.method == "PUT"
            && self.path().ends_with("/lease")
            && (self.header("if-match").is_some() || self.header("if-none-match").is_some())
    }
}

/// What the proxy does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward it and its answer.
    Forward,
    /// Forward it (the server applies it), read the answer, and close the client's connection
    /// without it: the client cannot tell whether the request was applied.
    DropAnswer,
    /// Answer `500 Internal Server Error` without forwarding.
    Fail500,
    /// Forward it (the server applies it), then answer `500` instead of the server's answer:
    /// the client retries a request that was applied.
    Apply500,
    /// Reset the connection without forwarding.
    Reset,
    /// Never answer (a network black hole), until the proxy stops.
    Hang,
    /// Wait this long, then forward (a slow link).
    Delay(Duration),
}

type Rule = Box<dyn FnMut(&Request) -> Action + Send>;

/// The running proxy; stopped on drop.
pub struct Proxy {
    port: u16,
    rule: Arc<Mutex<Rule>>,
    seen: Arc<Mutex<Vec<(Request, Action)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy in front of `127.0.0.1:upstream` with `rule`.
    pub fn start(upstream: u16, rule: impl FnMut(&Request) -> Action + Send + 'static) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let rule: Arc<Mutex<Rule>> = Arc::new(Mutex::new(Box::new(rule)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, st) = (rule.clone(), seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (r, s, st) = (r.clone(), s.clone(), st.clone());
                        std::thread::spawn(move || serve(client, upstream, &r, &s, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            port,
            rule,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Replaces the rule.
    pub fn set_rule(&self, rule: impl FnMut(&Request) -> Action + Send + 'static) {
        *self.rule.lock().unwrap() = Box::new(rule);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far with what was done to it.
    pub fn seen(&self) -> Vec<(Request, Action)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    rule: &Mutex<Rule>,
    seen: &Mutex<Vec<(Request, Action)>>,
    stop: &AtomicBool,
) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let Some((req, head, body)) = read_request(&mut client) else {
        return;
    };
    let action = (rule.lock().unwrap())(&req);
    seen.lock().unwrap().push((req, action));
    if let Action::Delay(d) = action {
        std::thread::sleep(d);
    }
    match action {
        Action::Forward | Action::DropAnswer | Action::Delay(_) => {
            let Some(answer) = forward(upstream, &head, &body) else {
                return reset(client);
            };
            if action != Action::DropAnswer {
                let _ = client.write_all(&answer);
                let _ = client.flush();
                let _ = client.shutdown(Shutdown::Write);
                // Let the client read the answer before the socket goes.
                let mut sink = [0u8; 1024];
                let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
                while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
            } else {
                reset(client);
            }
        }
        Action::Apply500 => {
            if forward(upstream, &head, &body).is_none() {
                return reset(client);
            }
            let _ = client.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let _ = client.shutdown(Shutdown::Write);
        }
        Action::Fail500 => {
            let _ = client.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let _ = client.shutdown(Shutdown::Write);
        }
        Action::Reset => reset(client),
        Action::Hang => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Closes with a reset (`SO_LINGER` 0).
fn reset(client: TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO));
    drop(client);
}

/// Reads one request: (parsed, head bytes rewritten with `Connection: close`, body).
fn read_request(client: &mut TcpStream) -> Option<(Request, Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = client.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in &headers {
        if k != "connection" {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("connection: close\r\n\r\n");
    Some((
        Request {
            method,
            target,
            headers,
        },
        head.into_bytes(),
        body,
    ))
}

/// Sends the request upstream and reads the whole answer (until the server closes).
fn forward(upstream: SocketAddr, head: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    s.write_all(head).ok()?;
    s.write_all(body).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    Some(answer)
}
