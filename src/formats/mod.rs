//! Wire formats, read and written: the providers' request and response bodies (JSON and SSE),
//! trace-context headers (W3C, B3), tracegate's own `x-tracegate-*` headers, OTLP and Zipkin
//! spans, AWS event-stream frames (Bedrock streams), URL percent-decoding, token counts of a
//! request's text, and a skimming reader of JSON bodies.
//! Pure functions over bytes: they import only `model`, never the proxy, the recorder or the
//! store, and do no I/O.

pub mod eventstream;
pub(crate) mod headers;
pub mod json_skim;
pub(crate) mod otlp;
pub mod percent;
pub mod providers;
pub mod sse;
pub mod tokens;
pub mod trace_context;
pub(crate) mod zipkin;
