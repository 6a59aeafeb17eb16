//! Delivery channels: one trait, one small file per service.
//!
//! A channel is pure: it turns a [`Message`] into the HTTP request its service documents
//! (payload shape, size limits, signature). Sending, retries and the shared HTTP client
//! live in the alert engine, so no channel repeats them.

use std::time::Duration;

use super::Message;

/// An HTTP request ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// One configured destination.
pub trait Channel: Send + Sync {
    /// The operator's name for it (`[[channel]] name`), used in metrics and logs.
    fn name(&self) -> &str;
    /// The service: `webhook`, `ntfy`, `slack`, … (`[[channel]] kind`).
    fn kind(&self) -> &'static str;
    /// The request that delivers `message`; `now_ns` is the send time (signatures, expiry).
    fn request(&self, message: &Message, now_ns: i64) -> Request;
    /// Every secret in this channel's config (URL tokens, bot tokens, keys), so error
    /// text can be scrubbed before it reaches a log, a metric or the API.
    fn secrets(&self) -> Vec<String>;
    /// How often a still-firing alert must be sent again for the service to keep it
    /// (Alertmanager drops an alert whose `endsAt` has passed); `None` for the others.
    fn refresh_interval(&self) -> Option<Duration> {
        None
    }
}
