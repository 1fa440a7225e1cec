//! The load scraper: every instance that declares `"load": {"type": "prometheus", ...}` is
//! scraped every `intervalMs` by each server (load needs no consensus and never becomes a
//! write), its metrics read (`metrics.rs`) and the reading put in the shared load table
//! (`core/load.rs`) that picks read.
//!
//! One thread per server (the supervisor's) runs a small tokio runtime: a task per source,
//! each on a pooled keep-alive connection, fenced by the probe networks like the health
//! checks (a registered URL is an instruction to open a connection). The sources are read
//! again from the store whenever the instances change. A scrape that fails, times out or
//! finds none of the known names reports nothing: the reading ages, and past ten
//! intervals the instance's load counts as unknown.

pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use tokio::sync::watch;

use crate::core::cache::Stamp;
use crate::core::candidate::{parts, Host};
use crate::core::load::{DEFAULT_INTERVAL_MS, MAX_INTERVAL_MS, MIN_INTERVAL_MS};
use crate::core::model::INSTANCES;
use crate::core::shared::now_ms;
use crate::forward::{fenced_connector, Connector};
use crate::netguard::NetPolicy;
use crate::registry::Registry;

/// How often the store is asked whether the instances changed.
const REFRESH: Duration = Duration::from_millis(500);
/// The most of a metrics answer read (vLLM's, histograms included, is about 100 KB).
const MAX_METRICS_BYTES: usize = 4 << 20;
/// A scrape's answer must come within its interval, and never takes longer than this.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// One instance's metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    url: String,
    interval_ms: u32,
}

/// The running scraper; dropping it stops it.
pub struct Scraper {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    /// Starts scraping the sources `registry` holds, through connections `policy` allows.
    pub fn start(registry: Arc<Registry>, policy: NetPolicy) -> std::io::Result<Scraper> {
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new()
            .name("registry-load-scraper".into())
            .spawn(move || runtime.block_on(run(registry, Arc::new(policy), stopped)))?;
        Ok(Scraper {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops every scrape and waits for the thread.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop();
    }
}

type Scrapes = Client<Connector, Empty<Bytes>>;

async fn run(registry: Arc<Registry>, policy: Arc<NetPolicy>, mut stopped: watch::Receiver<bool>) {
    let client: Scrapes = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .build(fenced_connector(&policy));
    let mut running: HashMap<String, (Source, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut stamp: Option<Stamp> = None;
    loop {
        let current = stamp
            .as_ref()
            .is_some_and(|s| s.is_current(&registry.store, &INSTANCES, None).unwrap_or(false));
        if !current {
            stamp = Stamp::read(&registry.store, &INSTANCES, None).ok();
            let wanted = sources(&registry, &policy);
            running.retain(|id, (source, task)| {
                let keep = wanted.get(id) == Some(source);
                if !keep {
                    task.abort();
                }
                keep
            });
            for (id, source) in wanted {
                running.entry(id.clone()).or_insert_with(|| {
                    let task = tokio::spawn(scrape_loop(Arc::clone(&registry), client.clone(), id, source.clone()));
                    (source, task)
                });
            }
            registry.selector.load().set_sources(running.len() as u64);
        }
        tokio::select! {
            () = tokio::time::sleep(REFRESH) => {}
            _ = stopped.changed() => break,
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
    registry.selector.load().set_sources(0);
}

/// The instances that declare a prometheus load source, by id: those whose address the
/// fence allows (a host name is fenced when it is resolved, by the connector).
fn sources(registry: &Registry, policy: &NetPolicy) -> HashMap<String, Source> {
    let Ok((_, records)) = registry.store.list(&INSTANCES, &[]) else {
        return HashMap::new();
    };
    records
        .iter()
        .filter_map(|record| {
            let value: Value = serde_json::from_slice(&record.json).ok()?;
            let load = value.get("load")?;
            if load.get("type").and_then(Value::as_str) != Some("prometheus") {
                return None;
            }
            let (host, _, target) = parts(value.get("url")?.as_str()?)?;
            if let Host::Ip(ip) = host {
                policy.check(ip).ok()?;
            }
            let path = load.get("path").and_then(Value::as_str).unwrap_or("/metrics");
            let interval_ms = load
                .get("intervalMs")
                .and_then(Value::as_u64)
                .map_or(DEFAULT_INTERVAL_MS, |ms| {
                    ms.clamp(u64::from(MIN_INTERVAL_MS), u64::from(MAX_INTERVAL_MS)) as u32
                });
            let url = format!("{}://{}{}{}", target.scheme, target.netloc, target.path, path);
            let id = value.get("id")?.as_str()?.to_owned();
            Some((id, Source { url, interval_ms }))
        })
        .collect()
}

async fn scrape_loop(registry: Arc<Registry>, client: Scrapes, id: String, source: Source) {
    let interval = Duration::from_millis(u64::from(source.interval_ms));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Ok(uri) = source.url.parse::<hyper::Uri>() else {
        return;
    };
    loop {
        ticks.tick().await;
        let wait = interval.max(Duration::from_millis(500)).min(MAX_WAIT);
        let table = registry.selector.load();
        match tokio::time::timeout(wait, scrape(&client, uri.clone())).await {
            Ok(Some(load)) => {
                table.report(&id, load, source.interval_ms, now_ms());
                table.count_scrape(true);
            }
            _ => table.count_scrape(false),
        }
    }
}

/// One scrape: the load the answer reports, or None.
async fn scrape(client: &Scrapes, uri: hyper::Uri) -> Option<crate::core::load::Load> {
    let request = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, "text/plain")
        .header(hyper::header::USER_AGENT, "registry-svc-load")
        .body(Empty::new())
        .ok()?;
    let answer = client.request(request).await.ok()?;
    if answer.status() != hyper::StatusCode::OK {
        return None;
    }
    let body = Limited::new(answer.into_body(), MAX_METRICS_BYTES)
        .collect()
        .await
        .ok()?;
    metrics::parse(std::str::from_utf8(&body.to_bytes()).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::store::{Expect, Store};

    #[test]
    fn only_declared_sources_the_fence_allows_are_scraped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24).unwrap();
        let instances = [
            (
                "a",
                "http://127.0.0.1:9000/v1/",
                r#"{"type":"prometheus","intervalMs":5}"#,
            ),
            ("b", "http://10.1.2.3:9000", r#"{"type":"prometheus"}"#), // outside the fence
            ("c", "http://127.0.0.1:9001", r#"{"type":"push"}"#),
            ("d", "http://127.0.0.1:9002", "null"),
        ];
        for (id, url, load) in instances {
            let json = format!(r#"{{"id":"{id}","url":"{url}","slug":"s","load":{load}}}"#);
            store.put(&INSTANCES, id, json.into_bytes(), Expect::Any).unwrap();
        }
        let registry = Registry {
            store: Arc::new(store),
            writes: Arc::new(crate::writes::Local),
            selector: Default::default(),
            responses: Default::default(),
            tokens: Default::default(),
            routes: Default::default(),
        };
        let fence = NetPolicy::new(&["127.0.0.0/8"], "probe").unwrap();
        let found = sources(&registry, &fence);
        let a = Source {
            url: "http://127.0.0.1:9000/v1/metrics".to_owned(),
            interval_ms: MIN_INTERVAL_MS,
        };
        assert_eq!(found, HashMap::from([("a".to_owned(), a)]));
    }
}
