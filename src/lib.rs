//! tracegate: a transparent LLM API proxy that records every call as a span, groups calls into
//! traces through standard trace headers, and stores them in an embedded sled database.
//!
//! ARCHITECTURE.md is the map; in short, a request flows
//! `server` → `proxy` (phases: `routing`, `trace_context`, `teams`/`budget`, `upstream`) →
//! `body_tee` → `call` → (queue) → `recorder` (`providers`, `sse`, `tokens`, `pricing`,
//! `usage`) → `store`, and is read back through `admin` (API, `ui`, OTLP ingest), `cli` and
//! `export` (`otlp`, `zipkin`).

pub mod admin;
pub mod body_tee;
pub mod budget;
pub mod call;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod errors;
pub mod export;
pub mod metrics;
pub mod mock_llm;
pub mod otlp;
pub mod pricing;
pub mod providers;
pub mod proxy;
pub mod recorder;
pub mod routing;
pub mod segment_codec;
pub mod server;
pub mod span;
pub mod sse;
pub mod store;
pub mod teams;
pub mod tokens;
pub mod trace_context;
pub mod ui;
pub mod upstream;
pub mod upstream_h1;
pub mod usage;
pub mod usage_injection;
pub mod zipkin;
