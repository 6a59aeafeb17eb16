//! SNTP (RFC 4330) client: one request, the four timestamps, an offset interval whose
//! half-width is half the round trip.

use std::time::Duration;

use tokio::net::UdpSocket;

use crate::clock::{mono_ns, real_ns, NANOS_PER_SEC};
use crate::freeze::reference::RefSample;

/// How long to wait for an answer: a healthy server answers in milliseconds; the
/// tracker is useless with a round trip of seconds anyway.
pub const SNTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Seconds from 1900 (NTP era 0) to 1970 (unix epoch).
const NTP_UNIX_OFFSET_SECS: i64 = 2_208_988_800;

/// Converts a 64-bit NTP timestamp to unix nanoseconds (era 0, valid until 2036;
/// timestamps with the top bit clear are read as era 1, valid until 2104).
pub fn ntp_to_unix_ns(ts: u64) -> i64 {
    let mut secs = (ts >> 32) as i64;
    if secs < 0x8000_0000 {
        secs += 1 << 32; // era 1 (after 2036-02-07)
    }
    let frac = ((ts & 0xffff_ffff) * NANOS_PER_SEC as u64) >> 32;
    (secs - NTP_UNIX_OFFSET_SECS) * NANOS_PER_SEC + frac as i64
}

/// Converts unix nanoseconds to a 64-bit NTP timestamp.
pub fn unix_ns_to_ntp(ns: i64) -> u64 {
    let secs = ns.div_euclid(NANOS_PER_SEC) + NTP_UNIX_OFFSET_SECS;
    let frac = ((ns.rem_euclid(NANOS_PER_SEC) as u64) << 32) / NANOS_PER_SEC as u64;
    ((secs as u64 & 0xffff_ffff) << 32) | frac
}

/// Builds a client request carrying `transmit` so the reply can be matched.
pub fn request(transmit: u64) -> [u8; 48] {
    let mut packet = [0u8; 48];
    packet[0] = (4 << 3) | 3; // LI 0, version 4, mode 3 (client)
    packet[40..48].copy_from_slice(&transmit.to_be_bytes());
    packet
}

/// Parses a reply to a request that carried `sent`; returns (receive, transmit) in unix ns.
pub fn parse_reply(reply: &[u8], sent: u64) -> Result<(i64, i64), String> {
    if reply.len() < 48 {
        return Err(format!("reply of {} bytes is too short", reply.len()));
    }
    let field = |at: usize| u64::from_be_bytes(reply[at..at + 8].try_into().expect("8 bytes"));
    let mode = reply[0] & 7;
    let leap = reply[0] >> 6;
    let stratum = reply[1];
    if mode != 4 {
        return Err(format!("reply has mode {mode}, not 4 (server)"));
    }
    if field(24) != sent {
        return Err("reply does not echo our transmit timestamp".into());
    }
    if stratum == 0 || leap == 3 {
        return Err("server is not synchronised (kiss-o'-death or leap indicator 3)".into());
    }
    Ok((ntp_to_unix_ns(field(32)), ntp_to_unix_ns(field(40))))
}

/// Asks `host_port` once and returns the offset interval.
pub async fn query(host_port: &str) -> Result<RefSample, String> {
    let socket = UdpSocket::bind(if host_port.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })
    .await
    .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    socket
        .connect(host_port)
        .await
        .map_err(|e| format!("cannot reach {host_port}: {e}"))?;
    let sent = unix_ns_to_ntp(real_ns());
    let t1 = mono_ns();
    socket
        .send(&request(sent))
        .await
        .map_err(|e| format!("cannot send to {host_port}: {e}"))?;
    let mut buf = [0u8; 128];
    let n = tokio::time::timeout(SNTP_TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| {
            format!(
                "{host_port} did not answer within {}s",
                SNTP_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot receive from {host_port}: {e}"))?;
    let t4 = mono_ns();
    let (t2, t3) = parse_reply(&buf[..n], sent)?;
    Ok(offset_interval(t1, t2, t3, t4))
}

/// The NTP on-wire calculation with MONOTONIC client times: `reference − MONOTONIC`
/// is θ ± δ/2.
pub fn offset_interval(t1: i64, t2: i64, t3: i64, t4: i64) -> RefSample {
    let theta = ((t2 - t1) + (t3 - t4)) / 2;
    let delta = ((t4 - t1) - (t3 - t2)).max(0);
    RefSample {
        mono_ns: t1 + (t4 - t1) / 2,
        lo_ns: theta - delta / 2,
        hi_ns: theta + delta / 2 + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_timestamps_round_trip() {
        let ns = 1_763_900_000 * NANOS_PER_SEC + 123_456_789;
        let back = ntp_to_unix_ns(unix_ns_to_ntp(ns));
        assert!((back - ns).abs() <= 1, "{back} vs {ns}");
    }

    #[test]
    fn offset_interval_contains_the_true_offset() {
        // Server is 1000 s ahead of MONOTONIC; 10 ms each way; 1 ms processing.
        let ms = 1_000_000;
        let s = offset_interval(
            0,
            1000 * NANOS_PER_SEC + 10 * ms,
            1000 * NANOS_PER_SEC + 11 * ms,
            21 * ms,
        );
        assert!(
            s.lo_ns <= 1000 * NANOS_PER_SEC && s.hi_ns >= 1000 * NANOS_PER_SEC,
            "{s:?}"
        );
        assert!(s.hi_ns - s.lo_ns <= 21 * ms);
    }

    #[test]
    fn reply_must_echo_and_be_synchronised() {
        let sent: u64 = 42;
        let mut reply = [0u8; 48];
        reply[0] = (4 << 3) | 4;
        reply[1] = 2;
        reply[24..32].copy_from_slice(&sent.to_be_bytes());
        assert!(parse_reply(&reply, sent).is_ok());
        assert!(parse_reply(&reply, 43).is_err());
        reply[1] = 0;
        assert!(parse_reply(&reply, sent)
            .unwrap_err()
            .contains("not synchronised"));
    }
}
