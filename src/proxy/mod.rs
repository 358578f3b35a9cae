//! The request path: every proxied call passes the phases of `phases` in order — admit,
//! route, trace context, (the call opens) read ahead, team, upstream request, send, respond —
//! each a method over the per-request `call::CallContext` that can be read and tested alone.
//!
//! Nothing on this path counts tokens, computes a price from a response or touches the store:
//! it forwards bytes and copies them into bounded captures (`body_tee`); a finished call goes
//! to the recorder through `record::queue`, the only part of `record` this floor names. The one
//! body it reads is a request's first bytes, for a team with limits (the budget estimate), an
//! opt-in usage injection, or a Bedrock call it signs for a team key (`sigv4`: the signature
//! covers the body's hash; see ARCHITECTURE.md, "invariants"). It imports `upstream`,
//! `policy`, `config`, `formats`, `model` and `record::queue`; never `store`, `admin` or
//! `export`, and nothing below names it.

pub(crate) mod body_tee;
pub(crate) mod call;
pub(crate) mod errors;
pub(crate) mod headers;
pub(crate) mod phases;
pub(crate) mod routing;
pub(crate) mod sigv4;
pub mod usage_injection;

pub use phases::{Proxy, ProxyBody};
