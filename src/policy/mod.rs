//! Who a call belongs to and whether it may go: team keys (hashed, compared in constant time)
//! and per-team budgets and rate limits with reservations. Imports `config`, `formats` (the
//! provider's API, for where a key goes) and `model`; never the proxy, the recorder or the store.

pub mod budget;
pub mod limits;
pub mod shared_limits;
pub mod teams;
