//! Reference clocks served by the tests: an SNTP server and an HTTP server with a `Date`
//! header, both on 127.0.0.1, both serving this machine's CLOCK_REALTIME plus an offset
//! the test can jump (a jump forward is time the sidecar "did not see": what a host
//! clock shows after a full VM pause).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the server threads look at their stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Seconds from 1900 (NTP era 0) to 1970 (unix epoch).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// State shared by a server and the test.
#[derive(Default)]
struct Shared {
    offset_ns: AtomicI64,
    stop: AtomicBool,
    requests: AtomicU64,
}

/// CLOCK_REALTIME plus `offset_ns`, as nanoseconds since the unix epoch.
fn served_now_ns(offset_ns: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64;
    now + offset_ns
}

/// Handle to a running server; stopped and joined on drop.
pub struct ClockServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ClockServer {
    /// Moves the served clock by `by_ns` from now on.
    pub fn jump(&self, by_ns: i64) {
        self.shared.offset_ns.fetch_add(by_ns, Ordering::SeqCst);
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    fn spawn(addr: SocketAddr, run: impl FnOnce(Arc<Shared>) + Send + 'static) -> ClockServer {
        let shared = Arc::new(Shared::default());
        let for_thread = shared.clone();
        let thread = std::thread::spawn(move || run(for_thread));
        ClockServer {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// An SNTP server (RFC 4330): answers each mode-3 request with a mode-4 reply,
    /// stratum 2, echoing the client's transmit timestamp as the origin.
    pub fn sntp() -> ClockServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP port");
        socket
            .set_read_timeout(Some(STOP_CHECK))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local addr");
        ClockServer::spawn(addr, move |shared| {
            let mut buf = [0u8; 512];
            while !shared.stop.load(Ordering::SeqCst) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if n < 48 || buf[0] & 7 != 3 {
                    continue;
                }
                let received =
                    ntp_timestamp(served_now_ns(shared.offset_ns.load(Ordering::SeqCst)));
                let mut reply = [0u8; 48];
                reply[0] = (4 << 3) | 4; // LI 0, version 4, mode 4 (server)
                reply[1] = 2; // stratum 2: synchronised
                reply[2] = buf[2];
                reply[3] = 0xEC; // precision 2^-20 s
                reply[12..16].copy_from_slice(b"TEST");
                reply[16..24].copy_from_slice(&received.to_be_bytes()); // reference
                reply[24..32].copy_from_slice(&buf[40..48]); // origin = client's transmit
                reply[32..40].copy_from_slice(&received.to_be_bytes()); // receive
                let sent = ntp_timestamp(served_now_ns(shared.offset_ns.load(Ordering::SeqCst)));
                reply[40..48].copy_from_slice(&sent.to_be_bytes()); // transmit
                if socket.send_to(&reply, peer).is_ok() {
                    shared.requests.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    }

    /// An HTTP/1.1 server answering every request with `200`, an empty body and a
    /// `Date` header (one-second resolution, as any web server).
    pub fn http_date() -> ClockServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a TCP port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        ClockServer::spawn(addr, move |shared| {
            while !shared.stop.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let now_ns = served_now_ns(shared.offset_ns.load(Ordering::SeqCst));
                let date =
                    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_nanos(now_ns as u64));
                let response = format!(
                    "HTTP/1.1 200 OK\r\nDate: {date}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if stream.write_all(response.as_bytes()).is_ok() {
                    shared.requests.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    }
}

impl Drop for ClockServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Unix nanoseconds as a 64-bit NTP timestamp (era 0: until 2036).
fn ntp_timestamp(unix_ns: i64) -> u64 {
    let secs = unix_ns.div_euclid(1_000_000_000) as u64 + NTP_UNIX_OFFSET_SECS;
    let frac = ((unix_ns.rem_euclid(1_000_000_000) as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}
