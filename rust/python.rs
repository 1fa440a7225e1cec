//! The PyO3 layer: argument conversion, GIL release and error mapping. No logic lives here.

use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::model::{self, CollectionSpec};
use crate::store::{self, Expect, StoreError};

create_exception!(_core, StoreErrorPy, PyException, "Base class of every store error.");
create_exception!(_core, NotFoundError, StoreErrorPy, "No record with that id.");
create_exception!(
    _core,
    ConflictError,
    StoreErrorPy,
    "A unique field is held by another record; args = (message, holder_id)."
);
create_exception!(
    _core,
    VersionMismatchError,
    StoreErrorPy,
    "The record changed since it was read."
);
create_exception!(
    _core,
    InvalidRecordError,
    StoreErrorPy,
    "The record or the request is not acceptable to the store."
);
create_exception!(
    _core,
    StoreFullError,
    StoreErrorPy,
    "The LMDB map is full; nothing was written."
);

fn to_py(err: StoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        StoreError::NotFound { .. } => NotFoundError::new_err(msg),
        StoreError::Unique { holder, .. } => ConflictError::new_err((msg, holder)),
        StoreError::VersionMismatch { .. } => VersionMismatchError::new_err(msg),
        StoreError::InvalidRecord(_) | StoreError::UnknownCollection(_) | StoreError::UnknownFilter { .. } => {
            InvalidRecordError::new_err(msg)
        }
        StoreError::Full(_) => StoreFullError::new_err(msg),
        StoreError::Lmdb(_) | StoreError::Closed => StoreErrorPy::new_err(msg),
    }
}

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

/// The registry store over one LMDB directory. Safe to share between threads.
#[pyclass(frozen, name = "Store", module = "registry_svc._core")]
pub struct PyStore {
    inner: store::Store,
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (path, map_size = 8 << 30))]
    fn new(py: Python<'_>, path: PathBuf, map_size: usize) -> PyResult<Self> {
        let inner = py.detach(|| store::Store::open(&path, map_size)).map_err(to_py)?;
        Ok(PyStore { inner })
    }

    fn get<'py>(
        &self,
        py: Python<'py>,
        collection_name: &str,
        id: &str,
    ) -> PyResult<Option<(u64, Bound<'py, PyBytes>)>> {
        let coll = collection(collection_name)?;
        let record = py.detach(|| self.inner.get(coll, id)).map_err(to_py)?;
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
        let (index, records) = py.detach(|| self.inner.list(coll, &filters)).map_err(to_py)?;
        Ok((index, records.iter().map(|r| PyBytes::new(py, &r.json)).collect()))
    }

    fn list_json<'py>(
        &self,
        py: Python<'py>,
        collection_name: &str,
        filters: Vec<(String, String)>,
        key: &str,
    ) -> PyResult<(u64, Bound<'py, PyBytes>)> {
        let coll = collection(collection_name)?;
        let (index, body) = py.detach(|| self.inner.list_json(coll, &filters, key)).map_err(to_py)?;
        Ok((index, PyBytes::new(py, &body)))
    }

    fn ids_by(&self, py: Python<'_>, collection_name: &str, field: &str, value: &str) -> PyResult<Vec<String>> {
        let coll = collection(collection_name)?;
        py.detach(|| self.inner.ids_by(coll, field, value)).map_err(to_py)
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
        let coll = collection(collection_name)?;
        py.detach(|| self.inner.put(coll, id, json, expect(expect_version)))
            .map_err(to_py)
    }

    /// Writes many records in one atomic, durable write (bulk import); returns its index.
    fn put_many(&self, py: Python<'_>, collection_name: &str, items: Vec<(String, Vec<u8>)>) -> PyResult<u64> {
        let coll = collection(collection_name)?;
        let ops = items
            .into_iter()
            .map(|(id, json)| store::Op::Put {
                coll,
                id,
                json,
                expect: Expect::Any,
            })
            .collect();
        py.detach(|| self.inner.write(ops)).map_err(to_py)
    }

    #[pyo3(signature = (collection_name, id, expect_version = None))]
    fn delete(&self, py: Python<'_>, collection_name: &str, id: &str, expect_version: Option<u64>) -> PyResult<u64> {
        let coll = collection(collection_name)?;
        py.detach(|| self.inner.delete(coll, id, expect(expect_version)))
            .map_err(to_py)
    }

    fn index(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.inner.index()).map_err(to_py)
    }

    fn collection_index(&self, py: Python<'_>, collection_name: &str) -> PyResult<u64> {
        let coll = collection(collection_name)?;
        py.detach(|| self.inner.collection_index(coll)).map_err(to_py)
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyStore>()?;
    m.add("StoreError", py.get_type::<StoreErrorPy>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("VersionMismatchError", py.get_type::<VersionMismatchError>())?;
    m.add("InvalidRecordError", py.get_type::<InvalidRecordError>())?;
    m.add("StoreFullError", py.get_type::<StoreFullError>())?;
    m.add("MAX_ID_LEN", model::MAX_ID_LEN)?;
    Ok(())
}
