//! Our own memcached client. No Python types here.
//!
//! - `protocol` (text) and `binary`: the wire formats, encoders and pure reply parsers;
//! - `dialect`: each command's request and reply in either protocol, behind one face;
//! - `ring` and `router`: pylibmc's key placement, and each server's health;
//! - `conn` and `pool`: one connection (buffered reads on the shared deadline stream), and the
//!   idle connections per server;
//! - `plan`: each multi-key call (group, requests, reading, answers in order) written once;
//! - `client` and `aio`: the blocking and the async runner, with one deadline per call.

pub mod aio;
pub mod binary;
pub mod client;
pub mod conn;
pub mod dialect;
pub mod plan;
pub mod pool;
pub mod protocol;
pub mod ring;
pub mod router;
pub mod wire;
