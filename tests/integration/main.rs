//! Integration tests: a real tracegate on loopback in front of real upstreams.
//!
//! Modules by area: `forwarding` (bytes in, bytes out, errors), `trace_headers` (how calls join
//! traces), `recording` (what the spans say, and that they survive a restart), `sdk` (the
//! official OpenAI Python SDK as a client), `tokens` (counts against Python tiktoken),
//! `jsonl_and_delete` (`/api/export`, the deletes and their CLI), `architecture` (the layering
//! rules of ARCHITECTURE.md, checked against the source).

mod architecture;
mod bad_input;
mod cluster;
mod cluster_processes;
mod crash;
mod engines;
mod export;
mod faults;
mod forwarding;
mod jsonl_and_delete;
mod properties;
mod recording;
mod regression;
mod sdk;
mod sdk_formats;
mod storage_faults;
mod support;
mod teams;
mod tokens;
mod trace_headers;
mod ui;
mod wire_formats;
