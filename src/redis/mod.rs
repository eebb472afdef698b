//! The redis core: the `redis` crate packs and parses; connections are ours, under our own
//! bounded pool. No Python types here.
//!
//! - `wire`: RESP framing, the bounds on what a server may announce, replies classified;
//! - `conn`, `pool`, `sentinel`: one connection, the pool of one server, Sentinel's answers;
//! - `commands`: every command once (route, request, reply reader); `calls`: the calls made
//!   of several commands, written once for both runners;
//! - `topology`, `ring`, `cluster`: where a route goes (one node, client-side shards placed by
//!   the predecessors' rings, a Redis Cluster's slots) and the redirection policy;
//! - `client` and `aio`: the blocking and the async runner.

pub mod aio;
pub mod calls;
pub mod client;
pub mod cluster;
pub mod commands;
pub mod conn;
pub mod near;
pub mod pool;
pub mod ring;
pub mod sentinel;
pub mod topology;
pub mod wire;
