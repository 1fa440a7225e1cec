//! The PyO3 binding of the endpoint picker for Envoy (`epp/`): argument conversion only.

use std::sync::Mutex;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::epp::Epp;
use crate::python::PyStore;

/// Envoy's external processor on `host:port`, answering from `store` (see `epp/mod.rs`).
/// ValueError for a host that is not an address, OSError when it cannot listen.
#[pyclass(frozen, name = "Epp", module = "registry_svc._core")]
pub struct PyEpp {
    inner: Mutex<Option<Epp>>,
    port: u16,
}

#[pymethods]
impl PyEpp {
    #[new]
    fn new(py: Python<'_>, host: &str, port: u16, store: PyRef<'_, PyStore>) -> PyResult<Self> {
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| PyValueError::new_err(format!("'{host}' is not an address to listen on")))?;
        let listen = std::net::SocketAddr::new(ip, port);
        let registry = std::sync::Arc::clone(&store.registry);
        let epp = py.detach(|| Epp::start(listen, registry)).map_err(|e| {
            PyOSError::new_err((e.raw_os_error().unwrap_or(0), format!("cannot listen on {listen}: {e}")))
        })?;
        let port = epp.local_addr().port();
        Ok(PyEpp {
            inner: Mutex::new(Some(epp)),
            port,
        })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Stops answering.
    fn close(&self, py: Python<'_>) {
        let epp = self.inner.lock().ok().and_then(|mut e| e.take());
        py.detach(move || drop(epp));
    }
}
