//! The PyO3 binding of the load scraper (`load/`): the supervisor's node agent starts one
//! per server, fenced by the probe networks.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::load::Scraper;
use crate::netguard::NetPolicy;
use crate::python::PyStore;

/// Scrapes the load of every instance that declares a prometheus source, until `stop`.
/// ValueError for a bad network, OSError when its thread cannot start.
#[pyclass(frozen, name = "LoadScraper", module = "registry_svc._core")]
pub struct PyLoadScraper {
    inner: Mutex<Option<Scraper>>,
}

#[pymethods]
impl PyLoadScraper {
    #[new]
    fn new(store: PyRef<'_, PyStore>, networks: Vec<String>) -> PyResult<Self> {
        let policy = NetPolicy::new(&networks, "probe").map_err(PyValueError::new_err)?;
        let scraper =
            Scraper::start(Arc::clone(&store.registry), policy).map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(PyLoadScraper {
            inner: Mutex::new(Some(scraper)),
        })
    }

    /// Stops every scrape and waits for its thread.
    fn stop(&self, py: Python<'_>) {
        let taken = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        py.detach(move || drop(taken));
    }
}

/// The load scraper's counts and the readings' ages, for `/metrics`: (sources scraped now,
/// scrapes, failed scrapes, [(age in seconds, still counts)]).
#[pyfunction]
pub fn load_stats(store: PyRef<'_, PyStore>) -> (u64, u64, u64, Vec<(f64, bool)>) {
    let stats = store.registry.selector.load().stats(crate::core::shared::now_ms());
    let ages = stats
        .ages
        .iter()
        .map(|(ms, fresh)| (*ms as f64 / 1000.0, *fresh))
        .collect();
    (stats.sources, stats.scrapes, stats.failures, ages)
}
