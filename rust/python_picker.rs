//! The PyO3 binding of the selector over an in-memory candidate list: what the client's
//! `Resolver` picks with, the server's selection code without a store.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::core::select::{Candidate, EjectionConfig, PickRequest, Selector, SlugCandidates};
use crate::python::{chosen, policy};

/// One slug's instances held in memory and picked by `core::select` (policies, zones,
/// tags, Unknown only when nothing is Healthy). `replace` swaps the whole list; the
/// policy's state (the round robin's position) carries over.
#[pyclass(frozen, name = "Picker", module = "registry_svc._core")]
pub struct PyPicker {
    slug: String,
    selector: Selector,
    candidates: RwLock<Arc<SlugCandidates>>,
}

#[pymethods]
impl PyPicker {
    #[new]
    #[pyo3(signature = (slug, policy = "round_robin"))]
    fn new(slug: &str, policy: &str) -> PyResult<Self> {
        let policy = self::policy(policy)?;
        Ok(PyPicker {
            slug: slug.to_owned(),
            selector: Selector::new(policy, HashMap::new(), EjectionConfig::default()),
            candidates: RwLock::new(Arc::new(SlugCandidates::new(Vec::new()))),
        })
    }

    /// Replaces the instances with `instances` (each one's stored JSON). ValueError naming
    /// the first one that is not an instance (no id or url); nothing changes then.
    fn replace(&self, instances: Vec<Vec<u8>>) -> PyResult<usize> {
        let mut all = Vec::with_capacity(instances.len());
        for (at, json) in instances.iter().enumerate() {
            let candidate = Candidate::from_json(json).ok_or_else(|| {
                PyValueError::new_err(format!("instances[{at}] is not an instance with an id and a url"))
            })?;
            all.push(Arc::new(candidate));
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let count = all.len();
        *self
            .candidates
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(SlugCandidates::new(all));
        Ok(count)
    }

    /// (id, url) of the chosen instance. NotFoundError when none is known,
    /// NoRoutableError when none is routable.
    #[pyo3(signature = (zone = None, key = None, tags = None))]
    fn pick<'py>(
        &self,
        py: Python<'py>,
        zone: Option<&str>,
        key: Option<&str>,
        tags: Option<Vec<String>>,
    ) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyString>)> {
        let tags = tags.unwrap_or_default();
        let request = PickRequest {
            slug: &self.slug,
            zone,
            key,
            tags: &tags,
            ..PickRequest::default()
        };
        let candidates = Arc::clone(
            &self
                .candidates
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let c = chosen(
            self.selector.pick_among(&candidates, &request, Instant::now()),
            &self.slug,
        )?;
        Ok((PyString::new(py, &c.id), PyString::new(py, &c.url)))
    }

    fn __len__(&self) -> usize {
        self.candidates
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .all
            .len()
    }
}
