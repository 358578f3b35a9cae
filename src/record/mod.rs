//! Recording: everything that turns a finished call into a stored span, off the request path.
//!
//! The request path reaches this floor only through [`queue`]: it hands a [`CallRecord`] to a
//! bounded queue with `try_send` and never waits. One thread (`recorder`) drains the queue,
//! builds spans (`span_builder`: bodies decoded and parsed through `formats`, tokens
//! estimated, priced), settles budget reservations, updates `metrics` and writes batches to
//! `store` — this floor is the store's only writer. It imports `store`, `policy`, `config`,
//! `formats` and `model`; never `proxy`, `upstream`, `admin` or `export`.

pub(crate) mod metrics;
pub mod queue;
pub(crate) mod recorder;
pub(crate) mod settings;
pub(crate) mod span_builder;

pub use queue::{CallInfo, CallRecord, Outcome, RecorderHandle};
pub use recorder::{start, FLUSH_INTERVAL};
pub use settings::RecorderSettings;
pub use span_builder::build_span;
