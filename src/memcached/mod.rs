//! Our own memcached client: text protocol, libmemcached-compatible routing, per-server
//! connection pools with deadlines and dead-server handling. No Python types here.

pub mod binary;
pub mod client;
pub mod conn;
pub mod protocol;
pub mod ring;
