//! The ground floor: the values every other part shares — span and trace ids, the span record,
//! a bounded body capture, prices, and the clock. Plain data and arithmetic on it: nothing here
//! imports another module of the crate, does I/O, or knows a wire format.

pub mod capture;
pub mod clock;
pub mod ids;
pub(crate) mod pricing;
pub mod span;
