//! The PyO3 binding of the DNS interface (`dns/`): argument conversion only.

use std::sync::Mutex;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::dns::{Dns, DnsOptions};
use crate::python::PyStore;

/// The DNS server of one process (see `dns/mod.rs`): UDP and TCP on `host:port`,
/// answering from `store`.
#[pyclass(frozen, name = "Dns", module = "registry_svc._core")]
pub struct PyDns {
    inner: Mutex<Option<Dns>>,
    port: u16,
}

#[pymethods]
impl PyDns {
    #[new]
    #[pyo3(signature = (host, port, store, domain = "registry.", ttl = 0, rate_limit = 1000, rate_exempt = Vec::new(), threads = 1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: &str,
        port: u16,
        store: PyRef<'_, PyStore>,
        domain: &str,
        ttl: u32,
        rate_limit: u32,
        rate_exempt: Vec<String>,
        threads: usize,
    ) -> PyResult<Self> {
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| PyValueError::new_err(format!("'{host}' is not an address to listen on")))?;
        let listen = std::net::SocketAddr::new(ip, port);
        let options = DnsOptions {
            domain: domain.to_owned(),
            ttl,
            rate_limit,
            rate_exempt,
        };
        let registry = std::sync::Arc::clone(&store.registry);
        let dns = py
            .detach(|| Dns::start(listen, registry, &options, threads))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidInput => PyValueError::new_err(e.to_string()),
                _ => PyOSError::new_err((e.raw_os_error().unwrap_or(0), format!("cannot listen on {listen}: {e}"))),
            })?;
        let port = dns.local_addr().port();
        Ok(PyDns {
            inner: Mutex::new(Some(dns)),
            port,
        })
    }

    /// Questions by outcome since the server started.
    fn stats(&self) -> Vec<(&'static str, u64)> {
        self.inner
            .lock()
            .ok()
            .and_then(|d| d.as_ref().map(|d| d.stats.snapshot()))
            .unwrap_or_default()
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// Stops answering.
    fn close(&self, py: Python<'_>) {
        let dns = self.inner.lock().ok().and_then(|mut d| d.take());
        py.detach(move || drop(dns));
    }
}

/// The domain in canonical form (lowercase, fully qualified), or ValueError naming the
/// flag whose value the DNS server would refuse: the server's own rules, checked before
/// the workers start.
#[pyfunction]
pub fn check_dns_options(domain: &str, rate_exempt: Vec<String>) -> PyResult<String> {
    crate::dns::check_options(domain, &rate_exempt).map_err(PyValueError::new_err)
}
