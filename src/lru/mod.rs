//! The in-process store behind `LRUObjectCache`: generic over the value, no Python types.

mod store;

pub use store::{Entry, Expiry, LruStore, Stats};
