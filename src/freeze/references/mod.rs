//! Readers of reference clocks: clocks that keep running while this machine is stopped.
//!
//! Each reader turns one read into a [`RefSample`] (an interval for `reference −
//! MONOTONIC`); the pure [`crate::freeze::reference::RefTracker`] decides what it means.
//! Local readers (`rtc`, `ptp`) are cheap and run on the tick thread; network readers
//! (`sntp`, `http_date`) are async and run on the runtime, sending samples to the tick
//! thread through a bounded channel.

pub mod discover;
pub mod http_date;
pub mod local;
pub mod ptp;
pub mod rtc;
pub mod sntp;

use crate::config::ReferenceSpec;
use crate::freeze::reference::RefSample;
pub use local::LocalReference;

/// Opens the local reader for a spec, or `None` if the spec is a network reference.
pub fn open_local(spec: &ReferenceSpec) -> Option<Box<dyn LocalReference>> {
    match spec {
        ReferenceSpec::Rtc => Some(Box::new(rtc::Rtc::new(rtc::RTC_SINCE_EPOCH))),
        ReferenceSpec::Ptp(path) => Some(Box::new(ptp::Ptp::new(path.clone()))),
        ReferenceSpec::Sntp(_) | ReferenceSpec::HttpDate(_) => None,
    }
}

/// Reads a network reference once.
pub async fn read_network(
    spec: &ReferenceSpec,
    client: &reqwest::Client,
) -> Result<RefSample, String> {
    match spec {
        ReferenceSpec::Sntp(host_port) => sntp::query(host_port).await,
        ReferenceSpec::HttpDate(url) => http_date::query(client, url).await,
        ReferenceSpec::Rtc | ReferenceSpec::Ptp(_) => {
            unreachable!("local references are read on the tick thread")
        }
    }
}
