//! The PyO3 binding of the store (`_core.Store`) and the module itself: argument
//! conversion, GIL release, error mapping; no logic lives here. The gates (`python_front`),
//! the request rules (`python_rules`), the errors (`python_errors`) and DNS (`python_dns`)
//! have binding files of their own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use std::sync::Arc;

use crate::core::cache::ResponseCache;
use crate::core::load::LoadTable;
use crate::core::model::{self, CollectionSpec};
use crate::core::replica::{Mode, ReplicaChange};
use crate::core::select::{EjectionConfig, PickRequest, Picked, Policy, Selector};
use crate::core::shared::SharedState;
use crate::core::store::{self, Expect, StoreError};
use crate::python_errors::{to_py, NoRoutableError, NotFoundError, SaturatedError};
use crate::python_etcd::{PyEtcdClient, PyEtcdLayout};
use crate::registry::Registry;
use crate::writes::Write;

fn collection(name: &str) -> PyResult<&'static CollectionSpec> {
    model::collection(name).ok_or_else(|| to_py(StoreError::UnknownCollection(name.to_owned())))
}

fn expect(version: Option<u64>) -> Expect {
    match version {
        None => Expect::Any,
        Some(0) => Expect::Absent,
        Some(v) => Expect::Version(v),
    }
}

pub(crate) fn policy(name: &str) -> PyResult<Policy> {
    Policy::parse(name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown policy '{name}'; use {}", Policy::NAMES.join(", "))))
}

/// The registry store over one LMDB directory, with this process's instance selector.
/// Safe to share between threads.
#[pyclass(frozen, subclass, name = "Store", module = "registry_svc._core")]
pub struct PyStore {
    pub(crate) registry: Arc<Registry>,
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (
        path, map_size = 8 << 30, default_policy = "round_robin", slug_policies = HashMap::new(),
        eject_seconds = 30.0, eject_max_seconds = 300.0, eject_failures = 5, balancer_state = None,
        etcd = None, etcd_layout = None, catch_up_seconds = crate::etcd::writes::CATCH_UP_S
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        map_size: usize,
        default_policy: &str,
        slug_policies: HashMap<String, String>,
        eject_seconds: f64,
        eject_max_seconds: f64,
        eject_failures: u32,
        balancer_state: Option<PathBuf>,
        etcd: Option<PyRef<'_, PyEtcdClient>>,
        etcd_layout: Option<PyRef<'_, PyEtcdLayout>>,
        catch_up_seconds: f64,
    ) -> PyResult<Self> {
        let default_policy = policy(default_policy)?;
        let slug_policies = slug_policies
            .iter()
            .map(|(slug, name)| Ok((slug.clone(), policy(name)?)))
            .collect::<PyResult<HashMap<_, _>>>()?;
        let seconds = |s: f64| Duration::try_from_secs_f64(s).map_err(|e| PyValueError::new_err(e.to_string()));
        let ejection = EjectionConfig {
            consecutive_failures: eject_failures.max(1),
            base: seconds(eject_seconds)?,
            max: seconds(eject_max_seconds)?,
        };
        let cannot_map = |path: &std::path::Path, e| PyOSError::new_err(format!("cannot map {}: {e}", path.display()));
        let (shared, load) = match balancer_state {
            Some(state) => {
                // The load signals beside the balancer state (`balancer.load`).
                let load_path = state.with_extension("load");
                (
                    SharedState::open(&state).map_err(|e| cannot_map(&state, e))?,
                    LoadTable::open(&load_path).map_err(|e| cannot_map(&load_path, e))?,
                )
            }
            None => (SharedState::private(), LoadTable::private()),
        };
        let selector = Selector::with_state(default_policy, slug_policies, ejection, shared).with_load(load);
        let writes = crate::python_etcd::write_backend(etcd, etcd_layout, seconds(catch_up_seconds)?);
        let inner = py.detach(|| store::Store::open(&path, map_size)).map_err(to_py)?;
        // One GIL acquisition per committed batch runs all of its `put_nowait` callbacks.
        inner.set_completion_runner(Box::new(|run| Python::attach(|_py| run())));
        Ok(PyStore {
            registry: Arc::new(Registry {
                store: Arc::new(inner),
                writes,
                selector,
                responses: ResponseCache::default(),
                tokens: Default::default(),
                routes: Default::default(),
            }),
        })
    }

    /// The `{"instance": ...}` body of a pick, with the instance's load reading: what the
    /// pick endpoint sends. The GIL stays held: a pick never blocks (LMDB readers do not
    /// wait for writers).
    #[pyo3(signature = (slug, policy_name = None, zone = None, key = None, tags = Vec::new(), model = None, prefix = None))]
    #[allow(clippy::too_many_arguments)]
    fn pick_json<'py>(
        &self,
        py: Python<'py>,
        slug: &str,
        policy_name: Option<&str>,
        zone: Option<&str>,
        key: Option<&str>,
        tags: Vec<String>,
        model: Option<&str>,
        prefix: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let policy = policy_name.map(policy).transpose()?;
        let request = PickRequest {
            slug,
            policy,
            zone,
            key,
            tags: &tags,
            model,
            prefix,
            ..PickRequest::default()
        };
        let picked = self
            .registry
            .selector
            .pick(&self.registry.store, &request)
            .map_err(to_py)?;
        if let (Picked::NoModel, Some(model)) = (&picked, model) {
            return Err(NotFoundError::new_err(format!(
                "no instance of slug '{slug}' serves model '{model}'"
            )));
        }
        let body = Arc::clone(&chosen(picked, slug)?.body);
        Ok(PyBytes::new(py, &crate::reads::with_load(&self.registry, body)))
    }

    /// `body` (an answer carrying instances) with their load readings (`core/load_json.rs`).
    fn with_load<'py>(&self, py: Python<'py>, body: &[u8]) -> Bound<'py, PyBytes> {
        match crate::core::load_json::with_load(self.registry.selector.load(), body) {
            Some(annotated) => PyBytes::new(py, &annotated),
            None => PyBytes::new(py, body),
        }
    }

    /// Records a model server's load, reported now by a source that reports every
    /// `interval_ms` (`core/load.rs`); False when the table has no room for it.
    fn report_load(&self, id: &str, queued: u32, running: u32, kv_cache: f64, interval_ms: u32) -> bool {
        let load = crate::core::load::Load {
            queued,
            running,
            kv_cache,
        };
        let now = crate::core::shared::now_ms();
        self.registry.selector.load().report(id, load, interval_ms, now)
    }

    /// Takes the in-flight requests of server processes that died (a crashed worker) out
    /// of the shared counts; returns how many were forgotten.
    fn reap_dead_processes(&self, py: Python<'_>) -> u64 {
        py.detach(|| self.registry.selector.reap_dead_processes())
    }

    /// The blocking queries the gates saw abandoned since `seen` (0 at first), and the
    /// count to pass next time (`edge/` `QUERY_HEADER`).
    fn cancelled_queries(&self, seen: u64) -> (u64, Vec<u64>) {
        self.registry.selector.shared().cancelled_since(seen)
    }

    fn get<'py>(
        &self,
        py: Python<'py>,
        collection_name: &str,
        id: &str,
    ) -> PyResult<Option<(u64, Bound<'py, PyBytes>)>> {
        let coll = collection(collection_name)?;
        // Short LMDB reads keep the GIL: releasing it would invite a thread switch that
        // costs more than the read (readers never wait for writers).
        let record = self.registry.store.get(coll, id).map_err(to_py)?;
        Ok(record.map(|r| (r.version, PyBytes::new(py, &r.json))))
    }

    #[pyo3(signature = (collection_name, filters = Vec::new()))]
    fn list<'py>(
        &self,
        py: Python<'py>,
        collection_name: &str,
        filters: Vec<(String, String)>,
    ) -> PyResult<(u64, Vec<Bound<'py, PyBytes>>)> {
        let coll = collection(collection_name)?;
        let (index, records) = py.detach(|| self.registry.store.list(coll, &filters)).map_err(to_py)?;
        Ok((index, records.iter().map(|r| PyBytes::new(py, &r.json)).collect()))
    }

    /// `{"<key>": [...]}` for the matching records, built from stored bytes and cached
    /// per filter set until a write touches them.
    fn list_json<'py>(
        &self,
        py: Python<'py>,
        collection_name: &str,
        filters: Vec<(String, String)>,
        key: &str,
    ) -> PyResult<(u64, Bound<'py, PyBytes>)> {
        let coll = collection(collection_name)?;
        // The GIL stays held: a cache hit is a few hundred ns and LMDB readers never wait.
        let (index, body) = self
            .registry
            .responses
            .list_json(&self.registry.store, coll, &filters, key)
            .map_err(to_py)?;
        Ok((index, PyBytes::new(py, &body)))
    }

    /// (index, records written after `since`, live record count) of a collection.
    fn changes<'py>(
        &self,
        py: Python<'py>,
        collection_name: &str,
        since: u64,
    ) -> PyResult<(u64, Vec<Bound<'py, PyBytes>>, u64)> {
        let coll = collection(collection_name)?;
        let (index, records, live) = py.detach(|| self.registry.store.changes(coll, since)).map_err(to_py)?;
        Ok((index, records.iter().map(|r| PyBytes::new(py, &r.json)).collect(), live))
    }

    /// Every id of a collection, sorted.
    fn ids(&self, py: Python<'_>, collection_name: &str) -> PyResult<Vec<String>> {
        let coll = collection(collection_name)?;
        py.detach(|| self.registry.store.ids(coll)).map_err(to_py)
    }

    fn ids_by(&self, collection_name: &str, field: &str, value: &str) -> PyResult<Vec<String>> {
        let coll = collection(collection_name)?;
        self.registry.store.ids_by(coll, field, value).map_err(to_py)
    }

    #[pyo3(signature = (collection_name, id, json, expect_version = None))]
    fn put(
        &self,
        py: Python<'_>,
        collection_name: &str,
        id: &str,
        json: Vec<u8>,
        expect_version: Option<u64>,
    ) -> PyResult<u64> {
        let write = Write::Put {
            coll: collection(collection_name)?,
            id: id.to_owned(),
            json,
            expect: expect(expect_version),
        };
        py.detach(|| self.registry.write(write)).map_err(to_py)
    }

    /// `put` without blocking: `done(result)` is called from the store's writer thread
    /// once the write is durable, with the registry index (int) or the store exception.
    #[pyo3(signature = (collection_name, id, json, expect_version, done))]
    fn put_nowait(
        &self,
        collection_name: &str,
        id: &str,
        json: Vec<u8>,
        expect_version: Option<u64>,
        done: Py<PyAny>,
    ) -> PyResult<()> {
        let write = Write::Put {
            coll: collection(collection_name)?,
            id: id.to_owned(),
            json,
            expect: expect(expect_version),
        };
        let completion: store::Completion = Box::new(move |result| {
            Python::attach(|py| {
                let arg: Py<PyAny> = match result {
                    Ok(index) => {
                        let Ok(number) = index.into_pyobject(py);
                        number.into_any().unbind()
                    }
                    Err(e) => to_py(e).into_value(py).into_any(),
                };
                if let Err(err) = done.call1(py, (arg,)) {
                    err.print(py);
                }
            })
        });
        let writes = Arc::clone(&self.registry.writes);
        writes
            .submit(Arc::clone(&self.registry.store), write, completion)
            .map_err(to_py)
    }

    /// Writes many records in one atomic, durable write (bulk import); returns its index.
    fn put_many(&self, py: Python<'_>, collection_name: &str, items: Vec<(String, Vec<u8>)>) -> PyResult<u64> {
        let write = Write::PutMany {
            coll: collection(collection_name)?,
            items,
        };
        py.detach(|| self.registry.write(write)).map_err(to_py)
    }

    /// Deletes a record. With `expect_collection_index`, only if nothing in the collection
    /// was written since that collection index was read (else VersionMismatchError).
    #[pyo3(signature = (collection_name, id, expect_version = None, expect_collection_index = None))]
    fn delete(
        &self,
        py: Python<'_>,
        collection_name: &str,
        id: &str,
        expect_version: Option<u64>,
        expect_collection_index: Option<u64>,
    ) -> PyResult<u64> {
        let write = Write::Delete {
            coll: collection(collection_name)?,
            id: id.to_owned(),
            expect: expect(expect_version),
            collection_index: expect_collection_index,
        };
        py.detach(|| self.registry.write(write)).map_err(to_py)
    }

    /// Applies changes committed in etcd, in one transaction, and sets the applied revision
    /// (cluster replicas only): `changes` are (collection, id, json or None for a delete,
    /// revision). `exact`: they are etcd's state at a revision (relist, repair), applied
    /// as given; else watch events, skipped where the record is already at or past them.
    #[pyo3(signature = (changes, applied, exact = false))]
    fn apply_replica(
        &self,
        py: Python<'_>,
        changes: Vec<(String, String, Option<Vec<u8>>, u64)>,
        applied: u64,
        exact: bool,
    ) -> PyResult<()> {
        let mode = if exact { Mode::Exact } else { Mode::Events };
        let changes = changes
            .into_iter()
            .map(|(name, id, json, revision)| {
                Ok(ReplicaChange {
                    coll: collection(&name)?,
                    id,
                    json,
                    revision,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        py.detach(|| self.registry.store.apply_replica(&changes, applied, mode))
            .map_err(to_py)
    }

    /// (id, version) of every record of a collection, sorted by id.
    fn versions(&self, py: Python<'_>, collection_name: &str) -> PyResult<Vec<(String, u64)>> {
        let coll = collection(collection_name)?;
        py.detach(|| self.registry.store.versions(coll)).map_err(to_py)
    }

    /// A small named state value kept beside the records (None if never set).
    fn state<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let value = self.registry.store.state(name).map_err(to_py)?;
        Ok(value.map(|v| PyBytes::new(py, &v)))
    }

    /// Until when (unix ms) the replica counts as fresh; the gates and DNS of every process
    /// of the server leave reads to the workers (and their staleness header) after it.
    fn set_fresh_until(&self, unix_ms: u64) {
        self.registry.store.set_fresh_until(unix_ms);
    }

    /// Where this store's writes go: "local" (its own writer) or "etcd" (cluster mode).
    #[getter]
    fn backend(&self) -> &'static str {
        self.registry.writes.name()
    }

    /// Seconds since this store's replica last heard from etcd, when that is past
    /// STALE_AFTER_S; None while it is fresh (and on a store no replicator wrote to).
    fn replica_staleness(&self) -> PyResult<Option<f64>> {
        crate::python_etcd::replica_staleness(&self.registry.store)
    }

    /// Marks the store as no cluster's replica (a server started without etcd).
    fn forget_replica(&self) {
        self.registry.store.forget_replica();
    }

    /// Sets a named state value, durably; it wakes no watcher and moves no index.
    fn set_state(&self, py: Python<'_>, name: &str, value: Vec<u8>) -> PyResult<()> {
        py.detach(|| self.registry.store.set_state(name, &value)).map_err(to_py)
    }

    /// Waits (without the GIL) until the registry index is at least `revision`, at most
    /// `timeout` seconds; returns whether it got there.
    fn wait_index(&self, py: Python<'_>, revision: u64, timeout: f64) -> PyResult<bool> {
        let timeout = Duration::try_from_secs_f64(timeout).map_err(|e| PyValueError::new_err(e.to_string()))?;
        py.detach(|| self.registry.store.wait_index(revision, timeout))
            .map_err(to_py)
    }

    /// (writes, group-commit batches) committed by this process's writer thread.
    fn writer_stats(&self) -> (u64, u64) {
        self.registry.store.writer_stats()
    }

    /// (entries, bytes) of this process's response cache.
    fn cache_usage(&self) -> (usize, usize) {
        self.registry.responses.usage()
    }

    fn index(&self) -> PyResult<u64> {
        self.registry.store.index().map_err(to_py)
    }

    /// The registry index of the last write that touched partition `value` of the
    /// collection (e.g. the instances of one slug); 0 if never written.
    fn partition_index(&self, collection_name: &str, value: &str) -> PyResult<u64> {
        let coll = collection(collection_name)?;
        self.registry.store.partition_index(coll, value).map_err(to_py)
    }

    fn collection_index(&self, collection_name: &str) -> PyResult<u64> {
        let coll = collection(collection_name)?;
        self.registry.store.collection_index(coll).map_err(to_py)
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.registry.store.close());
    }
}

impl Drop for PyStore {
    /// Flushes pending writes with the GIL released: the writer thread may need the GIL
    /// to run their completions, so waiting for it while holding the GIL would deadlock.
    fn drop(&mut self) {
        let inner = &self.registry.store;
        // None: the interpreter is going away and no completion can run; the writer
        // finishes what is pending on its own (`Store::drop`).
        let _ = Python::try_attach(|py| py.detach(|| inner.close()));
    }
}

/// The instance a pick chose, or the error that says why there is none (NotFoundError,
/// NoRoutableError): the store's picks and the in-memory `Picker`'s.
pub(crate) fn chosen(picked: Picked, slug: &str) -> PyResult<Arc<crate::core::select::Candidate>> {
    match picked {
        Picked::Instance(c) => Ok(c),
        Picked::UnknownSlug => Err(NotFoundError::new_err(format!(
            "no instances are registered for slug '{slug}'"
        ))),
        Picked::NoneRoutable => Err(NoRoutableError::new_err(format!(
            "no healthy instance of slug '{slug}'"
        ))),
        Picked::NoModel => Err(NotFoundError::new_err(format!(
            "no instance of slug '{slug}' serves that model"
        ))),
        Picked::Saturated => Err(SaturatedError::new_err(crate::core::least_load::saturated(slug))),
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStore>()?;
    m.add_class::<crate::python_front::PyFront>()?;
    m.add_class::<crate::python_dns::PyDns>()?;
    m.add_class::<crate::python_picker::PyPicker>()?;
    m.add_class::<crate::python_signal::PyChangeSignal>()?;
    m.add_class::<crate::python_load::PyLoadScraper>()?;
    m.add_class::<crate::python_epp::PyEpp>()?;
    m.add_function(wrap_pyfunction!(crate::python_load::load_stats, m)?)?;
    m.add_function(wrap_pyfunction!(crate::python_dns::check_dns_options, m)?)?;
    crate::python_rules::add(m)?;
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    m.add(
        "__build__",
        format!("registry-svc-core {} ({profile})", env!("CARGO_PKG_VERSION")),
    )?;
    crate::python_errors::add(m)?;
    crate::python_etcd::add(m)?;
    Ok(())
}
