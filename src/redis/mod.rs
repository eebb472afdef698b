//! The redis core: the `redis` crate's connections under our own bounded pool, the leader /
//! read-replica topology Django gives a LOCATION list, and the commands the backend needs. No
//! Python types here.

pub mod aio;
pub mod client;
pub mod conn;
pub mod pool;
pub mod sentinel;
pub mod wire;
