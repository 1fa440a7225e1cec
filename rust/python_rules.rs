//! The binding of `rules.rs` (and `route.rs`): Python asks the gates' own rules rather than
//! keeping copies of them.

use std::net::IpAddr;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::netguard;

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

/// Whether `text` is a record id (`rules::ID_PATTERN`).
#[pyfunction]
fn is_record_id(text: &str) -> bool {
    crate::rules::is_record_id(text)
}

/// Whether a request target is one of the registry's own routes rather than the proxy's.
#[pyfunction]
fn is_registry_route(path: &str) -> bool {
    crate::rules::registry_route(path)
}

fn ip(address: &str) -> PyResult<IpAddr> {
    let bare = address.trim_start_matches('[').trim_end_matches(']');
    bare.parse()
        .map_err(|_| PyValueError::new_err(format!("'{address}' is not an IP address")))
}

/// The networks the server may connect to for one purpose (`probe` or `proxy`): the fence
/// of `netguard.rs`, the one the proxy applies, asked by the health probes. Refusals are
/// ValueErrors whose message is the instance's statusReason.
#[pyclass(name = "NetPolicy", module = "registry_svc._core", frozen)]
pub struct PyNetPolicy(netguard::NetPolicy);

#[pymethods]
impl PyNetPolicy {
    #[new]
    fn new(cidrs: Vec<String>, purpose: &str) -> PyResult<Self> {
        let purpose = match purpose {
            "probe" => "probe",
            "proxy" => "proxy",
            other => {
                return Err(PyValueError::new_err(format!(
                    "purpose must be probe or proxy, not '{other}'"
                )))
            }
        };
        netguard::NetPolicy::new(&cidrs, purpose)
            .map(PyNetPolicy)
            .map_err(PyValueError::new_err)
    }

    fn allows(&self, address: &str) -> PyResult<bool> {
        Ok(self.0.allows(ip(address)?))
    }

    fn describe(&self) -> &str {
        self.0.describe()
    }

    #[getter]
    fn loopback_only(&self) -> bool {
        self.0.loopback_only()
    }

    /// The allowed addresses of `host` known without a resolver, None when a resolver must
    /// be asked; ValueError(reason) when nothing may be connected to.
    fn known(&self, host: &str) -> PyResult<Option<Vec<String>>> {
        let known = self.0.known(host).map_err(PyValueError::new_err)?;
        Ok(known.map(|ips| ips.iter().map(IpAddr::to_string).collect()))
    }

    /// What a resolver found for `host`, less what the policy does not allow;
    /// ValueError(reason) when nothing is left.
    fn choose(&self, host: &str, found: Vec<String>) -> PyResult<Vec<String>> {
        let found = found.iter().map(|a| ip(a)).collect::<PyResult<Vec<_>>>()?;
        let allowed = self.0.choose(host, &found).map_err(PyValueError::new_err)?;
        Ok(allowed.iter().map(IpAddr::to_string).collect())
    }
}

/// Networks in canonical form (`10.1.2.3/8` -> `10.0.0.0/8`), blanks skipped; ValueError
/// naming a bad one.
#[pyfunction]
fn parse_networks(items: Vec<String>) -> PyResult<Vec<String>> {
    let networks = netguard::parse_networks(&items).map_err(PyValueError::new_err)?;
    Ok(networks.iter().map(netguard::Net::canonical).collect())
}

/// Whether an address is link-local or a cloud metadata address (in any IPv6 spelling).
#[pyfunction]
fn is_sensitive(address: &str) -> PyResult<bool> {
    Ok(netguard::is_sensitive(ip(address)?))
}

/// The access-log line of one request (`edge/access.rs`), for a record created at
/// `created` (seconds since the epoch) that took `seconds`.
#[pyfunction]
#[pyo3(signature = (created, method, path, route, status, seconds, token, client))]
#[allow(clippy::too_many_arguments)]
fn access_line(
    created: f64,
    method: &str,
    path: &str,
    route: &str,
    status: u16,
    seconds: f64,
    token: Option<&str>,
    client: Option<&str>,
) -> String {
    let entry = crate::edge::AccessEntry {
        method,
        path,
        route,
        status,
        took: std::time::Duration::from_secs_f64(seconds.max(0.0)),
        token,
        client,
    };
    crate::edge::access_json(std::time::Duration::from_secs_f64(created.max(0.0)), &entry)
}

/// The caller behind an Authorization header: (token id, role, slug, expiry in unix
/// seconds or None), from `tokens.rs`, the gates' own authentication and cache;
/// ValueError(message of the 401) when it names none, StoreError when the tokens cannot
/// be read.
#[pyfunction]
fn authenticate(
    store: PyRef<'_, crate::python::PyStore>,
    header: &str,
) -> PyResult<(String, String, Option<String>, Option<f64>)> {
    let registry = &store.registry;
    match registry.tokens.resolve(registry, header) {
        Ok(c) => Ok((c.id, c.role, c.slug, c.expires_ms.map(|ms| ms as f64 / 1000.0))),
        Err(crate::tokens::Refused::Store(e)) => Err(crate::python_errors::to_py(e)),
        Err(refused) => Err(PyValueError::new_err(refused.message())),
    }
}

/// Query pairs as the HTTP server hands them over (raw), decoded by the gates' rule
/// (`reads.rs`) and grouped by name, sorted: [(name, [values])]. ValueError (error,
/// errors) naming the first part that is not percent-encoded UTF-8.
#[pyfunction]
fn query_pairs(pairs: Vec<(String, String)>) -> PyResult<Vec<(String, Vec<String>)>> {
    let mut decoded = Vec::with_capacity(pairs.len());
    for (name, value) in &pairs {
        let one = |text: &str| {
            crate::reads::decode(text).ok_or_else(|| {
                let error = format!("query: '{text}' is not percent-encoded UTF-8");
                PyValueError::new_err((error.clone(), vec![error]))
            })
        };
        decoded.push((one(name)?, one(value)?));
    }
    Ok(crate::reads::by_name(&decoded))
}

/// A path parameter as the HTTP server hands it over (raw), decoded (`reads.rs`);
/// ValueError (error, errors) when it is not percent-encoded UTF-8.
#[pyfunction]
fn path_segment(name: &str, raw: &str) -> PyResult<String> {
    crate::reads::decode_segment(raw).ok_or_else(|| {
        let error = format!("{name}: '{raw}' is not percent-encoded UTF-8");
        PyValueError::new_err((error.clone(), vec![error]))
    })
}

/// Whether `role` grants `permission` (`roles.rs`: the gates ask the same).
#[pyfunction]
fn role_allows(role: &str, permission: &str) -> bool {
    crate::roles::allows(role, permission)
}

/// Whether a caller of `role` sees every slug's records, not only its own slug's.
#[pyfunction]
fn sees_every_slug(role: &str) -> bool {
    crate::roles::sees_every_slug(role)
}

/// The IPv4 address an IPv6 spelling carries (IPv4-mapped, IPv4-compatible, NAT64, 6to4),
/// or the address itself: the fence's one rule for spellings (`netguard.rs`).
#[pyfunction]
fn unmapped_address(address: &str) -> PyResult<String> {
    let ip: std::net::IpAddr = address
        .parse()
        .map_err(|_| PyValueError::new_err(format!("'{address}' is not an IP address")))?;
    Ok(crate::netguard::unmapped(ip).to_string())
}

/// The canonical parts of an endpoint URL (`url.rs`): (scheme, host, port or None for the
/// scheme's default, path); ValueError saying what is wrong.
#[pyfunction]
fn parse_url(text: &str) -> PyResult<(&'static str, String, Option<u16>, String)> {
    let e = crate::url::parse_url(text).map_err(PyValueError::new_err)?;
    Ok((e.scheme, e.host, e.port, e.path))
}

/// A host name or IP address in canonical form (IPv6 without brackets); ValueError.
#[pyfunction]
fn canonical_host(text: &str) -> PyResult<String> {
    crate::url::canonical_host(text).map_err(PyValueError::new_err)
}

/// An IP address as Python's `str(ip_address(text))` writes it; ValueError saying what is
/// wrong (not an address, or an IPv6 zone).
#[pyfunction]
fn canonical_ip(text: &str) -> PyResult<String> {
    crate::url::canonical_ip(text).map_err(PyValueError::new_err)
}

/// A URL path of RFC 3986 characters ('' for none or '/'); ValueError.
#[pyfunction]
fn canonical_path(path: &str) -> PyResult<String> {
    crate::url::canonical_path(path).map_err(PyValueError::new_err)
}

/// The store filters of an instance lookup (`rust/query.rs`): `params` (name -> values)
/// checked, each value in its stored form, repeats removed, sorted. ValueError with
/// (error, errors) when refused: the first problem and, when there are several, all.
#[pyfunction]
fn lookup_filters(params: Vec<(String, Vec<String>)>) -> PyResult<Vec<(String, String)>> {
    crate::query::lookup_filters(&params).map_err(|refused| PyValueError::new_err((refused.error, refused.errors)))
}

/// A blocking query's parameters (`rust/query.rs` `blocking`: the last `index` and
/// `wait` values): None for a plain query, else (index, seconds to wait). ValueError with
/// (error, errors) naming the bad parameter.
#[pyfunction]
#[pyo3(signature = (index, wait))]
fn blocking_params(index: Option<&str>, wait: Option<&str>) -> PyResult<Option<(u64, f64)>> {
    crate::query::blocking(index, wait).map_err(|refused| PyValueError::new_err((refused.error, refused.errors)))
}

/// An index as a client sends it (`?index=`, an xDS `version_info`): up to 19 ASCII
/// digits, else None.
#[pyfunction]
fn parse_index(text: &str) -> Option<u64> {
    crate::query::parse_index(text)
}

/// A pick's query checked (`rust/query.rs`): (slug, policy or None, zone or None, key or
/// None, tags sorted and distinct). ValueError with (error, errors) when refused.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn pick_query(
    params: Vec<(String, Vec<String>)>,
) -> PyResult<(
    String,
    Option<&'static str>,
    Option<String>,
    Option<String>,
    Vec<String>,
    Option<String>,
)> {
    let query =
        crate::query::pick_query(&params).map_err(|refused| PyValueError::new_err((refused.error, refused.errors)))?;
    Ok((
        query.slug,
        query.policy.map(|p| p.name()),
        query.zone,
        query.key,
        query.tags,
        query.model,
    ))
}

/// Adds the rules to the module: the functions, `RESERVED_SLUGS` (a list) and `SLUG_PATTERN`.
pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(route_record, m)?)?;
    m.add_function(wrap_pyfunction!(is_slug, m)?)?;
    m.add_function(wrap_pyfunction!(is_registry_route, m)?)?;
    m.add_function(wrap_pyfunction!(is_record_id, m)?)?;
    m.add_class::<PyNetPolicy>()?;
    m.add_function(wrap_pyfunction!(access_line, m)?)?;
    m.add_function(wrap_pyfunction!(parse_url, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_host, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_path, m)?)?;
    m.add_function(wrap_pyfunction!(canonical_ip, m)?)?;
    m.add_function(wrap_pyfunction!(lookup_filters, m)?)?;
    m.add_function(wrap_pyfunction!(blocking_params, m)?)?;
    m.add_function(wrap_pyfunction!(parse_index, m)?)?;
    m.add_function(wrap_pyfunction!(pick_query, m)?)?;
    let names: Vec<&str> = crate::query::LOOKUP_FILTERS.iter().map(|(name, _)| *name).collect();
    m.add("LOOKUP_FILTERS", names)?;
    m.add_function(wrap_pyfunction!(unmapped_address, m)?)?;
    m.add_function(wrap_pyfunction!(authenticate, m)?)?;
    m.add_function(wrap_pyfunction!(query_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(path_segment, m)?)?;
    m.add_function(wrap_pyfunction!(role_allows, m)?)?;
    m.add_function(wrap_pyfunction!(sees_every_slug, m)?)?;
    let permissions: std::collections::HashMap<&str, &str> = crate::roles::PERMISSIONS.into_iter().collect();
    m.add("PERMISSIONS", permissions)?;
    let roles: Vec<(&str, Vec<&str>)> = crate::roles::ROLES.iter().map(|(r, g)| (*r, g.to_vec())).collect();
    m.add("ROLES", roles)?;
    m.add_function(wrap_pyfunction!(parse_networks, m)?)?;
    m.add_function(wrap_pyfunction!(is_sensitive, m)?)?;
    m.add("POLICIES", crate::core::select::Policy::NAMES.to_vec())?;
    m.add("LOAD_MIN_INTERVAL_MS", crate::core::load::MIN_INTERVAL_MS)?;
    m.add("LOAD_MAX_INTERVAL_MS", crate::core::load::MAX_INTERVAL_MS)?;
    m.add("LOAD_DEFAULT_INTERVAL_MS", crate::core::load::DEFAULT_INTERVAL_MS)?;
    m.add("PREFIX_HEADER", crate::forward::inference::PREFIX_HEADER)?;
    // The collections, and the fields at most one record of each may hold: the cluster's
    // guard keys (`etcd_keys.py`) follow the store's unique indexes.
    let collections = &crate::core::model::COLLECTIONS;
    m.add("COLLECTIONS", collections.iter().map(|c| c.name).collect::<Vec<_>>())?;
    let unique: std::collections::HashMap<&str, Vec<&str>> = collections
        .iter()
        .map(|c| {
            (
                c.name,
                c.indexes
                    .iter()
                    .filter(|i| i.unique)
                    .map(|i| i.field)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, fields)| !fields.is_empty())
        .collect();
    m.add("UNIQUE_FIELDS", unique)?;
    m.add("RESERVED_SLUGS", crate::rules::RESERVED_SLUGS.to_vec())?;
    m.add("SLUG_PATTERN", crate::rules::SLUG_PATTERN)?;
    m.add("ID_PATTERN", crate::rules::ID_PATTERN)?;
    Ok(())
}
