//! django-rustcache's native core. The pure modules (`error`, `keys`, `codec`, `compress`,
//! `lru`, `net`, `memcached`, `redis`, `sign`) hold no pyo3 code; `bindings` is the only place Python
//! types appear.

pub mod bindings;
pub mod codec;
pub mod compress;
pub mod error;
pub mod keys;
pub mod lru;
pub mod memcached;
pub mod metrics;
pub mod net;
pub mod redis;
pub mod sign;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _core {
    #[pymodule_export]
    use crate::bindings::lru::PyLruStore;

    #[pymodule_export]
    use crate::bindings::errors::{
        CacheError, ClusterBusy, ClusterRedirect, ProtocolError, ServerDown, ServerError, TLSError,
    };

    #[pymodule_export]
    use crate::bindings::memcached::PyMemcachedClient;

    #[pymodule_export]
    use crate::bindings::redis::{PyHashRing, PyRedisClient, cluster_key_slot};

    #[pymodule_export]
    use crate::bindings::keys::{check_key, glob_match};

    #[pymodule_export]
    use crate::bindings::metrics::{metrics_labels, metrics_snapshots, reset_all_metrics};

    #[pymodule_export]
    use crate::bindings::errors::set_exception_classes;

    use pyo3::prelude::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::bindings::errors::install_signal_check(m.py())?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
