//! Everything Python sees. The only module that uses pyo3, and the one place core errors
//! become Python exceptions.

pub mod aio;
pub mod args;
pub mod errors;
pub mod keys;
pub mod lru;
pub mod memcached;
pub mod metrics;
pub mod on_loop;
pub mod redis;
pub mod stats;
pub mod values;
