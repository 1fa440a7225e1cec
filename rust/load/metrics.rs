//! A model server's load, read from its Prometheus text exposition: the names vLLM, SGLang
//! and our own `registry_load_*` family use. Counts are summed over label sets (one vLLM
//! process per model, several engines behind one port); the KV-cache usage is the
//! largest (the fullest engine decides whether another request fits).

use crate::core::load::Load;

enum Signal {
    Queued,
    Running,
    KvCache,
}

/// The metric names read, and what each says.
const NAMES: [(&str, Signal); 10] = [
    ("vllm:num_requests_waiting", Signal::Queued),
    ("vllm:num_requests_running", Signal::Running),
    ("vllm:kv_cache_usage_perc", Signal::KvCache),
    ("vllm:gpu_cache_usage_perc", Signal::KvCache),
    ("sglang:num_queue_reqs", Signal::Queued),
    ("sglang:num_running_reqs", Signal::Running),
    ("sglang:token_usage", Signal::KvCache),
    ("registry_load_queued", Signal::Queued),
    ("registry_load_running", Signal::Running),
    ("registry_load_kv_cache_usage", Signal::KvCache),
];

/// The load `text` reports, or None when it holds none of the names.
pub fn parse(text: &str) -> Option<Load> {
    let (mut queued, mut running, mut kv_cache) = (0.0_f64, 0.0_f64, 0.0_f64);
    let mut found = false;
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = sample(line) else {
            continue;
        };
        let Some((_, signal)) = NAMES.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        if !value.is_finite() || value < 0.0 {
            continue;
        }
        found = true;
        match signal {
            Signal::Queued => queued += value,
            Signal::Running => running += value,
            Signal::KvCache => kv_cache = kv_cache.max(value),
        }
    }
    let count = |v: f64| v.round().min(f64::from(u32::MAX)) as u32;
    found.then(|| Load {
        queued: count(queued),
        running: count(running),
        kv_cache: kv_cache.min(1.0),
    })
}

/// A sample line's metric name and value (`name{labels} value [timestamp]`).
fn sample(line: &str) -> Option<(&str, f64)> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        rest = &rest[labels_end(rest)?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, value))
}

/// Where a label set `{...}` ends (after its `}`), quotes and escapes respected.
fn labels_end(text: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_and_sglang_names_are_read() {
        let vllm = "# HELP vllm:num_requests_waiting Number of requests waiting.\n\
            # TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"m{1}\"} 3.0\n\
            vllm:num_requests_waiting{engine=\"1\",model_name=\"a \\\"b\\\"\"} 2.0\n\
            vllm:num_requests_running{engine=\"0\"} 7.0 1700000000000\n\
            vllm:kv_cache_usage_perc{engine=\"0\"} 0.25\n\
            vllm:kv_cache_usage_perc{engine=\"1\"} 0.5\n\
            vllm:num_requests_waiting_by_reason{reason=\"x\"} 99\n\
            vllm:e2e_request_latency_seconds_bucket{le=\"+Inf\"} 5\n";
        let load = parse(vllm).unwrap();
        assert_eq!((load.queued, load.running), (5, 7));
        assert!((load.kv_cache - 0.5).abs() < 1e-12);
        let sglang = "sglang:num_queue_reqs 4\nsglang:num_running_reqs 2\nsglang:token_usage 0.9\n";
        let load = parse(sglang).unwrap();
        assert_eq!((load.queued, load.running), (4, 2));
        assert_eq!(parse("registry_load_queued 1\n").unwrap().queued, 1);
    }

    #[test]
    fn anything_else_reads_as_no_load() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("up 1\nprocess_cpu_seconds_total 5\n"), None);
        assert_eq!(parse("vllm:num_requests_waiting{broken 3\n"), None);
        assert_eq!(parse("vllm:num_requests_waiting NaN\n"), None);
        assert_eq!(parse("vllm:num_requests_running -1\n"), None);
        assert_eq!(parse("vllm:kv_cache_usage_perc 7\n").unwrap().kv_cache, 1.0);
    }
}
