//! The access-log line of a request the gate answered or proxied.

use super::*;

/// One request, as the access log records it.
pub struct AccessEntry<'a> {
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    /// The route pattern it matched (`/registry-svc/instances`, `/<slug>/*`).
    pub route: &'a str,
    pub status: u16,
    pub took: Duration,
    /// The caller's token id (never its secret), when it gave one.
    pub token: Option<&'a str>,
    pub client: Option<&'a str>,
}

/// The access-log line, one JSON object with its fields in a fixed order: the one format
/// of the gates and the workers (`access.py` asks for it through `_core.access_line`).
pub fn access_json(since_epoch: Duration, entry: &AccessEntry<'_>) -> String {
    let text = |v: &str| serde_json::Value::from(v).to_string();
    let optional = |v: Option<&str>| v.map_or_else(|| "null".to_owned(), text);
    let millis = serde_json::Value::from((entry.took.as_secs_f64() * 1e6).round() / 1e3);
    format!(
        r#"{{"ts":"{}","type":"access","method":{},"path":{},"route":{},"status":{},"durationMs":{},"token":{},"client":{}}}"#,
        utc_stamp(since_epoch),
        text(entry.method),
        text(entry.path),
        text(entry.route),
        entry.status,
        millis,
        optional(entry.token),
        optional(entry.client),
    )
}

/// Writes the access line of a request the gate's proxy handled to stderr.
pub(crate) fn access_line(method: &str, target: &str, status: u16, took: Duration, client_ip: IpAddr) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let client = client_ip.to_string();
    let entry = AccessEntry {
        method,
        path: target.split('?').next().unwrap_or_default(),
        route: "/<slug>/*",
        status,
        took,
        token: None,
        client: Some(&client),
    };
    let line = access_json(now, &entry);
    use std::io::Write;
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// `2026-12-02T01:02:03.456Z` for a time since the epoch.
pub fn utc_stamp(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}
