//! Store behaviour through its public API, over a real LMDB environment in a temp dir.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use crate::core::model::{INSTANCES, NODES};
use crate::core::store::{Expect, Op, Store, StoreError};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 64 << 20).unwrap();
    (dir, store)
}

fn instance(id: &str, slug: &str, url: &str, tags: &[&str]) -> Vec<u8> {
    serde_json::json!({"id": id, "slug": slug, "url": url, "tags": tags, "status": "Unknown"})
        .to_string()
        .into_bytes()
}

fn filters(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn put_get_list_and_index_bumps() {
    let (_dir, store) = open();
    assert_eq!(store.index().unwrap(), 0);
    let i1 = store
        .put(&INSTANCES, "a", instance("a", "s1", "http://a", &["x"]), Expect::Any)
        .unwrap();
    let i2 = store
        .put(
            &INSTANCES,
            "b",
            instance("b", "s1", "http://b", &["x", "y"]),
            Expect::Any,
        )
        .unwrap();
    assert_eq!((i1, i2), (1, 2));
    assert_eq!(store.index().unwrap(), 2);
    assert_eq!(store.collection_index(&INSTANCES).unwrap(), 2);
    assert_eq!(store.collection_index(&NODES).unwrap(), 0);
    assert_eq!(store.get(&INSTANCES, "a").unwrap().unwrap().version, 1);

    let (_, body) = store
        .list_json(&INSTANCES, &filters(&[("slug", "s1"), ("tags", "y")]), "instances")
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["instances"].as_array().unwrap().len(), 1);
    assert_eq!(parsed["instances"][0]["id"], "b");

    let (_, empty) = store
        .list_json(&INSTANCES, &filters(&[("slug", "nope")]), "instances")
        .unwrap();
    assert_eq!(empty, br#"{"instances":[]}"#);
    let (_, by_id) = store
        .list(&INSTANCES, &filters(&[("id", "a"), ("slug", "s1")]))
        .unwrap();
    assert_eq!(by_id.len(), 1);
}

#[test]
fn update_moves_index_entries_and_delete_removes_them() {
    let (_dir, store) = open();
    store
        .put(&INSTANCES, "a", instance("a", "s1", "http://a", &[]), Expect::Any)
        .unwrap();
    store
        .put(&INSTANCES, "a", instance("a", "s2", "http://a2", &[]), Expect::Any)
        .unwrap();
    assert!(store.ids_by(&INSTANCES, "slug", "s1").unwrap().is_empty());
    assert_eq!(store.ids_by(&INSTANCES, "slug", "s2").unwrap(), vec!["a"]);
    assert!(store.ids_by(&INSTANCES, "url", "http://a").unwrap().is_empty());
    store.delete(&INSTANCES, "a", Expect::Any).unwrap();
    assert_eq!(store.index_entry_count().unwrap(), 0);
    assert!(matches!(
        store.delete(&INSTANCES, "a", Expect::Any),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn unique_url_and_version_preconditions() {
    let (_dir, store) = open();
    let v = store
        .put(&INSTANCES, "a", instance("a", "s", "http://same", &[]), Expect::Absent)
        .unwrap();
    let err = store
        .put(&INSTANCES, "b", instance("b", "s", "http://same", &[]), Expect::Any)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unique { ref holder, .. } if holder == "a"),
        "{err:?}"
    );
    assert!(matches!(
        store.put(&INSTANCES, "a", instance("a", "s", "http://same", &[]), Expect::Absent),
        Err(StoreError::VersionMismatch { .. })
    ));
    assert!(matches!(
        store.put(
            &INSTANCES,
            "a",
            instance("a", "s", "http://same", &[]),
            Expect::Version(v + 100)
        ),
        Err(StoreError::VersionMismatch { .. })
    ));
    store
        .put(
            &INSTANCES,
            "a",
            instance("a", "t", "http://same", &[]),
            Expect::Version(v),
        )
        .unwrap();
    // Failed writes did not bump the index.
    assert_eq!(store.index().unwrap(), 2);
}

#[test]
fn failed_write_in_a_batch_does_not_undo_the_others() {
    let (_dir, store) = open();
    let store = Arc::new(store);
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                // Every 8th write collides on a URL with its neighbour and must fail alone.
                let url = if i % 8 == 1 {
                    format!("http://h{}", i - 1)
                } else {
                    format!("http://h{i}")
                };
                let id = format!("i{i:03}");
                store.put(&INSTANCES, &id, instance(&id, "s", &url, &[]), Expect::Any)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let failed = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Unique { .. })))
        .count();
    assert_eq!(ok + failed, 64);
    assert!((1..=8).contains(&failed), "{failed}");
    assert_eq!(store.list(&INSTANCES, &[]).unwrap().1.len(), ok);
    assert_eq!(store.index().unwrap(), ok as u64);
}

#[test]
fn invalid_records_and_filters_are_refused() {
    let (_dir, store) = open();
    let err = store
        .put(&INSTANCES, "a", b"{\"id\":\"b\"}".to_vec(), Expect::Any)
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidRecord(_)));
    let err = store.list(&INSTANCES, &filters(&[("weight", "3")])).unwrap_err();
    assert!(matches!(err, StoreError::UnknownFilter { .. }));
    assert_eq!(store.index().unwrap(), 0);
}

#[test]
fn reopen_keeps_data_and_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        store
            .put(&INSTANCES, "a", instance("a", "s", "http://a", &[]), Expect::Any)
            .unwrap();
        store.close();
    }
    let store = Store::open(dir.path(), 64 << 20).unwrap();
    assert_eq!(store.index().unwrap(), 1);
    assert_eq!(store.ids_by(&INSTANCES, "slug", "s").unwrap(), vec!["a"]);
}

#[test]
fn a_full_map_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let big = "x".repeat(8000);
    let mut full = None;
    for i in 0..1000 {
        let id = format!("n{i}");
        let json = serde_json::json!({"id": id, "pad": big}).to_string().into_bytes();
        if let Err(e) = store.put(&NODES, &id, json, Expect::Any) {
            full = Some(e);
            break;
        }
    }
    assert!(matches!(full, Some(StoreError::Full(_))), "{full:?}");
    // The store still answers reads after the failure.
    assert!(store.index().unwrap() > 0);
}

/// What the model remembers of a record: slug, host and tags.
type Modelled = (String, String, Vec<String>);

#[derive(Debug, Clone)]
enum Action {
    Put { id: u8, slug: u8, host: u8, tags: Vec<u8> },
    Delete { id: u8 },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0u8..12, 0u8..3, 0u8..3, proptest::collection::vec(0u8..3, 0..3))
            .prop_map(|(id, slug, host, tags)| Action::Put { id, slug, host, tags }),
        1 => (0u8..12).prop_map(|id| Action::Delete { id }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// After any sequence of puts and deletes, every index lookup returns exactly the ids a
    /// scan of the records finds, and there are no index entries beyond those.
    #[test]
    fn indexes_always_agree_with_records(actions in proptest::collection::vec(action(), 1..40)) {
        let (_dir, store) = open();
        let mut model: BTreeMap<String, Modelled> = BTreeMap::new();
        for a in &actions {
            match a {
                Action::Put { id, slug, host, tags } => {
                    let id = format!("i{id}");
                    let (slug, host) = (format!("s{slug}"), format!("h{host}"));
                    let tags: Vec<String> = tags.iter().map(|t| format!("t{t}")).collect();
                    let json = serde_json::json!({"id": id, "slug": slug, "host": host, "tags": tags, "url": format!("http://{id}")});
                    store.put(&INSTANCES, &id, json.to_string().into_bytes(), Expect::Any).unwrap();
                    model.insert(id, (slug, host, tags));
                }
                Action::Delete { id } => {
                    let id = format!("i{id}");
                    let res = store.delete(&INSTANCES, &id, Expect::Any);
                    prop_assert_eq!(res.is_ok(), model.remove(&id).is_some());
                }
            }
        }
        let mut expected_entries = 0u64;
        for n in 0..3 {
            let (slug, host, tag) = (format!("s{n}"), format!("h{n}"), format!("t{n}"));
            let want = |f: &dyn Fn(&Modelled) -> bool| -> Vec<String> {
                model.iter().filter(|(_, v)| f(v)).map(|(k, _)| k.clone()).collect()
            };
            prop_assert_eq!(store.ids_by(&INSTANCES, "slug", &slug).unwrap(), want(&|v| v.0 == slug));
            prop_assert_eq!(store.ids_by(&INSTANCES, "host", &host).unwrap(), want(&|v| v.1 == host));
            prop_assert_eq!(store.ids_by(&INSTANCES, "tags", &tag).unwrap(), want(&|v| v.2.contains(&tag)));
            let both = store.list(&INSTANCES, &filters(&[("slug", &slug), ("host", &host)])).unwrap().1.len();
            prop_assert_eq!(both, want(&|v| v.0 == slug && v.1 == host).len());
        }
        for (_, _, tags) in model.values() {
            let mut tags = tags.clone();
            tags.sort();
            tags.dedup();
            expected_entries += 3 + tags.len() as u64; // slug, host, url + distinct tags
        }
        prop_assert_eq!(store.index_entry_count().unwrap(), expected_entries);
        prop_assert_eq!(store.list(&INSTANCES, &[]).unwrap().1.len(), model.len());
    }
}

#[test]
fn multi_op_write_is_atomic() {
    let (_dir, store) = open();
    store
        .put(&INSTANCES, "a", instance("a", "s", "http://a", &[]), Expect::Any)
        .unwrap();
    let ops = vec![
        Op::Put {
            coll: &INSTANCES,
            id: "b".into(),
            json: instance("b", "s", "http://b", &[]),
            expect: Expect::Any,
        },
        Op::Delete {
            coll: &INSTANCES,
            id: "missing".into(),
            expect: Expect::Any,
        },
    ];
    assert!(matches!(store.write(ops), Err(StoreError::NotFound { .. })));
    assert!(store.get(&INSTANCES, "b").unwrap().is_none());
}

#[test]
fn changes_since_an_index_returns_only_newer_records_and_the_live_count() {
    let (_dir, store) = open();
    let i1 = store
        .put(&INSTANCES, "a", instance("a", "s", "http://a", &[]), Expect::Any)
        .unwrap();
    store
        .put(&INSTANCES, "b", instance("b", "s", "http://b", &[]), Expect::Any)
        .unwrap();
    let (index, changed, live) = store.changes(&INSTANCES, i1).unwrap();
    assert_eq!((index, live), (2, 2));
    assert_eq!(changed.len(), 1);
    assert!(changed[0].json.starts_with(br#"{"id":"b""#));
    store.delete(&INSTANCES, "a", Expect::Any).unwrap();
    let (_, changed, live) = store.changes(&INSTANCES, index).unwrap();
    assert_eq!((changed.len(), live), (0, 1));
    assert_eq!(store.ids(&INSTANCES).unwrap(), vec!["b"]);
}

#[test]
fn submitted_writes_call_back_once_durable() {
    let (_dir, store) = open();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..20 {
        let id = format!("s{i}");
        let json = instance(&id, "s", &format!("http://{id}"), &[]);
        let tx = tx.clone();
        let op = Op::Put {
            coll: &INSTANCES,
            id: id.clone(),
            json,
            expect: Expect::Absent,
        };
        store
            .submit(vec![op], Box::new(move |result| tx.send(result).unwrap()))
            .unwrap();
    }
    let mut indexes: Vec<u64> = (0..20).map(|_| rx.recv().unwrap().unwrap()).collect();
    indexes.sort();
    assert_eq!(indexes, (1..=20).collect::<Vec<_>>());
    let dup = Op::Put {
        coll: &INSTANCES,
        id: "s0".into(),
        json: instance("s0", "s", "http://s0", &[]),
        expect: Expect::Absent,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    store
        .submit(vec![dup], Box::new(move |result| tx.send(result).unwrap()))
        .unwrap();
    assert!(matches!(rx.recv().unwrap(), Err(StoreError::VersionMismatch { .. })));
}

#[test]
fn guarded_deletes_decided_on_one_collection_index_cannot_both_apply() {
    // Two admins revoking each other: each checked "another admin remains" at the same
    // collection index; whichever commits first moves it, so the other is refused, even
    // when both land in one group-commit batch.
    let (_dir, store) = open();
    for id in ["a", "b"] {
        store.put(&NODES, id, node(id), Expect::Any).unwrap();
    }
    let seen = store.collection_index(&NODES).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for id in ["a", "b"] {
        let tx = tx.clone();
        let ops = vec![
            Op::Guard {
                coll: &NODES,
                collection_index: seen,
            },
            Op::Delete {
                coll: &NODES,
                id: id.to_owned(),
                expect: Expect::Any,
            },
        ];
        store.submit(ops, Box::new(move |r| tx.send(r).unwrap())).unwrap();
    }
    let results: Vec<_> = (0..2).map(|_| rx.recv().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(StoreError::CollectionChanged { .. }))));
    assert_eq!(store.ids(&NODES).unwrap().len(), 1);
    // A guard alone writes nothing and does not move the collection index.
    let now = store.collection_index(&NODES).unwrap();
    store
        .write(vec![Op::Guard {
            coll: &NODES,
            collection_index: now,
        }])
        .unwrap();
    assert_eq!(store.collection_index(&NODES).unwrap(), now);
}

fn node(id: &str) -> Vec<u8> {
    serde_json::json!({"id": id, "url": format!("http://{id}:1")})
        .to_string()
        .into_bytes()
}

#[test]
fn scanned_filters_match_without_an_index() {
    let (_dir, store) = open();
    for (id, scheme, slug) in [("a", "http", "s"), ("b", "https", "s"), ("c", "https", "t")] {
        let json = serde_json::json!({"id": id, "url": format!("{scheme}://{id}"), "scheme": scheme, "slug": slug});
        store
            .put(&INSTANCES, id, json.to_string().into_bytes(), Expect::Any)
            .unwrap();
    }
    let ids = |pairs: &[(&str, &str)]| -> Vec<String> {
        let (_, records) = store.list(&INSTANCES, &filters(pairs)).unwrap();
        records
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.json).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(ids(&[("scheme", "https")]), ["b", "c"]);
    assert_eq!(ids(&[("scheme", "https"), ("slug", "s")]), ["b"]);
    assert_eq!(ids(&[("scheme", "gopher")]), Vec::<String>::new());
    assert!(store.list(&INSTANCES, &filters(&[("colour", "red")])).is_err());
}

#[path = "store_replica_tests.rs"]
mod replica_apply;

#[test]
fn waiting_for_an_index_ends_when_a_write_reaches_it_or_at_the_timeout() {
    use std::time::Duration;
    let (_dir, store) = open();
    let store = Arc::new(store);
    assert!(store.wait_index(0, Duration::ZERO).unwrap());
    assert!(!store.wait_index(1, Duration::from_millis(20)).unwrap());
    let writer = Arc::clone(&store);
    let handle = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        writer
            .put(
                &INSTANCES,
                "a",
                instance("a", "s", "http://127.0.0.1:1", &[]),
                Expect::Any,
            )
            .unwrap()
    });
    assert!(store.wait_index(1, Duration::from_secs(5)).unwrap());
    assert_eq!(handle.join().unwrap(), 1);
}
