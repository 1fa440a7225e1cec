//! The rule of an instance lookup's query (`GET /registry-svc/instances`), kept once for
//! both languages: which filters there are, what a value may be, the stored form a value is
//! put in (`ip` and `nodeUrl` by `url.rs`, `host` lower-cased), repeats removed, and how
//! many distinct filters one query may carry (each is a response-cache entry). The workers
//! ask it through `_core.lookup_filters`; the gates (`reads.rs`) ask it directly and leave
//! a refused query to the workers, whose 400 carries the same words.

use crate::url::{canonical_ip, parse_url, MAX_URL_LEN};

/// Query name -> indexed (or scanned) field of the store, in the order the problems of a
/// query are reported (the model's, `models.InstanceFilters`).
pub const LOOKUP_FILTERS: [(&str, &str); 10] = [
    ("id", "id"),
    ("slug", "slug"),
    ("host", "host"),
    ("ip", "ip"),
    ("deploymentId", "deploymentId"),
    ("nodeUrl", "nodeUrl"),
    ("status", "status"),
    ("tag", "tags"),
    ("zone", "zone"),
    ("scheme", "scheme"),
];
/// Distinct filters one query may carry.
pub const MAX_FILTERS: usize = 16;
/// Longest filter value (characters); a `nodeUrl` may be as long as any URL.
const MAX_VALUE: usize = 256;

/// A refused query: the first problem (`field: problem`), and every problem when there
/// are several.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub error: String,
    pub errors: Vec<String>,
}

impl Refused {
    fn one(field: &str, problem: impl std::fmt::Display) -> Refused {
        Refused {
            error: format!("{field}: {problem}"),
            errors: Vec::new(),
        }
    }
}

/// The store filters of a lookup: `params` (name -> values, in the order the problems of
/// unknown names are reported) checked, each value in its stored form, repeats removed,
/// sorted by field and value.
pub fn lookup_filters(params: &[(String, Vec<String>)]) -> Result<Vec<(String, String)>, Refused> {
    if let Some((name, _)) = params.iter().find(|(n, _)| field_of(n).is_none()) {
        let known: Vec<&str> = LOOKUP_FILTERS.iter().map(|(q, _)| *q).collect();
        return Err(Refused::one(
            name,
            format!("unknown parameter; use {}", known.join(", ")),
        ));
    }
    let mut problems: Vec<String> = Vec::new();
    let mut filters: Vec<(String, String)> = Vec::new();
    for (query, field) in LOOKUP_FILTERS {
        for (_, values) in params.iter().filter(|(n, _)| n == query) {
            for value in values {
                match stored_form(query, value) {
                    Ok(stored) => filters.push((field.to_owned(), stored)),
                    Err(problem) => {
                        let problem = format!("{query}: {problem}");
                        if !problems.contains(&problem) {
                            problems.push(problem);
                        }
                    }
                }
            }
        }
    }
    if let Some(first) = problems.first() {
        return Err(Refused {
            error: first.clone(),
            errors: if problems.len() > 1 { problems } else { Vec::new() },
        });
    }
    filters.sort();
    filters.dedup();
    if filters.len() > MAX_FILTERS {
        let first = params.first().map_or("", |(n, _)| n.as_str());
        return Err(Refused::one(
            first,
            format!("at most {MAX_FILTERS} distinct filters per query"),
        ));
    }
    Ok(filters)
}

fn field_of(name: &str) -> Option<&'static str> {
    LOOKUP_FILTERS.iter().find(|(q, _)| *q == name).map(|(_, f)| *f)
}

/// One value in the form the store holds, or what is wrong with it.
fn stored_form(name: &str, value: &str) -> Result<String, String> {
    let max = if name == "nodeUrl" { MAX_URL_LEN } else { MAX_VALUE };
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if value.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}') {
        return Err("must not contain control characters".to_owned());
    }
    match name {
        "host" => Ok(value.to_lowercase()),
        "ip" if value.is_empty() => Ok(String::new()),
        "ip" => canonical_ip(value),
        "nodeUrl" if value.is_empty() => Err("must not be empty".to_owned()),
        "nodeUrl" => parse_url(value).map(|endpoint| endpoint.url()),
        _ => Ok(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        pairs
            .iter()
            .map(|(n, vs)| (n.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    #[test]
    fn values_are_put_in_their_stored_form() {
        let got = lookup_filters(&params(&[
            ("host", &["Svc.Example"]),
            ("ip", &["0:0::1", ""]),
            ("nodeUrl", &["HTTP://N:80/"]),
            ("tag", &["b", "a", "b"]),
        ]))
        .unwrap();
        let want = [
            ("host", "svc.example"),
            ("ip", ""),
            ("ip", "::1"),
            ("nodeUrl", "http://n"),
            ("tags", "a"),
            ("tags", "b"),
        ];
        assert_eq!(got, want.map(|(f, v)| (f.to_owned(), v.to_owned())));
    }

    #[test]
    fn problems_name_their_field_first_unknown_names_then_the_models_order() {
        let unknown = lookup_filters(&params(&[("colour", &["red"]), ("ip", &["x"])])).unwrap_err();
        assert!(
            unknown.error.starts_with("colour: unknown parameter; use id, slug,"),
            "{unknown:?}"
        );
        let several = lookup_filters(&params(&[
            ("zone", &["z\u{1}"]),
            ("ip", &["x", "x"]),
            ("nodeUrl", &[""]),
        ]))
        .unwrap_err();
        assert_eq!(several.error, "ip: 'x' is not an IPv4 or IPv6 address");
        assert_eq!(
            several.errors,
            [
                "ip: 'x' is not an IPv4 or IPv6 address",
                "nodeUrl: must not be empty",
                "zone: must not contain control characters"
            ]
        );
        let long = "z".repeat(257);
        let too_long = lookup_filters(&params(&[("zone", &[long.as_str()])])).unwrap_err();
        assert_eq!(too_long.error, "zone: must be at most 256 characters");
        let zones: Vec<String> = (0..17).map(|i| format!("z{i}")).collect();
        let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
        let many = lookup_filters(&params(&[("zone", &zones)])).unwrap_err();
        assert_eq!(many.error, "zone: at most 16 distinct filters per query");
    }
}
