//! The in-process store behind `LRUObjectCache`: generic over the value, free of pyo3.

mod store;

pub use store::{Entry, Expiry, LruStore, Stats};
