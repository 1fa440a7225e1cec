//! A replica's batches applied to the store (cluster mode), through the store's API.

use super::*;
use crate::core::replica::{Mode, ReplicaChange};

fn change(id: &str, json: Option<&str>, revision: u64) -> ReplicaChange {
    ReplicaChange {
        coll: &INSTANCES,
        id: id.to_owned(),
        json: json.map(|j| j.as_bytes().to_vec()),
        revision,
    }
}

fn instance(id: &str, slug: &str, url: &str) -> String {
    format!(r#"{{"id":"{id}","slug":"{slug}","url":"{url}"}}"#)
}

#[test]
fn changes_land_at_their_revisions_with_indexes_and_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 24).unwrap();
    let a = instance("a", "s1", "http://127.0.0.1:1");
    let b = instance("b", "s2", "http://127.0.0.1:2");
    store
        .apply_replica(
            &[change("a", Some(&a), 10), change("b", Some(&b), 12)],
            15,
            Mode::Events,
        )
        .unwrap();
    assert_eq!(store.index().unwrap(), 15);
    assert_eq!(store.get(&INSTANCES, "a").unwrap().unwrap().version, 10);
    assert_eq!(store.partition_index(&INSTANCES, "s1").unwrap(), 10);
    assert_eq!(store.partition_index(&INSTANCES, "s2").unwrap(), 12);
    assert_eq!(store.collection_index(&INSTANCES).unwrap(), 12);
    assert_eq!(store.ids_by(&INSTANCES, "slug", "s1").unwrap(), vec!["a"]);

    // A move of `a` to another slug bumps both slugs; a delete removes its entries.
    let moved = instance("a", "s2", "http://127.0.0.1:1");
    store
        .apply_replica(
            &[change("a", Some(&moved), 16), change("b", None, 17)],
            17,
            Mode::Events,
        )
        .unwrap();
    assert_eq!(store.partition_index(&INSTANCES, "s1").unwrap(), 16);
    assert_eq!(store.partition_index(&INSTANCES, "s2").unwrap(), 17);
    assert!(store.ids_by(&INSTANCES, "slug", "s1").unwrap().is_empty());
    assert_eq!(store.ids_by(&INSTANCES, "slug", "s2").unwrap(), vec!["a"]);
    assert!(store.get(&INSTANCES, "b").unwrap().is_none());
    assert_eq!(store.versions(&INSTANCES).unwrap(), vec![("a".to_owned(), 16)]);
    assert_eq!(store.index_entry_count().unwrap(), 2);
}

#[test]
fn replayed_and_duplicated_events_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 24).unwrap();
    let v1 = instance("a", "s1", "http://127.0.0.1:1");
    let v2 = instance("a", "s1", "http://127.0.0.1:2");
    store
        .apply_replica(&[change("a", Some(&v1), 5), change("a", Some(&v2), 7)], 7, Mode::Events)
        .unwrap();
    // The same events again, and an old delete: the record stays at revision 7.
    store
        .apply_replica(
            &[
                change("a", Some(&v1), 5),
                change("a", None, 6),
                change("a", Some(&v2), 7),
            ],
            7,
            Mode::Events,
        )
        .unwrap();
    let got = store.get(&INSTANCES, "a").unwrap().unwrap();
    assert_eq!((got.version, got.json), (7, v2.into_bytes()));
    assert_eq!(
        store.ids_by(&INSTANCES, "url", "http://127.0.0.1:2").unwrap(),
        vec!["a"]
    );
    assert!(store
        .ids_by(&INSTANCES, "url", "http://127.0.0.1:1")
        .unwrap()
        .is_empty());
    // The applied revision never goes back.
    store.apply_replica(&[], 3, Mode::Events).unwrap();
    assert_eq!(store.index().unwrap(), 7);
    // etcd's own state (a relist, a repair) is applied whatever the local version.
    store.apply_replica(&[change("a", None, 7)], 7, Mode::Exact).unwrap();
    assert!(store.get(&INSTANCES, "a").unwrap().is_none());
    assert_eq!(store.index_entry_count().unwrap(), 0);
}

#[test]
fn state_values_move_no_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 24).unwrap();
    assert_eq!(store.state("x").unwrap(), None);
    store.set_state("x", b"1").unwrap();
    assert_eq!(store.state("x").unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.index().unwrap(), 0);
}
