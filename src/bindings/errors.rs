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
use pyo3::types::PyType;

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

/// Subclasses of our exceptions that also derive from the predecessors' (those installed), so code
/// that catches `redis.exceptions.ConnectionError`, `django_redis`'s `ConnectionInterrupted` or
/// `pylibmc.Error` catches ours too. Set once per process by `django_rustcache._compat`.
struct Compat {
    server_down: Py<PyType>,
    timeout: Py<PyType>,
    server_error: Py<PyType>,
    protocol_error: Py<PyType>,
    tls_error: Py<PyType>,
    cluster_busy: Py<PyType>,
}

static COMPAT: OnceLock<Compat> = OnceLock::new();

/// Raise these classes from now on, in place of ours: each must subclass the one it stands for
/// (a server down, a timeout, a server's error reply, a protocol error, a TLS failure, a busy
/// cluster). Only the first call counts.
#[pyfunction]
pub fn set_exception_classes(
    server_down: Bound<'_, PyType>,
    timeout: Bound<'_, PyType>,
    server_error: Bound<'_, PyType>,
    protocol_error: Bound<'_, PyType>,
    tls_error: Bound<'_, PyType>,
    cluster_busy: Bound<'_, PyType>,
) -> PyResult<()> {
    let py = server_down.py();
    let pairs = [
        (&server_down, py.get_type::<ServerDown>()),
        (&timeout, py.get_type::<ServerDown>()),
        (&server_error, py.get_type::<ServerError>()),
        (&protocol_error, py.get_type::<ProtocolError>()),
        (&tls_error, py.get_type::<TLSError>()),
        (&cluster_busy, py.get_type::<ClusterBusy>()),
    ];
    for (given, ours) in pairs {
        if !given.is_subclass(&ours)? {
            return Err(PyTypeError::new_err(format!("{given} does not subclass {ours}")));
        }
    }
    let _ = COMPAT.set(Compat {
        server_down: server_down.unbind(),
        timeout: timeout.unbind(),
        server_error: server_error.unbind(),
        protocol_error: protocol_error.unbind(),
        tls_error: tls_error.unbind(),
        cluster_busy: cluster_busy.unbind(),
    });
    Ok(())
}

/// The exception of `e`'s kind: the predecessors-catchable class where one was set.
fn raised(e: &Error, pick: fn(&Compat) -> &Py<PyType>, ours: fn(String) -> PyErr) -> PyErr {
    match COMPAT.get() {
        Some(compat) => Python::attach(|py| PyErr::from_type(pick(compat).bind(py).clone(), e.to_string())),
        None => ours(e.to_string()),
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

/// Django's `ImproperlyConfigured`: settings this server cannot serve (not a cache failure, so
/// no failure policy answers it as a miss).
fn improperly_configured(e: &Error) -> PyErr {
    Python::attach(|py| {
        let class = py.import("django.core.exceptions").and_then(|m| m.getattr("ImproperlyConfigured"));
        match class.map(Bound::cast_into::<PyType>) {
            Ok(Ok(class)) => PyErr::from_type(class, e.to_string()),
            _ => PyValueError::new_err(e.to_string()),
        }
    })
}

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e.kind() {
            ErrorKind::Io | ErrorKind::ServerDown => raised(&e, |c| &c.server_down, ServerDown::new_err),
            ErrorKind::Timeout => raised(&e, |c| &c.timeout, ServerDown::new_err),
            ErrorKind::Tls => raised(&e, |c| &c.tls_error, TLSError::new_err),
            ErrorKind::Server => raised(&e, |c| &c.server_error, ServerError::new_err),
            ErrorKind::ClusterBusy => raised(&e, |c| &c.cluster_busy, ClusterBusy::new_err),
            ErrorKind::Redirect => redirect_error(&e),
            ErrorKind::Protocol | ErrorKind::TooLarge => raised(&e, |c| &c.protocol_error, ProtocolError::new_err),
            ErrorKind::InvalidKey | ErrorKind::NotFound | ErrorKind::Config => PyValueError::new_err(e.to_string()),
            ErrorKind::Unsupported => improperly_configured(&e),
            ErrorKind::NotNumeric => PyTypeError::new_err(e.to_string()),
            ErrorKind::Interrupted => RAISED
                .with(|slot| slot.borrow_mut().take())
                .unwrap_or_else(|| PyKeyboardInterrupt::new_err(e.to_string())),
        }
    }
}
