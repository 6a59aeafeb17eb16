//! The delivery tests' HTTP receiver (`common/receiver.rs`) checked on its own, so a
//! failure in `alerts_delivery.rs` is about the sidecar, not the harness: it records what
//! was sent byte for byte, answers with its script in order, handles the request forms a
//! client may use (Content-Length, chunked, `Expect: 100-continue`), and really refuses
//! connections while down.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::receiver::{Receiver, Reply};

const WAIT: Duration = Duration::from_secs(5);

/// Sends `raw` on a new connection and reads the whole answer (the receiver closes).
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connecting to the receiver");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(raw).unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading the answer");
    answer
}

fn post(path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

#[test]
fn records_requests_and_answers_200_by_default() {
    let receiver = Receiver::start();
    let answer = exchange(
        receiver.addr,
        post(
            "/hook?x=1",
            "Idempotency-Key: k-1\r\nX-Mixed-Case: Yes\r\n",
            r#"{"type":"alert.firing"}"#,
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n{}"), "{answer}");

    let got = receiver.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hook?x=1");
    assert_eq!(r.key(), Some("k-1"));
    assert_eq!(r.header("X-MIXED-CASE"), Some("Yes"));
    assert!(r.headers.iter().any(|(n, _)| n == "x-mixed-case"));
    assert_eq!(r.json()["type"], "alert.firing");
    assert_eq!(r.status, 200);
    assert!(receiver
        .url("/a")
        .ends_with(&format!("{}/a", receiver.addr)));
}

#[test]
fn script_is_used_in_order_then_the_default() {
    let receiver = Receiver::start();
    receiver.script(vec![
        Reply::status(503),
        Reply::status(429).header("Retry-After", "3"),
    ]);
    receiver.set_default(Reply::status(202));
    let statuses: Vec<String> = (0..4)
        .map(|i| {
            exchange(
                receiver.addr,
                post("/", "", &format!("{{\"n\":{i}}}")).as_bytes(),
            )
        })
        .collect();
    assert_eq!(
        statuses.iter().map(|a| status_of(a)).collect::<Vec<_>>(),
        vec![503, 429, 202, 202]
    );
    assert!(
        statuses[1].contains("Retry-After: 3\r\n"),
        "{}",
        statuses[1]
    );
    let got = receiver.wait_for(4, WAIT);
    let recorded: Vec<(u16, i64)> = got
        .iter()
        .map(|r| (r.status, r.json()["n"].as_i64().unwrap()))
        .collect();
    assert_eq!(recorded, vec![(503, 0), (429, 1), (202, 2), (202, 3)]);
}

#[test]
fn expect_continue_and_chunked_bodies_are_read() {
    let receiver = Receiver::start();
    // Expect: 100-continue: the body is sent only after the interim answer.
    let mut stream = TcpStream::connect(receiver.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let body = r#"{"expect":true}"#;
    write!(
        stream,
        "POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");

    // Chunked, split over two writes.
    let mut stream = TcpStream::connect(receiver.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(b"3\r\n12}\r\n0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");

    let got = receiver.wait_for(2, WAIT);
    assert_eq!(got[0].json()["expect"], true);
    assert_eq!(got[1].path, "/c");
    assert_eq!(got[1].json()["a"], 12);
}

#[test]
fn down_refuses_connections_and_up_serves_on_the_same_port() {
    let mut receiver = Receiver::start();
    let addr = receiver.addr;
    // A connection waiting for a slow answer when the receiver goes down is closed.
    receiver.script(vec![Reply::ok().delay(Duration::from_secs(30))]);
    let mut waiting = TcpStream::connect(addr).unwrap();
    waiting.set_read_timeout(Some(WAIT)).unwrap();
    waiting
        .write_all(post("/slow", "", "{}").as_bytes())
        .unwrap();
    receiver.wait_for(1, WAIT);

    let went_down = Instant::now();
    receiver.go_down();
    assert!(!receiver.is_up());
    let mut rest = Vec::new();
    let closed = waiting.read_to_end(&mut rest);
    assert!(
        went_down.elapsed() < WAIT && (closed.is_err() || rest.is_empty()),
        "the waiting connection should be closed without an answer: {closed:?} {:?}",
        String::from_utf8_lossy(&rest)
    );
    for _ in 0..3 {
        let e = TcpStream::connect_timeout(&addr, WAIT).expect_err("connecting while down");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    }

    receiver.come_up();
    assert_eq!(receiver.addr, addr);
    let answer = exchange(addr, post("/again", "", "{}").as_bytes());
    assert_eq!(status_of(&answer), 200, "{answer}");
    let got = receiver.wait_for(2, WAIT);
    assert_eq!(got[1].path, "/again");

    // Down and up again, twice more: the port keeps coming back.
    for _ in 0..2 {
        receiver.go_down();
        assert!(TcpStream::connect_timeout(&addr, WAIT).is_err());
        receiver.come_up();
        assert_eq!(
            status_of(&exchange(addr, post("/", "", "{}").as_bytes())),
            200
        );
    }
}

#[test]
fn arrival_times_are_taken_when_the_request_is_read() {
    let receiver = Receiver::start();
    let before = Instant::now();
    exchange(receiver.addr, post("/1", "", "{}").as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    exchange(receiver.addr, post("/2", "", "{}").as_bytes());
    let got = receiver.wait_for(2, WAIT);
    assert!(got[0].at >= before);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(300) && gap < Duration::from_secs(2),
        "{gap:?}"
    );
}

#[test]
#[should_panic(expected = "did not see 2 request(s)")]
fn a_wait_that_times_out_says_what_arrived() {
    let receiver = Receiver::start();
    exchange(receiver.addr, post("/only", "", "{}").as_bytes());
    receiver.wait_for(2, Duration::from_millis(300));
}
