//! Request rules both languages need, kept once here: which paths are the registry's own
//! routes, which slugs are reserved for them, and what a slug may look like. The gates use
//! them directly; Python reads them from the extension (`_core.RESERVED_SLUGS`,
//! `_core.SLUG_PATTERN`, `_core.is_slug`, `_core.ID_PATTERN`, `_core.is_record_id`,
//! `_core.is_registry_route`).

/// Slugs that name the registry's own routes, so never a service's: `/<slug>/...` with one
/// of them is the registry's, not the proxy's.
pub const RESERVED_SLUGS: [&str; 5] = ["registry-svc", "health", "metrics", "version", "ui"];

/// Envoy's REST xDS paths, the registry's routes that are not under a reserved slug.
const XDS_PREFIX: &str = "/v3/discovery:";

/// A slug as a regular expression, for the request models' validation and the OpenAPI
/// document; [`is_slug`] is the same rule without a regex engine.
pub const SLUG_PATTERN: &str = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$";

/// Whether `text` is a slug: 1 to 63 lowercase letters, digits, `-` and `_`, starting and
/// ending with a letter or digit.
pub fn is_slug(text: &str) -> bool {
    let bytes = text.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-' || *b == b'_')
}

/// A record id (an instance's, a token's) as a regular expression, for the request models
/// and the OpenAPI document; [`is_record_id`] is the same rule without a regex engine.
pub const ID_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$";

/// Whether `text` is a record id: 1 to 128 ASCII letters, digits, `_`, `.`, `:` and `-`,
/// starting with a letter or digit.
pub fn is_record_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Whether `path` (a request target, query included) is one of the registry's own routes
/// rather than a slug for the proxy. The gates use it for the body limit (1 MiB for the
/// registry's routes, the proxy's otherwise), the data port's refusals and the proxy's
/// choice; the workers for the same choice.
pub fn registry_route(path: &str) -> bool {
    let first = path
        .trim_start_matches('/')
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    RESERVED_SLUGS.contains(&first) || path.starts_with(XDS_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_routes_are_the_reserved_slugs_and_xds() {
        for path in [
            "/registry-svc/instances?slug=a",
            "/health",
            "/health?x=1",
            "/metrics",
            "/version",
            "/ui/app.js",
            "/v3/discovery:endpoints",
            "/v3/discovery:clusters",
        ] {
            assert!(registry_route(path), "{path}");
        }
        for path in ["/web/health", "/healthz", "/v3/other", "/registry-svcx/a", "/"] {
            assert!(!registry_route(path), "{path}");
        }
    }

    #[test]
    fn reserved_slugs_are_slugs() {
        assert!(RESERVED_SLUGS.iter().all(|s| is_slug(s)));
    }

    #[test]
    fn slugs() {
        for ok in ["a", "web", "user-svc", "a_b", "9", &"a".repeat(63)] {
            assert!(is_slug(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "_a", "A", "a.b", "a/b", &"a".repeat(64)] {
            assert!(!is_slug(bad), "{bad}");
        }
    }
}
