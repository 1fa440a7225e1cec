//! The store's errors as Python exceptions (`_core.StoreError` and its subclasses).

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use crate::core::store::StoreError;

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
create_exception!(
    _core,
    NoRoutableError,
    StoreErrorPy,
    "The slug has instances, but none is routable."
);

create_exception!(
    _core,
    SaturatedError,
    StoreErrorPy,
    "Every routable instance is over its queue limit or has its KV cache full (a 429)."
);

pub(crate) fn to_py(err: StoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        StoreError::NotFound { .. } => NotFoundError::new_err(msg),
        StoreError::Unique { holder, .. } => ConflictError::new_err((msg, holder)),
        StoreError::VersionMismatch { .. } | StoreError::CollectionChanged { .. } => VersionMismatchError::new_err(msg),
        StoreError::InvalidRecord(_) | StoreError::UnknownCollection(_) | StoreError::UnknownFilter { .. } => {
            InvalidRecordError::new_err(msg)
        }
        StoreError::Full(_) => StoreFullError::new_err(msg),
        StoreError::Lmdb(_) | StoreError::Closed | StoreError::Unavailable(_) => StoreErrorPy::new_err(msg),
    }
}

/// Adds the exception classes to the module.
pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StoreError", py.get_type::<StoreErrorPy>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("VersionMismatchError", py.get_type::<VersionMismatchError>())?;
    m.add("InvalidRecordError", py.get_type::<InvalidRecordError>())?;
    m.add("StoreFullError", py.get_type::<StoreFullError>())?;
    m.add("NoRoutableError", py.get_type::<NoRoutableError>())?;
    m.add("SaturatedError", py.get_type::<SaturatedError>())?;
    Ok(())
}
