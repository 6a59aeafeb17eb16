//! The sidecar's own work as spans: each poll of a source (`stallwatch.poll`), each
//! delivery attempt of an alert (`stallwatch.deliver`) and each freeze decision the tick
//! thread records (`stallwatch.freeze`), sent with the app's traces to the same
//! collector, under the same service, when `[otlp]` is set (and `self_spans` is not off).
//!
//! Owns: the `tracing` layer that turns `stallwatch.*` spans into OpenTelemetry spans
//! (`tracing-opentelemetry` over the SDK that `opentelemetry-proto` already brings), and
//! the bounded hand-over of each finished span to the exporter thread ([`OwnSpans`]).
//! Does not own: where the spans are opened (the poll loop, the alert engine, the event
//! sink name them with [`PREFIX`]), batching, retries or the wire (that is
//! [`super::exporter`], shared with the app's traces), or log lines: the log layer is
//! filtered so that these spans never show in them ([`is_own_span`]).
//!
//! Nothing waits: a finished span is converted to its protobuf message on the thread
//! that ends it (a few microseconds) and handed over with `try_send`; a full hand-over
//! drops it and counts it in `stallwatch_dropped_total{queue="otlp_spans"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span as SdkSpan, SpanData, SpanProcessor};
use tracing::{Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::proto::Span;

/// What every one of the sidecar's own span names starts with.
pub const PREFIX: &str = "stallwatch.";
/// Finished spans waiting for the exporter thread to take them (it does every
/// quarter-second; before it starts, the first polls of a run wait here).
pub const HANDOVER: usize = 4_096;

/// True for a span this module exports: the log layer leaves these out, so log lines
/// read the same with `[otlp]` set or not.
pub fn is_own_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && meta.name().starts_with(PREFIX)
}

/// The exporter's side: finished spans, and how many did not fit.
pub struct OwnSpans {
    rx: Receiver<Span>,
    dropped: Arc<AtomicU64>,
}

impl OwnSpans {
    /// Takes what is waiting, up to `room` spans; the rest stay for the next call. Also
    /// returns the spans dropped since the last call.
    pub fn take(&self, room: usize) -> (Vec<Span>, u64) {
        let spans = self.rx.try_iter().take(room).collect();
        (spans, self.dropped.swap(0, Ordering::Relaxed))
    }
}

/// The layer to add to the subscriber, and the [`OwnSpans`] to give the exporter. The
/// layer sees only spans named with [`PREFIX`] (never events, so a span carries no log
/// lines), and records each one's fields as attributes; no code location, thread or
/// target attributes.
pub fn layer<S>() -> (impl Layer<S>, OwnSpans)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let (tx, rx) = sync_channel(HANDOVER);
    let dropped = Arc::new(AtomicU64::new(0));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Handover {
            tx,
            dropped: dropped.clone(),
        })
        .build();
    let tracer = provider.tracer("stallwatch");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(is_own_span));
    (layer, OwnSpans { rx, dropped })
}

/// The SDK's span processor: each finished span, as its protobuf message, to the
/// exporter thread.
#[derive(Debug)]
struct Handover {
    tx: SyncSender<Span>,
    dropped: Arc<AtomicU64>,
}

impl SpanProcessor for Handover {
    fn on_start(&self, _span: &mut SdkSpan, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(Span::from(span)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn string_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
        span.attributes
            .iter()
            .find_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                super::super::proto::Value::StringValue(v) if kv.key == key => Some(v.as_str()),
                _ => None,
            })
    }

    #[test]
    fn own_spans_nest_carry_their_fields_and_nothing_else_gets_through() {
        let (layer, own) = layer();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let poll = tracing::info_span!(
                "stallwatch.poll",
                source = "app",
                rows = tracing::field::Empty
            );
            {
                let _in = poll.enter();
                tracing::warn!("a log line is not a span event");
                tracing::info_span!("not_ours").in_scope(|| {});
                tracing::info_span!("stallwatch.deliver", channel = "phone").in_scope(|| {});
                poll.record("rows", 3_i64);
            }
            drop(poll);
        });
        let (spans, dropped) = own.take(100);
        assert_eq!(dropped, 0);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["stallwatch.deliver", "stallwatch.poll"],
            "ended in this order"
        );
        let (deliver, poll) = (&spans[0], &spans[1]);
        assert_eq!(deliver.trace_id, poll.trace_id, "one trace");
        assert_eq!(
            deliver.parent_span_id, poll.span_id,
            "the delivery inside the poll"
        );
        assert!(poll.parent_span_id.is_empty(), "the poll is a root");
        assert_eq!(string_attr(poll, "source"), Some("app"));
        assert_eq!(string_attr(deliver, "channel"), Some("phone"));
        let rows = poll.attributes.iter().find(|kv| kv.key == "rows");
        assert_eq!(
            rows.and_then(|kv| kv.value.as_ref()?.value.clone()),
            Some(super::super::proto::Value::IntValue(3)),
            "a field recorded later is an attribute: {:?}",
            poll.attributes
        );
        assert!(
            poll.events.is_empty(),
            "no log lines in a span: {:?}",
            poll.events
        );
        assert!(
            poll.end_time_unix_nano >= poll.start_time_unix_nano && poll.start_time_unix_nano > 0,
            "real times"
        );
    }

    #[test]
    fn a_full_handover_drops_and_counts_instead_of_blocking() {
        let (layer, own) = layer();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..HANDOVER + 10 {
                tracing::info_span!("stallwatch.poll").in_scope(|| {});
            }
        });
        let (first, dropped) = own.take(HANDOVER / 2);
        assert_eq!((first.len(), dropped), (HANDOVER / 2, 10));
        let (rest, dropped) = own.take(usize::MAX);
        assert_eq!((rest.len(), dropped), (HANDOVER / 2, 0), "the rest waited");
    }
}
