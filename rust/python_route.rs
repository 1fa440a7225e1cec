//! The binding of `route.rs`: the API checks a routing body with the gates' own rules.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The record to store for `slug`'s routing `body` (JSON), with every field given or
/// defaulted; ValueError(field, message) for the first bad field.
#[pyfunction]
pub fn route_record(slug: &str, body: &[u8]) -> PyResult<String> {
    crate::route::parse(body)
        .map(|route| route.record(slug))
        .map_err(|e| PyValueError::new_err((e.field, e.message)))
}
