//! What both network clients share: addresses, a socket whose every wait is bounded by one
//! deadline per call, and the hook that lets a waiting call notice a signal (Ctrl-C).
//!
//! Every blocking step (connect, each write, each read) waits at most [`SLICE`] at a time and
//! never past the call's deadline. Between slices, and whenever a system call is interrupted
//! (EINTR), the interrupt hook runs: the bindings install one that runs Python's pending signal
//! handlers, so a handler that raises ends the call within about one slice.

pub mod aio;
pub mod counters;
pub mod stream;
pub mod tls;

pub use counters::{ClientStats, Counters};
pub use stream::{Address, Stream};
pub use tls::{Tls, TlsSettings, Verify};

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};

/// The longest single wait: how late a signal can be noticed.
pub const SLICE: Duration = Duration::from_millis(50);

/// The hook run while a call waits; an error (kind `Interrupted`) ends the call.
pub type InterruptCheck = fn() -> Result<(), Error>;

static INTERRUPT_CHECK: OnceLock<InterruptCheck> = OnceLock::new();

/// Install the hook run while calls wait (once per process; later calls are ignored).
pub fn set_interrupt_check(check: InterruptCheck) {
    let _ = INTERRUPT_CHECK.set(check);
}

/// Run the interrupt hook, if one is installed.
pub fn check_interrupt() -> Result<(), Error> {
    INTERRUPT_CHECK.get().map_or(Ok(()), |check| check())
}

/// The time left before `deadline`, or a timeout error naming `what` once it has passed.
pub fn remaining(deadline: Instant, label: &str, what: &str) -> Result<Duration, Error> {
    let now = Instant::now();
    if now >= deadline {
        return Err(Error::new(ErrorKind::Timeout, format!("{label}: {what}: timed out")));
    }
    Ok(deadline - now)
}
