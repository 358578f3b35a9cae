//! Many instances, one view and one budget (`[cluster]`): PostgreSQL as the shared span store
//! and ledger, Redis for the shared limits. Without `[cluster]` nothing here runs and tracegate
//! is one binary with its embedded sled store.
//!
//! The request path is the same with or without a cluster: each instance records into its own
//! sled store first. `postgres/` ships what was recorded to PostgreSQL from a durable cursor
//! (the store is the queue, as for the exporters) and answers the admin API's reads from there,
//! so every instance shows the calls of all.
//!
//! It imports `store` (reads), `record` (the queue for its cursor, the metrics), `config` and
//! `model`; `admin` and `server` import it.

pub mod postgres;
