//! The binding of `etcd/`: the one etcd client (`_core.EtcdClient`), the key layout
//! (`_core.EtcdLayout`), the guard-key rule for Python's own txns (the bootstrap token),
//! and etcd's errors as exceptions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use serde_json::Value;

use crate::core::model;
use crate::core::store::Store;
use crate::etcd::client::{Client, EtcdError as Failure, CODE_OUT_OF_RANGE};
use crate::etcd::keys::{self, Layout};
use crate::etcd::list;
use crate::etcd::watch::{Event, Watch};
use crate::etcd::writes::{EtcdWrites, CATCH_UP_S, REPLICA_STATE, STALE_AFTER_S};
use crate::python::PyStore;
use crate::python_errors::to_py;
use crate::writes::{Local, WriteBackend};

pyo3::create_exception!(
    _core,
    EtcdUnavailable,
    PyException,
    "No etcd endpoint took the request (refused, reset, timed out, or no leader)."
);
pyo3::create_exception!(
    _core,
    EtcdAmbiguous,
    EtcdUnavailable,
    "A write was sent and its answer lost: it may have been applied. Never sent again blindly: \
     read what it would have written first."
);
pyo3::create_exception!(
    _core,
    EtcdError,
    PyException,
    "etcd answered with an error: (code, message)."
);
pyo3::create_exception!(
    _core,
    Compacted,
    EtcdError,
    "The revision asked for is older than etcd's compaction."
);

pub(crate) fn etcd_to_py(e: Failure) -> PyErr {
    match e {
        Failure::Unavailable(m) => EtcdUnavailable::new_err(m),
        Failure::Ambiguous(m) => EtcdAmbiguous::new_err(m),
        Failure::Compacted(m) => Compacted::new_err((CODE_OUT_OF_RANGE, m)),
        Failure::Answer { code, message } => EtcdError::new_err((code, message)),
    }
}

/// Where a store's writes go: etcd under `layout` with a client (cluster mode), else the
/// store's own writer.
pub(crate) fn write_backend(
    etcd: Option<PyRef<'_, PyEtcdClient>>,
    layout: Option<PyRef<'_, PyEtcdLayout>>,
    catch_up: Duration,
) -> Arc<dyn WriteBackend> {
    match etcd {
        Some(client) => {
            let layout = layout.map_or_else(
                || Layout::new(keys::DEFAULT_PREFIX).expect("the default prefix"),
                |l| l.inner.clone(),
            );
            Arc::new(EtcdWrites::new(Arc::clone(&client.inner), layout, catch_up))
        }
        None => Arc::new(Local),
    }
}

/// `Store.replica_staleness`: None on a store no replicator wrote to.
pub(crate) fn replica_staleness(store: &Store) -> PyResult<Option<f64>> {
    if store.state(REPLICA_STATE).map_err(to_py)?.is_none() {
        return Ok(None);
    }
    crate::etcd::writes::staleness(store).map_err(to_py)
}

fn seconds(s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// etcd's JSON gateway with failover across `endpoints` (`host:port`): thread-safe, one
/// keep-alive connection per (thread, endpoint), the GIL released while it waits.
#[pyclass(frozen, name = "EtcdClient", module = "registry_svc._core")]
pub struct PyEtcdClient {
    pub(crate) inner: Arc<Client>,
}

#[pymethods]
impl PyEtcdClient {
    #[new]
    #[pyo3(signature = (endpoints, timeout = 3.0, connect_timeout = 1.0))]
    fn new(endpoints: Vec<String>, timeout: f64, connect_timeout: f64) -> PyResult<Self> {
        if endpoints.is_empty() {
            return Err(PyValueError::new_err("no etcd endpoint given"));
        }
        Ok(PyEtcdClient {
            inner: Arc::new(Client::new(endpoints, seconds(timeout)?, seconds(connect_timeout)?)),
        })
    }

    #[getter]
    fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints().to_vec()
    }

    /// The index of the endpoint that answered last (a watch tries it first too).
    #[getter]
    fn preferred(&self) -> usize {
        self.inner.preferred()
    }

    /// Every key under `prefix` at `revision` (0: now), `page` keys per request, held in
    /// Rust (`EtcdListing`). Compacted if that revision is compacted meanwhile.
    #[pyo3(signature = (prefix, revision = 0, keys_only = false, page = 1000))]
    fn list_prefix(
        &self,
        py: Python<'_>,
        prefix: &[u8],
        revision: u64,
        keys_only: bool,
        page: usize,
    ) -> PyResult<PyEtcdListing> {
        let listing = py
            .detach(|| list::list_prefix(&self.inner, prefix, revision, keys_only, page.max(1)))
            .map_err(etcd_to_py)?;
        Ok(PyEtcdListing { inner: listing })
    }

    /// POSTs the JSON `body` to `path` on the first endpoint that answers; returns the
    /// answer's JSON. EtcdUnavailable when none took it; EtcdAmbiguous when a call that is
    /// not `idempotent` was sent and its answer lost; EtcdError (Compacted) for etcd's own.
    #[pyo3(signature = (path, body, timeout = None, idempotent = true))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        path: &str,
        body: &[u8],
        timeout: Option<f64>,
        idempotent: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let timeout = timeout.map(seconds).transpose()?;
        let answer = py.detach(|| self.inner.call(path, body, timeout, idempotent));
        Ok(PyBytes::new(py, &answer.map_err(etcd_to_py)?))
    }
}

/// A listing of etcd's keys at one revision (rust/etcd/list.rs), kept in Rust.
#[pyclass(frozen, name = "EtcdListing", module = "registry_svc._core")]
pub struct PyEtcdListing {
    inner: list::Listing,
}

#[pymethods]
impl PyEtcdListing {
    #[getter]
    fn revision(&self) -> u64 {
        self.inner.revision
    }

    fn __len__(&self) -> usize {
        self.inner.kvs.len()
    }

    /// (key, value, mod revision) of every key listed (value empty when keys only).
    fn items<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, u64)> {
        let kvs = &self.inner.kvs;
        kvs.iter()
            .map(|kv| (PyBytes::new(py, &kv.key), PyBytes::new(py, &kv.value), kv.mod_revision))
            .collect()
    }

    /// The changes that make `store`'s records equal this listing, as `apply_replica` takes
    /// them: (collection, id, JSON or None for a delete, revision).
    #[allow(clippy::type_complexity)]
    fn differences<'py>(
        &self,
        py: Python<'py>,
        store: &PyStore,
        layout: &PyEtcdLayout,
    ) -> PyResult<Vec<(&'static str, String, Option<Bound<'py, PyBytes>>, u64)>> {
        let changes = py
            .detach(|| list::differences(&store.registry.store, &layout.inner, &self.inner))
            .map_err(to_py)?;
        Ok(changes
            .into_iter()
            .map(|c| (c.coll.name, c.id, c.json.map(|j| PyBytes::new(py, &j)), c.revision))
            .collect())
    }
}

/// Where a registry's keys live under `prefix` (see `etcd/keys.rs`).
#[pyclass(frozen, name = "EtcdLayout", module = "registry_svc._core")]
pub struct PyEtcdLayout {
    pub(crate) inner: Layout,
}

#[pymethods]
impl PyEtcdLayout {
    #[new]
    #[pyo3(signature = (prefix = keys::DEFAULT_PREFIX))]
    fn new(prefix: &str) -> PyResult<Self> {
        Ok(PyEtcdLayout {
            inner: Layout::new(prefix).map_err(PyValueError::new_err)?,
        })
    }

    #[getter]
    fn prefix(&self) -> &str {
        self.inner.prefix()
    }

    #[getter]
    fn root<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.root())
    }

    #[getter]
    fn rec_prefix<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.rec_prefix())
    }

    fn rec<'py>(&self, py: Python<'py>, collection: &str, record_id: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.rec(collection, record_id))
    }

    /// (collection, id) of a record key, None for anything else.
    fn parse_rec(&self, key: &[u8]) -> Option<(&'static str, String)> {
        self.inner.parse_rec(key).map(|(coll, id)| (coll.name, id.to_owned()))
    }

    fn uniq<'py>(&self, py: Python<'py>, collection: &str, field: &str, value: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.uniq(collection, field, value))
    }

    fn coll<'py>(&self, py: Python<'py>, collection: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.coll(collection))
    }

    #[getter]
    fn live_prefix<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.live_prefix())
    }

    fn live<'py>(&self, py: Python<'py>, node_id: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.live(node_id))
    }

    fn elect<'py>(&self, py: Python<'py>, job: &str) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.elect(job))
    }

    #[getter]
    fn bootstrap<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.bootstrap())
    }

    fn __repr__(&self) -> String {
        format!("EtcdLayout('{}')", self.inner.prefix())
    }
}

/// The ops that put a record with its guard keys in step (the write path's own rule), for
/// Python's txns that write a record beside other keys (the bootstrap token): the JSON of
/// (compares on newly claimed guards, success ops).
#[pyfunction]
#[pyo3(signature = (layout, collection, record_id, json, old = None))]
fn etcd_record_ops<'py>(
    py: Python<'py>,
    layout: &PyEtcdLayout,
    collection: &str,
    record_id: &str,
    json: &[u8],
    old: Option<&[u8]>,
) -> PyResult<Bound<'py, PyBytes>> {
    let coll = model::collection(collection)
        .ok_or_else(|| PyValueError::new_err(format!("unknown collection '{collection}'")))?;
    let txn = keys::record_ops(&layout.inner, coll, record_id, json, old);
    let both = Value::Array(vec![Value::Array(txn.compares), Value::Array(txn.ops)]);
    Ok(PyBytes::new(py, both.to_string().as_bytes()))
}

/// The range end covering every key that starts with `prefix`.
#[pyfunction]
fn etcd_prefix_end<'py>(py: Python<'py>, prefix: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &crate::etcd::watch::prefix_end(prefix))
}

/// Why `prefix` cannot hold a registry's keys, or None.
#[pyfunction]
fn etcd_prefix_problem(prefix: &str) -> Option<String> {
    keys::prefix_problem(prefix)
}

pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyEtcdClient>()?;
    m.add_class::<PyEtcdLayout>()?;
    m.add_class::<PyEtcdWatch>()?;
    m.add_class::<PyEtcdListing>()?;
    m.add_class::<PyWatchMessage>()?;
    m.add_function(wrap_pyfunction!(etcd_record_ops, m)?)?;
    m.add_function(wrap_pyfunction!(etcd_prefix_problem, m)?)?;
    m.add_function(wrap_pyfunction!(etcd_prefix_end, m)?)?;
    m.add("EtcdUnavailable", py.get_type::<EtcdUnavailable>())?;
    m.add("EtcdAmbiguous", py.get_type::<EtcdAmbiguous>())?;
    m.add("EtcdError", py.get_type::<EtcdError>())?;
    m.add("Compacted", py.get_type::<Compacted>())?;
    m.add("ETCD_DEFAULT_PREFIX", keys::DEFAULT_PREFIX)?;
    m.add("ETCD_MAX_TXN_OPS", keys::MAX_TXN_OPS)?;
    m.add("REPLICA_STATE", REPLICA_STATE)?;
    m.add("STALE_AFTER_S", STALE_AFTER_S)?;
    m.add("CATCH_UP_S", CATCH_UP_S)?;
    Ok(())
}

/// One message of a watch stream: the header revision, the events as (key, value or None
/// for a delete, mod revision), and the stream's own news.
#[pyclass(frozen, name = "WatchMessage", module = "registry_svc._core")]
pub struct PyWatchMessage {
    #[pyo3(get)]
    revision: u64,
    #[pyo3(get)]
    created: bool,
    #[pyo3(get)]
    canceled: bool,
    #[pyo3(get)]
    compact_revision: u64,
    #[pyo3(get)]
    cancel_reason: String,
    events: Vec<Event>,
}

#[pymethods]
impl PyWatchMessage {
    #[getter]
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.events
            .iter()
            .map(|e| {
                let value = e.value.as_ref().map(|v| PyBytes::new(py, v));
                PyTuple::new(
                    py,
                    [
                        PyBytes::new(py, &e.key).into_any(),
                        value.into_pyobject(py)?.into_any(),
                        e.revision.into_pyobject(py)?.into_any(),
                    ],
                )
            })
            .collect()
    }
}

/// A watch of every key under `prefix` from `start_revision` (rust/etcd/watch.rs): `next()`
/// waits for a message with the GIL released; `close()` ends it from any thread.
#[pyclass(frozen, name = "EtcdWatch", module = "registry_svc._core")]
pub struct PyEtcdWatch {
    inner: Mutex<Watch>,
    closer: std::net::TcpStream,
    #[pyo3(get)]
    endpoint: String,
}

#[pymethods]
impl PyEtcdWatch {
    #[new]
    #[pyo3(signature = (client, prefix, start_revision, progress_notify = true))]
    fn new(
        py: Python<'_>,
        client: &PyEtcdClient,
        prefix: &[u8],
        start_revision: u64,
        progress_notify: bool,
    ) -> PyResult<Self> {
        let watch = py
            .detach(|| Watch::open(&client.inner, prefix, start_revision, progress_notify))
            .map_err(etcd_to_py)?;
        let closer = watch
            .closer()
            .map_err(|e| EtcdUnavailable::new_err(format!("{}: {e}", watch.endpoint)))?;
        Ok(PyEtcdWatch {
            endpoint: watch.endpoint.clone(),
            inner: Mutex::new(watch),
            closer,
        })
    }

    /// The next message; EtcdUnavailable when the stream breaks, ends or is closed.
    fn next(&self, py: Python<'_>) -> PyResult<PyWatchMessage> {
        let message = py.detach(|| match self.inner.lock() {
            Ok(mut watch) => watch.next_message(),
            Err(_) => Err(Failure::Unavailable(format!("{}: watch closed", self.endpoint))),
        });
        let m = message.map_err(etcd_to_py)?;
        Ok(PyWatchMessage {
            revision: m.revision,
            created: m.created,
            canceled: m.canceled,
            compact_revision: m.compact_revision,
            cancel_reason: m.cancel_reason,
            events: m.events,
        })
    }

    /// Ends the stream (a `next` waiting in another thread raises EtcdUnavailable).
    fn close(&self) {
        Watch::close(&self.closer);
    }
}
