//! What every local reference reader is: read on the tick thread, no network.

use crate::freeze::reference::RefSample;

/// A reference read synchronously on the tick thread (microseconds, no network).
pub trait LocalReference: Send {
    fn read(&mut self) -> Result<RefSample, String>;
}
