//! Our own memcached client. No Python types here.
//!
//! - `protocol` (text) and `binary`: the wire formats, encoders and pure reply parsers;
//! - `dialect`: each command's request and reply in either protocol, behind one face;
//! - `ring` and `router`: pylibmc's key placement, and each server's health;
//! - `conn` and `pool`: one connection (buffered reads on the shared deadline stream), and the
//!   idle connections per server;
//! - `client`: the commands, written once, with one deadline per call.

pub mod aio;
pub mod binary;
pub mod client;
pub mod conn;
pub mod dialect;
pub mod pool;
pub mod protocol;
pub mod ring;
pub mod router;
pub mod wire;
