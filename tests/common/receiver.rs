//! A programmable HTTP/1.1 receiver for the alert delivery tests: what a webhook endpoint,
//! an ntfy server or Alertmanager's webhook target looks like from the sidecar's side.
//!
//! Bound to 127.0.0.1 on a port the OS picks. Each connection gets its own thread, reads
//! one request (Content-Length or chunked body, `Expect: 100-continue` answered), records
//! it, answers with the next scripted [`Reply`] (or the default one) and closes: every
//! answer says `Connection: close`, so no connection outlives its request.
//!
//! [`Receiver::go_down`] closes the listening socket (new connections are refused, ones
//! waiting in the backlog are reset) and shuts every open connection; [`Receiver::come_up`]
//! binds the same port again (std sets `SO_REUSEADDR`, so the server side's TIME_WAIT
//! sockets do not block it).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Read timeout of one connection: a client that sends half a request and stalls is
/// dropped after this (reqwest sends a whole request at once).
const CONNECTION_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted; alert requests have a few hundred bytes of headers.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Largest request body accepted; the biggest channel payload is a few KiB.
const MAX_BODY_BYTES: usize = 4 << 20;
/// How long `come_up` retries binding its old port (another socket may hold it briefly).
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Characters of a body shown per request when a wait times out.
const SHOWN_BODY_CHARS: usize = 300;

/// What the receiver answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Waited after the request is read and recorded, before the answer is written.
    pub delay: Duration,
}

impl Reply {
    /// `200` with a JSON body `{}`.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// `n` with a JSON body `{}` (no body for 204 and 304, which may not have one).
    pub fn status(n: u16) -> Reply {
        let bodyless = n == 204 || n == 304;
        Reply {
            status: n,
            headers: if bodyless {
                Vec::new()
            } else {
                vec![("Content-Type".into(), "application/json".into())]
            },
            body: if bodyless { String::new() } else { "{}".into() },
            delay: Duration::ZERO,
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answers only after `delay`.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// One request as it arrived.
#[derive(Clone)]
pub struct Received {
    pub method: String,
    /// The request target as sent: path and query.
    pub path: String,
    /// Names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the whole request had been read.
    pub at: Instant,
    pub wall: SystemTime,
    /// The status the receiver chose to answer with (the answer may still have failed to
    /// reach a client that hung up, or a receiver that went down during a `delay`).
    pub status: u16,
}

impl Received {
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("request body is not JSON ({e}): {self:?}"))
    }

    /// The `Idempotency-Key` header.
    pub fn key(&self) -> Option<&str> {
        self.header("idempotency-key")
    }
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.text();
        let shown: String = text.chars().take(SHOWN_BODY_CHARS).collect();
        let more = if text.chars().count() > SHOWN_BODY_CHARS {
            "…"
        } else {
            ""
        };
        write!(
            f,
            "{} {} → {} (key {:?}) {shown}{more}",
            self.method,
            self.path,
            self.status,
            self.key().unwrap_or("-")
        )
    }
}

/// What the server threads and the test share.
struct Shared {
    state: Mutex<State>,
    /// Notified on every recorded request.
    arrived: Condvar,
    /// Open connections by id, so `go_down` can shut them.
    connections: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
}

struct State {
    script: VecDeque<Reply>,
    default: Reply,
    requests: Vec<Received>,
}

/// The accept loop of one "up" period.
struct Serving {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A running receiver; stopped on drop.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Option<Serving>,
}

impl Receiver {
    /// Listens on 127.0.0.1 (a free port) and answers `200 {}` until told otherwise.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                script: VecDeque::new(),
                default: Reply::ok(),
                requests: Vec::new(),
            }),
            arrived: Condvar::new(),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
        });
        let mut receiver = Receiver {
            addr,
            shared,
            serving: None,
        };
        receiver.serve(listener);
        receiver
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queues replies used in order, one per request, before the default.
    pub fn script(&self, replies: Vec<Reply>) {
        self.lock().script.extend(replies);
    }

    /// The reply used when the script is used up.
    pub fn set_default(&self, reply: Reply) {
        self.lock().default = reply;
    }

    /// Whether it is accepting connections.
    pub fn is_up(&self) -> bool {
        self.serving.is_some()
    }

    /// Stops listening: from return on, connections to its port are refused, and every
    /// open connection is shut (a client waiting for an answer sees it closed).
    pub fn go_down(&mut self) {
        let Some(serving) = self.serving.take() else {
            return;
        };
        serving.stop.store(true, Ordering::SeqCst);
        // The accept loop blocks in accept(): wake it with a connection of our own. If the
        // connect fails the loop is already gone.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        serving
            .thread
            .join()
            .expect("the receiver's accept loop panicked");
        let open: Vec<TcpStream> = self
            .shared
            .connections
            .lock()
            .unwrap()
            .drain()
            .map(|(_, s)| s)
            .collect();
        for stream in open {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Binds the same port again and serves; panics if the port cannot be had back.
    pub fn come_up(&mut self) {
        if self.serving.is_some() {
            return;
        }
        let deadline = Instant::now() + REBIND_TIMEOUT;
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => {
                    panic!("the receiver cannot bind {} again: {e}", self.addr)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.serve(listener);
    }

    /// Every request so far, in the order they were read.
    pub fn requests(&self) -> Vec<Received> {
        self.lock().requests.clone()
    }

    /// Waits until at least `n` requests arrived; panics with what did arrive.
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(&format!("{n} request(s)"), timeout, |r| r.len() >= n)
    }

    /// Waits until `done` holds for the requests so far; panics after `timeout` naming
    /// `what` and listing every request.
    #[track_caller]
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if done(&state.requests) {
                return state.requests.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let requests = state.requests.clone();
                drop(state);
                panic!(
                    "the receiver at {} did not see {what} within {timeout:?}; it got {} request(s):\n{}",
                    self.addr,
                    requests.len(),
                    show(&requests)
                );
            }
            state = self
                .shared
                .arrived
                .wait_timeout(state, deadline - now)
                .unwrap()
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag) = (self.shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || accept_loop(listener, shared, flag));
        self.serving = Some(Serving { stop, thread });
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.go_down();
    }
}

/// One line per request, for failure messages.
pub fn show(requests: &[Received]) -> String {
    requests
        .iter()
        .enumerate()
        .map(|(i, r)| format!("  #{i} {r:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Accepts until `stop`; the listener is closed when this returns.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break; // the wake-up connection, or a client racing the shutdown: dropped
        }
        let Ok(stream) = stream else { continue };
        let id = shared.next_connection.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            shared.connections.lock().unwrap().insert(id, clone);
        }
        let shared = shared.clone();
        std::thread::spawn(move || {
            handle(stream, &shared);
            shared.connections.lock().unwrap().remove(&id);
        });
    }
}

/// Reads one request, records it, answers and closes.
fn handle(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(CONNECTION_READ_TIMEOUT));
    let Ok(Some(mut request)) = read_request(&mut stream) else {
        return;
    };
    let reply = {
        let mut state = shared.state.lock().unwrap();
        let reply = state
            .script
            .pop_front()
            .unwrap_or_else(|| state.default.clone());
        request.status = reply.status;
        state.requests.push(request);
        shared.arrived.notify_all();
        reply
    };
    if !reply.delay.is_zero() {
        std::thread::sleep(reply.delay);
    }
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status)
    );
    if !matches!(reply.status, 204 | 304) {
        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(reply.body.as_bytes()))
        .and_then(|()| stream.flush());
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads a request head and body; `Ok(None)` if the client closed before a full head.
fn read_request(stream: &mut TcpStream) -> io::Result<Option<Received>> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if raw.len() > MAX_HEAD_BYTES {
            return Err(bad("request head too large".into()));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(bad(format!("bad request line {request_line:?}")));
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let mut rest = raw[head_end..].to_vec();
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        loop {
            if let Some(body) = dechunk_complete(&rest).map_err(bad)? {
                break body;
            }
            if rest.len() > MAX_BODY_BYTES {
                return Err(bad("chunked body too large".into()));
            }
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(bad("connection closed inside a chunked body".into()));
            }
            rest.extend_from_slice(&buf[..n]);
        }
    } else {
        let length: usize = match header("content-length") {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {v:?}")))?,
        };
        if length > MAX_BODY_BYTES {
            return Err(bad(format!("body of {length} bytes is too large")));
        }
        while rest.len() < length {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(bad(format!(
                    "body ended at {} of {length} bytes",
                    rest.len()
                )));
            }
            rest.extend_from_slice(&buf[..n]);
        }
        rest.truncate(length);
        rest
    };
    Ok(Some(Received {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
        at: Instant::now(),
        wall: SystemTime::now(),
        status: 0,
    }))
}

/// The body of a complete chunked encoding, `None` while more bytes are needed.
fn dechunk_complete(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            // No trailers: an empty line; trailers: header lines, then an empty line.
            let complete = data.starts_with(b"\r\n") || data.windows(4).any(|w| w == b"\r\n\r\n");
            return Ok(complete.then_some(out));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The reason phrase of the statuses the tests use.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
