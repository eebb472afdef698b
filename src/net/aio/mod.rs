//! The async side of the network clients: one process-wide I/O runtime, streams connected
//! (and TLS handshaken) under a deadline, and a multiplexed connection that carries many
//! requests at once, its replies matched to them in order.
//!
//! The runtime is a small tokio runtime made on first use. A forked child cannot use its
//! parent's (the worker threads do not exist there), so the runtime is made again in a child
//! and the parent's is left alone, never dropped: dropping it would wait for threads that are
//! gone.

mod mux;
mod runtime;
mod slots;
mod stream;

pub use mux::{Answer, MAX_IN_FLIGHT, Mux, OnAnswer, Wire};
pub use runtime::{runtime, within};
pub use slots::Slots;
pub use stream::{AsyncStream, connect, io_error};
