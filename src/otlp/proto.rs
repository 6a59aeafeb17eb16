//! The OTLP/HTTP trace wire format: the official `opentelemetry-proto` messages
//! (`opentelemetry/proto` v1, generated with `prost`), re-exported under the names the
//! rest of [`crate::otlp`] uses, and the attribute constructors its span builders share.
//!
//! Fields this exporter never sets (events, links, trace state, status, dropped counts,
//! schema URLs) stay at their defaults, which protobuf leaves off the wire. Owns nothing
//! else: no transport, no batching (that is [`super::exporter`]).

pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::any_value::Value;
pub use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
pub use opentelemetry_proto::tonic::resource::v1::Resource;
pub use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// `SPAN_KIND_INTERNAL`: every span here is an operation inside the app or the machine.
pub const SPAN_KIND_INTERNAL: i32 =
    opentelemetry_proto::tonic::trace::v1::span::SpanKind::Internal as i32;
/// Bit 0 of `SPAN_FLAGS_TRACE_FLAGS_MASK` (the W3C trace flags): sampled.
pub const SPAN_FLAGS_SAMPLED: u32 = 1;

/// Constructors for the attributes spans carry: `KeyValue::string("k", "v")` with this
/// trait in scope.
pub trait Attribute: Sized {
    fn new(key: &str, value: Value) -> Self;

    fn string(key: &str, value: impl Into<String>) -> Self {
        Self::new(key, Value::StringValue(value.into()))
    }

    fn int(key: &str, value: i64) -> Self {
        Self::new(key, Value::IntValue(value))
    }

    fn double(key: &str, value: f64) -> Self {
        Self::new(key, Value::DoubleValue(value))
    }

    fn bool(key: &str, value: bool) -> Self {
        Self::new(key, Value::BoolValue(value))
    }

    fn strings(key: &str, values: impl IntoIterator<Item = String>) -> Self {
        let values = values
            .into_iter()
            .map(|v| AnyValue {
                value: Some(Value::StringValue(v)),
            })
            .collect();
        Self::new(key, Value::ArrayValue(ArrayValue { values }))
    }
}

impl Attribute for KeyValue {
    fn new(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }
}
