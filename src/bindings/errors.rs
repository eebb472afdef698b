//! The package's exception tree and the single conversion from core errors.
//!
//! ```text
//! CacheError
//!  ├── ServerDown      a server cannot be reached, timed out, or is marked down
//!  │    └── TLSError   a TLS handshake failed (an untrusted certificate, a name mismatch)
//!  │    └── ClusterBusy     a Redis Cluster cannot serve the call now (TRYAGAIN, CLUSTERDOWN)
//!  ├── ServerError     a server answered with an error of its own
//!  │    └── ClusterRedirect a Redis Cluster node sent the call elsewhere (MOVED, ASK)
//!  └── ProtocolError   a server answered something the protocol does not allow
//! ```
//!
//! Django's contract errors come from the core's kinds too: a missing key is `ValueError`, a
//! non-numeric value `TypeError`, a bad setting `ValueError`. A signal handler that raised while
//! a call waited (Ctrl-C) has its own exception raised, unchanged.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::thread::ThreadId;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::error::{Error, ErrorKind};

create_exception!(
    django_rustcache,
    CacheError,
    PyException,
    "Base class of every error django-rustcache raises on its own account."
);
create_exception!(
    django_rustcache,
    ServerDown,
    CacheError,
    "A cache server cannot be reached, did not answer in time, or is marked down after a failure."
);
create_exception!(
    django_rustcache,
    TLSError,
    ServerDown,
    "A TLS handshake with a cache server failed: its certificate is not trusted or does not\n    name it, or it refused ours."
);
create_exception!(django_rustcache, ServerError, CacheError, "A cache server answered with an error.");
create_exception!(
    django_rustcache,
    ClusterRedirect,
    ServerError,
    "A Redis Cluster node does not serve the key's slot: ``ask`` (False: MOVED, the slot has a\n    new owner; True: ASK, it is being migrated, ask the node once with ASKING), ``slot`` and\n    ``address`` (``host:port``) say where to go."
);
create_exception!(
    django_rustcache,
    ClusterBusy,
    ServerDown,
    "A Redis Cluster cannot serve the call now (TRYAGAIN during a slot migration, CLUSTERDOWN,\n    MASTERDOWN): nothing was applied, and the same call may work a moment later."
);
create_exception!(
    django_rustcache,
    ProtocolError,
    CacheError,
    "A cache server answered something its protocol does not allow."
);

thread_local! {
    /// The exception a signal handler raised while this thread's call waited.
    static RAISED: RefCell<Option<PyErr>> = const { RefCell::new(None) };
}

/// The interpreter's main thread, the only one on which Python runs signal handlers (unknown
/// when the module was first imported elsewhere: then every thread asks).
static MAIN_THREAD: OnceLock<Option<ThreadId>> = OnceLock::new();

/// Remember the main thread and install the check the network cores run while they wait.
pub fn install_signal_check(py: Python<'_>) -> PyResult<()> {
    let threading = py.import("threading")?;
    let on_main = threading.call_method0("main_thread")?.is(&threading.call_method0("current_thread")?);
    let _ = MAIN_THREAD.set(on_main.then(|| std::thread::current().id()));
    crate::net::set_interrupt_check(check_signals);
    Ok(())
}

/// Run Python's pending signal handlers (with the GIL, from inside a detached call). When one
/// raises, its exception is kept for this thread and the call ends as `Interrupted`.
fn check_signals() -> Result<(), Error> {
    if let Some(Some(main)) = MAIN_THREAD.get()
        && *main != std::thread::current().id()
    {
        return Ok(());
    }
    #[allow(clippy::redundant_closure_for_method_calls)] // the method's lifetime is not general enough
    let checked = Python::attach(|py| py.check_signals());
    match checked {
        Ok(()) => Ok(()),
        Err(raised) => {
            RAISED.with(|slot| *slot.borrow_mut() = Some(raised));
            Err(Error::new(ErrorKind::Interrupted, "interrupted by a signal while waiting for a cache server"))
        }
    }
}

/// A `ClusterRedirect` carrying where to go, as attributes.
fn redirect_error(e: &Error) -> PyErr {
    let err = ClusterRedirect::new_err(e.to_string());
    if let Some(r) = e.redirect() {
        Python::attach(|py| {
            let value = err.value(py);
            let _ = value.setattr("ask", r.ask);
            let _ = value.setattr("slot", r.slot);
            let _ = value.setattr("address", r.address.as_str());
        });
    }
    err
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e.kind() {
            ErrorKind::Io | ErrorKind::Timeout | ErrorKind::ServerDown => ServerDown::new_err(e.to_string()),
            ErrorKind::Tls => TLSError::new_err(e.to_string()),
            ErrorKind::Server => ServerError::new_err(e.to_string()),
            ErrorKind::ClusterBusy => ClusterBusy::new_err(e.to_string()),
            ErrorKind::Redirect => redirect_error(&e),
            ErrorKind::Protocol | ErrorKind::TooLarge => ProtocolError::new_err(e.to_string()),
            ErrorKind::InvalidKey | ErrorKind::NotFound | ErrorKind::Config => PyValueError::new_err(e.to_string()),
            ErrorKind::NotNumeric => PyTypeError::new_err(e.to_string()),
            ErrorKind::Interrupted => RAISED
                .with(|slot| slot.borrow_mut().take())
                .unwrap_or_else(|| PyKeyboardInterrupt::new_err(e.to_string())),
        }
    }
}
