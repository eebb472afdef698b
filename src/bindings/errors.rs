//! The package's exception tree and the single conversion from core errors.

use pyo3::create_exception;
use pyo3::exceptions::{PyConnectionError, PyException, PyTimeoutError, PyValueError};
use pyo3::prelude::*;

use crate::error::{Error, ErrorKind};

create_exception!(
    django_rustcache,
    CacheError,
    PyException,
    "Base class of every error django-rustcache raises on its own account."
);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e.kind() {
            ErrorKind::Timeout => PyTimeoutError::new_err(e.to_string()),
            ErrorKind::Io => PyConnectionError::new_err(e.to_string()),
            ErrorKind::InvalidKey | ErrorKind::NotFound => PyValueError::new_err(e.to_string()),
            _ => CacheError::new_err(e.to_string()),
        }
    }
}
