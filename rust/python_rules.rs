//! The binding of `rules.rs` (and `route.rs`): Python asks the gates' own rules rather than
//! keeping copies of them.

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

/// Whether `text` is a slug (`rules::is_slug`).
#[pyfunction]
fn is_slug(text: &str) -> bool {
    crate::rules::is_slug(text)
}

/// Whether a request target is one of the registry's own routes rather than the proxy's.
#[pyfunction]
fn is_registry_route(path: &str) -> bool {
    crate::rules::registry_route(path)
}

/// Adds the rules to the module: the functions, `RESERVED_SLUGS` (a list) and `SLUG_PATTERN`.
pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(route_record, m)?)?;
    m.add_function(wrap_pyfunction!(is_slug, m)?)?;
    m.add_function(wrap_pyfunction!(is_registry_route, m)?)?;
    m.add("RESERVED_SLUGS", crate::rules::RESERVED_SLUGS.to_vec())?;
    m.add("SLUG_PATTERN", crate::rules::SLUG_PATTERN)?;
    Ok(())
}
