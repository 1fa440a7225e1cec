//! The rules of the hot reads' queries, kept once for both languages. A lookup's
//! (`GET /registry-svc/instances`): which filters there are, what a value may be, the
//! stored form a value is put in (`ip` and `nodeUrl` by `url.rs`, `host` lower-cased),
//! repeats removed, and how many distinct filters one query may carry (each is a
//! response-cache entry). A pick's (`GET /registry-svc/instance/pick`): the slug, the
//! policy, the zone, the hash key, the tags. The workers ask them through
//! `_core.lookup_filters` and `_core.pick_query`; the gates (`reads.rs`) ask them directly
//! and leave a refused query to the workers, whose 400 carries the same words.

use crate::core::policy::Policy;
use crate::rules::is_slug;
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

/// How long a blocking query waits without `wait`, and at most (seconds).
pub const DEFAULT_WAIT_SECONDS: f64 = 300.0;
pub const MAX_WAIT_SECONDS: f64 = 600.0;

/// A blocking query's parameters (Consul's `?index=N&wait=D`, the last value of each,
/// decoded): None for a plain query, else the index and the wait in seconds (`wait`
/// defaults to 300 s, and is cut to 600 s). The gates ask it to tell a blocking read (it
/// goes to the workers with an id the gate can cancel); the workers, to wait.
pub fn blocking(index: Option<&str>, wait: Option<&str>) -> Result<Option<(u64, f64)>, Refused> {
    let Some(text) = index else {
        return match wait {
            Some(_) => Err(Refused::one(
                "wait",
                "only with index (the X-Registry-Index of the previous answer)",
            )),
            None => Ok(None),
        };
    };
    let index = parse_index(text)
        .ok_or_else(|| Refused::one("index", format!("must be a non-negative integer, got '{text}'")))?;
    let seconds = match wait {
        None => DEFAULT_WAIT_SECONDS,
        Some(text) => parse_duration(text).ok_or_else(|| {
            Refused::one(
                "wait",
                format!("must be a duration such as 30s, 500ms or 5m, got '{text}'"),
            )
        })?,
    };
    Ok(Some((index, seconds.min(MAX_WAIT_SECONDS))))
}

/// An index as a client sends it (`?index=`, an xDS `version_info`): 1 to 19 ASCII digits.
pub fn parse_index(text: &str) -> Option<u64> {
    (!text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// `30s`, `500ms`, `5m`, `1h`, `2.5` (seconds): digits, an optional fraction, a unit.
fn parse_duration(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return None;
    }
    number.parse::<f64>().ok().map(|value| value * scale)
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
                    Err(problem) => note(&mut problems, query, problem),
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
    if has_control(value) {
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

/// Distinct tags a pick may ask for.
pub const MAX_PICK_TAGS: usize = 16;
/// A pick's parameters, in the order their problems are reported.
const PICK_NAMES: [&str; 6] = ["slug", "policy", "zone", "key", "tag", "model"];

/// A pick's query, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct PickQuery {
    pub slug: String,
    pub policy: Option<Policy>,
    pub zone: Option<String>,
    pub key: Option<String>,
    /// Sorted, distinct.
    pub tags: Vec<String>,
    /// Only instances serving this model (`models`).
    pub model: Option<String>,
}

/// A pick's query checked: `params` (name -> values, in the order the problems of unknown
/// or repeated names are reported); every other problem is reported in `PICK_NAMES` order.
pub fn pick_query(params: &[(String, Vec<String>)]) -> Result<PickQuery, Refused> {
    for (name, values) in params {
        if !PICK_NAMES.contains(&name.as_str()) {
            return Err(Refused::one(
                name,
                format!("unknown parameter; use {}", PICK_NAMES.join(", ")),
            ));
        }
        if name != "tag" && values.len() > 1 {
            return Err(Refused::one(name, "give it once"));
        }
    }
    let given = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
    let one = |name: &str| given(name).and_then(<[String]>::first);
    let mut problems: Vec<String> = Vec::new();
    match one("slug") {
        None => note(&mut problems, "slug", "required".to_owned()),
        Some(slug) => {
            if let Err(problem) = slug_problem(slug) {
                note(&mut problems, "slug", problem);
            }
        }
    }
    let policy = one("policy").map(|name| Policy::parse(name).ok_or(name));
    if let Some(Err(_)) = policy {
        note(
            &mut problems,
            "policy",
            format!("must be one of {}", spelled(&Policy::NAMES)),
        );
    }
    for (field, max) in [("zone", 128), ("key", 256)] {
        if let Some(Err(problem)) = one(field).map(|v| text(v, max)) {
            note(&mut problems, field, problem);
        }
    }
    let mut tags: Vec<String> = given("tag").unwrap_or_default().to_vec();
    let bad_tags: Vec<String> = tags.iter().filter_map(|t| text(t, 128).err()).collect();
    for problem in bad_tags {
        note(&mut problems, "tag", problem);
    }
    tags.sort();
    tags.dedup();
    if problems.is_empty() && tags.len() > MAX_PICK_TAGS {
        note(
            &mut problems,
            "tag",
            format!("at most {MAX_PICK_TAGS} distinct tags per query"),
        );
    }
    if let Some(Err(problem)) = one("model").map(|v| text(v, 256)) {
        note(&mut problems, "model", problem);
    }
    let policy = policy.and_then(Result::ok);
    if problems.is_empty() && policy == Some(Policy::ConsistentHash) && one("key").is_none() {
        note(&mut problems, "key", "required with policy=consistent_hash".to_owned());
    }
    if let Some(first) = problems.first() {
        return Err(Refused {
            error: first.clone(),
            errors: if problems.len() > 1 { problems } else { Vec::new() },
        });
    }
    Ok(PickQuery {
        slug: one("slug").cloned().unwrap_or_default(),
        policy,
        zone: one("zone").cloned(),
        key: one("key").cloned(),
        tags,
        model: one("model").cloned(),
    })
}

/// Adds `field: problem` to `problems`, once.
fn note(problems: &mut Vec<String>, field: &str, problem: impl std::fmt::Display) {
    let problem = format!("{field}: {problem}");
    if !problems.contains(&problem) {
        problems.push(problem);
    }
}

/// A required text value: not empty, at most `max` characters, no control characters.
fn text(value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if has_control(value) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// A slug: not empty, at most 63 characters, `rules::is_slug`.
fn slug_problem(slug: &str) -> Result<(), String> {
    if slug.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if slug.chars().count() > 63 {
        return Err("must be at most 63 characters".to_owned());
    }
    if is_slug(slug) {
        return Ok(());
    }
    Err("must be lowercase letters, digits, '-' or '_', starting and ending with a letter or digit".to_owned())
}

fn has_control(value: &str) -> bool {
    value.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}')
}

/// `'a', 'b' or 'c'`.
fn spelled(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_parameters_are_read_as_consul_writes_them() {
        assert_eq!(blocking(None, None), Ok(None));
        assert_eq!(blocking(Some("7"), None), Ok(Some((7, DEFAULT_WAIT_SECONDS))));
        assert_eq!(blocking(Some("0"), Some("500ms")), Ok(Some((0, 0.5))));
        assert_eq!(blocking(Some("3"), Some("2.5")), Ok(Some((3, 2.5))));
        assert_eq!(blocking(Some("3"), Some("5m")), Ok(Some((3, 300.0))));
        assert_eq!(blocking(Some("3"), Some("2h")), Ok(Some((3, MAX_WAIT_SECONDS))));
        assert_eq!(
            blocking(Some("9999999999999999999"), None).unwrap().unwrap().0,
            9_999_999_999_999_999_999
        );
        for index in ["", "-1", "1e3", "²", "12345678901234567890", " 1"] {
            assert!(
                blocking(Some(index), None).unwrap_err().error.starts_with("index: "),
                "{index}"
            );
        }
        for wait in ["", "1.", ".5", "5x", "1.2.3", "1 s", "-1s"] {
            assert!(
                blocking(Some("1"), Some(wait)).unwrap_err().error.starts_with("wait: "),
                "{wait}"
            );
        }
        assert!(blocking(None, Some("5s"))
            .unwrap_err()
            .error
            .starts_with("wait: only with index"));
    }

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

    #[test]
    fn picks_are_checked_as_the_api_documents_them() {
        let query = pick_query(&params(&[
            ("tag", &["b", "a", "b"]),
            ("slug", &["shop"]),
            ("policy", &["random"]),
        ]))
        .unwrap();
        assert_eq!(
            query,
            PickQuery {
                slug: "shop".to_owned(),
                policy: Some(Policy::Random),
                zone: None,
                key: None,
                tags: vec!["a".to_owned(), "b".to_owned()],
                model: None,
            }
        );
        let refused = |pairs: &[(&str, &[&str])]| pick_query(&params(pairs)).unwrap_err().error;
        assert_eq!(refused(&[]), "slug: required");
        assert_eq!(refused(&[("slug", &["a", "b"])]), "slug: give it once");
        assert_eq!(
            refused(&[("colour", &["red"])]),
            "colour: unknown parameter; use slug, policy, zone, key, tag, model"
        );
        assert_eq!(
            refused(&[("slug", &["a"]), ("policy", &["x"])]),
            "policy: must be one of 'round_robin', 'random', 'weighted', 'least_request', 'consistent_hash', 'least_load' or 'prefix'"
        );
        assert!(refused(&[("slug", &["A_b"])]).starts_with("slug: must be lowercase letters"));
        assert_eq!(refused(&[("slug", &["a"]), ("zone", &[""])]), "zone: must not be empty");
        assert_eq!(
            refused(&[("slug", &["a"]), ("policy", &["consistent_hash"])]),
            "key: required with policy=consistent_hash"
        );
        let tags: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        assert_eq!(
            refused(&[("slug", &["a"]), ("tag", &tags)]),
            "tag: at most 16 distinct tags per query"
        );
        let long = "a".repeat(64);
        assert_eq!(
            refused(&[("slug", &[long.as_str()])]),
            "slug: must be at most 63 characters"
        );
    }
}
