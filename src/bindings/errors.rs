//! The package's exception tree and the single conversion from core errors.
//!
//! ```text
//! CacheError
//!  ├── ServerDown      a server cannot be reached, timed out, or is marked down
//!  ├── ServerError     a server answered with an error of its own
//!  └── ProtocolError   a server answered something the protocol does not allow
//! ```

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
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
create_exception!(django_rustcache, ServerError, CacheError, "A cache server answered with an error.");
create_exception!(
    django_rustcache,
    ProtocolError,
    CacheError,
    "A cache server answered something its protocol does not allow."
);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e.kind() {
            ErrorKind::Io | ErrorKind::Timeout | ErrorKind::ServerDown => ServerDown::new_err(e.to_string()),
            ErrorKind::Server => ServerError::new_err(e.to_string()),
            ErrorKind::Protocol => ProtocolError::new_err(e.to_string()),
            ErrorKind::InvalidKey | ErrorKind::NotFound => PyValueError::new_err(e.to_string()),
        }
    }
}
