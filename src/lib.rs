//! tracegate: a transparent LLM API proxy that records every call as a span, groups calls into
//! traces through standard trace headers, and stores them in an embedded sled database.
//!
//! ARCHITECTURE.md is the map. The folders are floors: each imports only the floors below it.
//! A request flows `server` → `proxy` (phases) → `upstream`, and its record goes through the
//! queue of `record` into `store`; `admin`, `export` and `cli` read it back. `model`,
//! `formats`, `config` and `policy` are the ground they stand on.

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub(crate) mod export;
pub mod formats;
pub mod mock_llm;
pub mod model;
pub(crate) mod policy;
pub mod proxy;
pub mod record;
pub mod server;
pub mod store;
pub mod upstream;
