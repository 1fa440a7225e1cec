//! The binding of the gates (`edge/`: `_core.Front`).

use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::edge::{Front, Limits, Options, Role};
use crate::forward::Forwarder;
use crate::netguard::NetPolicy;
use crate::python::PyStore;
use std::sync::Arc;

/// The gate in front of the API port (see `edge/`): listens on `host:port` and
/// forwards checked requests to the workers on `127.0.0.1:upstream_port`.
#[pyclass(frozen, name = "Front", module = "registry_svc._core")]
pub struct PyFront {
    inner: std::sync::Mutex<Option<Front>>,
    port: u16,
}

#[pymethods]
impl PyFront {
    #[new]
    #[pyo3(signature = (
        host, port, upstream_port, api_body_limit = 1 << 20, proxy_body_limit = 16 << 20, threads = 2, store = None,
        data_plane = false, proxy_networks = None, proxy_timeout = 60.0, answer_reads = true, access_log = false,
        max_connections = 0, api_port = 0
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: &str,
        port: u16,
        upstream_port: u16,
        api_body_limit: u64,
        proxy_body_limit: u64,
        threads: usize,
        store: Option<PyRef<'_, PyStore>>,
        data_plane: bool,
        proxy_networks: Option<Vec<String>>,
        proxy_timeout: f64,
        answer_reads: bool,
        access_log: bool,
        max_connections: usize,
        api_port: u16,
    ) -> PyResult<Self> {
        use std::net::ToSocketAddrs;
        let listen = (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut found| found.next())
            .ok_or_else(|| PyValueError::new_err(format!("'{host}' is not an address to listen on")))?;
        let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let limits = Limits {
            api_body: api_body_limit,
            proxy_body: proxy_body_limit,
            max_connections,
            ..Limits::default()
        };
        let registry = store.map(|s| Arc::clone(&s.registry));
        let role = if data_plane { Role::Data } else { Role::Api };
        let options = Options {
            answer_reads,
            access_log,
            api_port,
        };
        // With the networks it may reach, the gate proxies `/<slug>/...` itself.
        let proxy_timeout =
            Duration::try_from_secs_f64(proxy_timeout).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let proxy = proxy_networks
            .map(|cidrs| NetPolicy::new(&cidrs, "proxy").map(|policy| Forwarder::new(policy, proxy_timeout)))
            .transpose()
            .map_err(PyValueError::new_err)?;
        let front = py
            .detach(|| Front::start(listen, upstream, limits, threads, registry, role, proxy, options))
            .map_err(|e| {
                PyOSError::new_err((e.raw_os_error().unwrap_or(0), format!("cannot listen on {listen}: {e}")))
            })?;
        let port = front.local_addr().port();
        Ok(PyFront {
            inner: std::sync::Mutex::new(Some(front)),
            port,
        })
    }

    /// (answered, forwarded, refused, proxied) requests since the gate started.
    fn stats(&self) -> (u64, u64, u64, u64) {
        self.inner
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(Front::stats))
            .unwrap_or_default()
    }

    /// The proxy's upstream outcomes (and `ejections`) since the gate started.
    fn proxy_stats(&self) -> Vec<(&'static str, u64)> {
        self.inner
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(Front::proxy_stats))
            .unwrap_or_default()
    }

    /// The port it listens on.
    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Stops listening and drops every connection.
    fn close(&self, py: Python<'_>) {
        let front = self.inner.lock().ok().and_then(|mut f| f.take());
        py.detach(move || drop(front));
    }
}
