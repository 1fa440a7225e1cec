//! Lookups show each instance's latest load reading (`load.rs`): the instance's `load`
//! object gains `queued`, `running` and `kvCacheUsage` (an instance that declares no
//! source gets a `load` object of its own), and `loadAgeMs` says how old the reading is.
//! One function does it for every answer that carries instances (`{"instance": ...}`,
//! `{"instances": [...]}`), whichever door sends it; a body with no instance that has a
//! reading is left as it is (and costs nothing while no reading exists at all).
//!
//! The stored JSON is spliced, never rebuilt: keys stay in their stored order and values
//! are copied as they were written.

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::core::load::{LoadTable, Reading};
use crate::core::shared::now_ms;

/// An object's members in their order, values unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ordered<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Ordered<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'a>, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                    out.push((key, value));
                }
                Ok(Members(out))
            }
        }
        deserializer.deserialize_map(Ordered(std::marker::PhantomData))
    }
}

fn members(json: &str) -> Option<Vec<(String, &RawValue)>> {
    serde_json::from_str::<Members<'_>>(json).ok().map(|m| m.0)
}

/// `body` with the load of each instance it carries, or None when none has a reading.
pub fn with_load(table: &LoadTable, body: &[u8]) -> Option<Vec<u8>> {
    if !table.any() {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let now = now_ms();
    let top = members(text)?;
    let mut changed = false;
    let mut out = String::with_capacity(body.len() + 256);
    out.push('{');
    for (i, (key, value)) in top.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).ok()?);
        out.push(':');
        match key.as_str() {
            "instance" => changed |= instance(table, value.get(), now, &mut out),
            "instances" => {
                let items: Vec<&RawValue> = serde_json::from_str(value.get()).ok()?;
                out.push('[');
                for (j, item) in items.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    changed |= instance(table, item.get(), now, &mut out);
                }
                out.push(']');
            }
            _ => out.push_str(value.get()),
        }
    }
    out.push('}');
    changed.then(|| out.into_bytes())
}

/// Writes one instance object to `out`, with its reading if it has one; true if it had.
fn instance(table: &LoadTable, json: &str, now: u64, out: &mut String) -> bool {
    let id = serde_json::from_str::<IdOnly<'_>>(json).ok().and_then(|i| i.id);
    let reading = id.and_then(|id| table.reading(id, now));
    let (Some(reading), Some(fields)) = (reading, reading.and_then(|_| members(json))) else {
        out.push_str(json);
        return false;
    };
    out.push('{');
    let mut declared = false;
    let mut first = true;
    for (key, value) in &fields {
        if key == "loadAgeMs" {
            continue; // the reading's own follows
        }
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push(':');
        let raw = value.get();
        if key == "load" && raw.starts_with('{') {
            declared = true;
            let inner = raw.trim_end().strip_suffix('}').unwrap_or(raw).trim_end();
            out.push_str(inner);
            if !inner.ends_with('{') {
                out.push(',');
            }
            reading_fields(&reading, out);
            out.push('}');
        } else {
            out.push_str(raw);
        }
    }
    if !declared {
        out.push_str(if first { "\"load\":{" } else { ",\"load\":{" });
        reading_fields(&reading, out);
        out.push('}');
    }
    let _ = write!(out, ",\"loadAgeMs\":{}}}", reading.age_ms);
    true
}

fn reading_fields(reading: &Reading, out: &mut String) {
    let load = reading.load;
    let _ = write!(
        out,
        "\"queued\":{},\"running\":{},\"kvCacheUsage\":{}",
        load.queued, load.running, load.kv_cache
    );
}

#[derive(serde::Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::load::Load;

    fn table_with(id: &str, queued: u32) -> LoadTable {
        let table = LoadTable::private();
        table.report(
            id,
            Load {
                queued,
                running: 2,
                kv_cache: 0.5,
            },
            100,
            now_ms(),
        );
        table
    }

    #[test]
    fn a_declared_load_gains_the_reading_and_order_is_kept() {
        let table = table_with("a", 3);
        let body = br#"{"instance":{"id":"a","url":"http://127.0.0.1:1","load":{"type":"prometheus","intervalMs":100},"zone":"z"}}"#;
        let out = String::from_utf8(with_load(&table, body).unwrap()).unwrap();
        let prefix = r#"{"instance":{"id":"a","url":"http://127.0.0.1:1","load":{"type":"prometheus","intervalMs":100,"queued":3,"running":2,"kvCacheUsage":0.5},"zone":"z","loadAgeMs":"#;
        assert!(out.starts_with(prefix), "{out}");
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(value["instance"]["loadAgeMs"].as_u64().unwrap() < 1000);
    }

    #[test]
    fn lists_annotate_only_the_instances_with_a_reading() {
        let table = table_with("b", 7);
        let body = br#"{"instances":[{"id":"a"},{"id":"b","load":{}}],"count":2}"#;
        let out: serde_json::Value = serde_json::from_slice(&with_load(&table, body).unwrap()).unwrap();
        assert_eq!(out["instances"][0], serde_json::json!({"id": "a"}));
        assert_eq!(out["instances"][1]["load"]["queued"], 7);
        assert_eq!(out["count"], 2);
        assert!(with_load(&table, br#"{"instances":[{"id":"a"}]}"#).is_none());
        assert!(with_load(&LoadTable::private(), body).is_none());
    }

    #[test]
    fn an_instance_without_a_declared_source_gets_a_load_object() {
        let table = table_with("c", 1);
        let out: serde_json::Value =
            serde_json::from_slice(&with_load(&table, br#"{"instance":{"id":"c","loadAgeMs":5}}"#).unwrap()).unwrap();
        assert_eq!(out["instance"]["load"]["running"], 2);
        assert!(out["instance"]["loadAgeMs"].as_u64().unwrap() < 1000);
    }
}
