//! The PyO3 binding of the store's notifier (`core/write_counts.rs`): a file descriptor an
//! asyncio loop watches instead of polling the registry index.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::core::write_counts::ChangeSignal;
use crate::python::PyStore;

/// Readable once any process wrote to the store (or a gate gave notice) since the last
/// `clear`. OSError when the descriptor or its thread cannot be made.
#[pyclass(frozen, name = "ChangeSignal", module = "registry_svc._core")]
pub struct PyChangeSignal {
    inner: Mutex<Option<ChangeSignal>>,
    fd: i32,
}

#[pymethods]
impl PyChangeSignal {
    #[new]
    fn new(store: PyRef<'_, PyStore>) -> PyResult<Self> {
        let counts = Arc::clone(store.registry.store.write_counts());
        let signal = ChangeSignal::start(counts).map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(PyChangeSignal {
            fd: signal.fd(),
            inner: Mutex::new(Some(signal)),
        })
    }

    fn fileno(&self) -> i32 {
        self.fd
    }

    /// Makes the descriptor unreadable until the next change; whether it was readable.
    fn clear(&self) -> bool {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| inner.as_ref().map(ChangeSignal::clear))
            .unwrap_or(false)
    }

    /// Stops its thread (within 0.2 s) and closes the descriptor.
    fn close(&self, py: Python<'_>) {
        let taken = self.inner.lock().ok().and_then(|mut inner| inner.take());
        py.detach(move || drop(taken));
    }
}
