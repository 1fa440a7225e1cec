//! Selection policies, routability and outlier ejection, over candidate lists and a store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::core::model::INSTANCES;
use crate::core::select::{Candidate, EjectionConfig, Outcome, PickRequest, Picked, Policy, Selector};
use crate::core::store::{Expect, Store};

fn json(id: &str, status: &str, weight: u32, zone: Option<&str>, tags: &[&str]) -> Vec<u8> {
    serde_json::json!({"id": id, "url": format!("http://{id}:80"), "slug": "s", "status": status,
                       "weight": weight, "zone": zone, "tags": tags})
    .to_string()
    .into_bytes()
}

fn cand(id: &str, status: &str) -> Arc<Candidate> {
    Arc::new(Candidate::from_json(&json(id, status, 100, None, &[])).unwrap())
}

fn weighted(id: &str, weight: u32) -> Arc<Candidate> {
    Arc::new(Candidate::from_json(&json(id, "Healthy", weight, None, &[])).unwrap())
}

fn req(policy: Policy) -> PickRequest<'static> {
    PickRequest {
        slug: "s",
        policy: Some(policy),
        ..PickRequest::default()
    }
}

fn picked_id(p: Picked) -> String {
    match p {
        Picked::Instance(c) => c.id.clone(),
        other => panic!("expected an instance, got {other:?}"),
    }
}

fn counts(sel: &Selector, list: &[Arc<Candidate>], r: &PickRequest<'_>, picks: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..picks {
        *out.entry(picked_id(sel.pick_from(list, r, Instant::now())))
            .or_default() += 1;
    }
    out
}

#[test]
fn only_healthy_are_routed_and_unknown_only_when_none_is_healthy() {
    let sel = Selector::default();
    let list = vec![
        cand("a", "Unknown"),
        cand("b", "Healthy"),
        cand("c", "Unhealthy"),
        cand("d", "Stopping"),
    ];
    let seen = counts(&sel, &list, &req(Policy::RoundRobin), 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec!["b"]);
    let no_healthy = vec![cand("a", "Unknown"), cand("c", "Starting")];
    assert_eq!(
        picked_id(sel.pick_from(&no_healthy, &req(Policy::Random), Instant::now())),
        "a"
    );
    let none = vec![cand("c", "Unhealthy"), cand("d", "Starting"), cand("e", "Stopping")];
    assert!(matches!(
        sel.pick_from(&none, &req(Policy::Random), Instant::now()),
        Picked::NoneRoutable
    ));
    assert!(matches!(
        sel.pick_from(&[], &req(Policy::Random), Instant::now()),
        Picked::UnknownSlug
    ));
}

#[test]
fn zone_is_preferred_while_any_instance_there_is_routable() {
    let sel = Selector::default();
    let mk = |id: &str, status: &str, zone: &str| {
        Arc::new(Candidate::from_json(&json(id, status, 100, Some(zone), &[])).unwrap())
    };
    let list = vec![
        mk("a", "Healthy", "z1"),
        mk("b", "Healthy", "z2"),
        mk("c", "Unhealthy", "z3"),
    ];
    let r = PickRequest {
        slug: "s",
        zone: Some("z2"),
        ..PickRequest::default()
    };
    assert_eq!(counts(&sel, &list, &r, 10).keys().collect::<Vec<_>>(), vec!["b"]);
    let r = PickRequest {
        slug: "s",
        zone: Some("z3"),
        ..PickRequest::default()
    };
    assert_eq!(
        counts(&sel, &list, &r, 10).len(),
        2,
        "no routable instance in z3: any zone"
    );
}

#[test]
fn excluded_instances_are_avoided_while_another_is_routable() {
    let sel = Selector::default();
    let list = vec![cand("a", "Healthy"), cand("b", "Healthy")];
    let exclude = vec!["a".to_owned()];
    let r = PickRequest {
        slug: "s",
        exclude: &exclude,
        ..PickRequest::default()
    };
    assert_eq!(counts(&sel, &list, &r, 10).keys().collect::<Vec<_>>(), vec!["b"]);
    let only_a = vec![cand("a", "Healthy")];
    assert_eq!(
        picked_id(sel.pick_from(&only_a, &r, Instant::now())),
        "a",
        "better the excluded one than none"
    );
}

#[test]
fn tags_must_all_match() {
    let sel = Selector::default();
    let mk = |id: &str, tags: &[&str]| Arc::new(Candidate::from_json(&json(id, "Healthy", 100, None, tags)).unwrap());
    let list = vec![mk("a", &["blue", "prod"]), mk("b", &["green", "prod"])];
    let tags = vec!["prod".to_owned(), "blue".to_owned()];
    let r = PickRequest {
        slug: "s",
        tags: &tags,
        ..PickRequest::default()
    };
    assert_eq!(counts(&sel, &list, &r, 10).keys().collect::<Vec<_>>(), vec!["a"]);
}

#[test]
fn least_request_prefers_fewer_in_flight() {
    let sel = Selector::default();
    let list = vec![cand("a", "Healthy"), cand("b", "Healthy")];
    let tracked = PickRequest {
        slug: "s",
        policy: Some(Policy::LeastRequest),
        track: true,
        ..PickRequest::default()
    };
    // Load `a` with 5 in-flight requests.
    let mut loaded = 0;
    while loaded < 5 {
        if picked_id(sel.pick_from(&[list[0].clone()], &tracked, Instant::now())) == "a" {
            loaded += 1;
        }
    }
    assert_eq!(sel.in_flight("a"), 5);
    let seen = counts(&sel, &list, &req(Policy::LeastRequest), 50);
    assert_eq!(seen.get("b"), Some(&50));
}

#[test]
fn ejection_doubles_expires_and_respects_the_panic_threshold() {
    let config = EjectionConfig {
        consecutive_failures: 5,
        base: Duration::from_secs(30),
        max: Duration::from_secs(100),
    };
    let sel = Selector::new(Policy::RoundRobin, HashMap::new(), config);
    let list = vec![
        cand("a", "Healthy"),
        cand("b", "Healthy"),
        cand("c", "Healthy"),
        cand("d", "Healthy"),
    ];
    let t0 = Instant::now();
    for i in 0..4 {
        assert!(
            !sel.record_outcome(&list, "a", Outcome::Failure, t0),
            "failure {i} is below the threshold"
        );
    }
    assert!(sel.record_outcome(&list, "a", Outcome::Failure, t0));
    assert!(sel.is_ejected("a", t0 + Duration::from_secs(29)));
    assert!(!sel.is_ejected("a", t0 + Duration::from_secs(31)));
    let seen = counts(&sel, &list, &req(Policy::RoundRobin), 30);
    assert!(!seen.contains_key("a"));
    // Second ejection lasts twice as long; the third is capped.
    let t1 = t0 + Duration::from_secs(31);
    for _ in 0..5 {
        sel.record_outcome(&list, "a", Outcome::Failure, t1);
    }
    assert!(sel.is_ejected("a", t1 + Duration::from_secs(59)));
    assert!(!sel.is_ejected("a", t1 + Duration::from_secs(61)));
    // b fails too: two of four ejected is the most allowed; c stays in rotation.
    for _ in 0..5 {
        sel.record_outcome(&list, "b", Outcome::Failure, t1);
    }
    for _ in 0..5 {
        sel.record_outcome(&list, "c", Outcome::Failure, t1);
    }
    assert!(sel.is_ejected("b", t1) && !sel.is_ejected("c", t1));
}

#[test]
fn pick_reads_candidates_from_the_store_and_sees_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 64 << 20).unwrap();
    let sel = Selector::default();
    let r = PickRequest {
        slug: "s",
        ..PickRequest::default()
    };
    assert!(matches!(sel.pick(&store, &r).unwrap(), Picked::UnknownSlug));
    store
        .put(&INSTANCES, "a", json("a", "Healthy", 100, None, &[]), Expect::Any)
        .unwrap();
    match sel.pick(&store, &r).unwrap() {
        Picked::Instance(c) => {
            assert_eq!(c.url, "http://a:80");
            assert!(c.body.starts_with(b"{\"instance\":{\"id\":\"a\""));
        }
        other => panic!("{other:?}"),
    }
    store
        .put(&INSTANCES, "a", json("a", "Unhealthy", 100, None, &[]), Expect::Any)
        .unwrap();
    assert!(matches!(sel.pick(&store, &r).unwrap(), Picked::NoneRoutable));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Round robin over n instances gives each exactly k picks in k*n picks.
    #[test]
    fn round_robin_is_exactly_even(n in 1usize..8, rounds in 1usize..6) {
        let sel = Selector::default();
        let list: Vec<_> = (0..n).map(|i| cand(&format!("i{i}"), "Healthy")).collect();
        let seen = counts(&sel, &list, &req(Policy::RoundRobin), n * rounds);
        prop_assert_eq!(seen.len(), n);
        prop_assert!(seen.values().all(|&c| c == rounds));
    }

    /// Smooth weighted round robin gives each instance exactly its weight per sum(weights) picks.
    #[test]
    fn weighted_matches_weights_exactly(weights in proptest::collection::vec(1u32..20, 1..6)) {
        let sel = Selector::default();
        let list: Vec<_> = weights.iter().enumerate().map(|(i, w)| weighted(&format!("i{i}"), *w)).collect();
        let total: u32 = weights.iter().sum();
        let seen = counts(&sel, &list, &req(Policy::Weighted), total as usize);
        for (i, w) in weights.iter().enumerate() {
            prop_assert_eq!(seen.get(&format!("i{i}")).copied().unwrap_or(0), *w as usize);
        }
    }

    /// Consistent hashing: stable per key; adding an instance moves keys only onto it;
    /// removing one moves only the keys it held.
    #[test]
    fn consistent_hash_is_stable_and_moves_minimal_keys(n in 2usize..8, keys in proptest::collection::vec("[a-z0-9]{1,12}", 1..60)) {
        let sel = Selector::default();
        let list: Vec<_> = (0..n).map(|i| cand(&format!("i{i}"), "Healthy")).collect();
        let pick = |list: &[Arc<Candidate>], key: &str| {
            let r = PickRequest { slug: "s", policy: Some(Policy::ConsistentHash), key: Some(key), ..PickRequest::default() };
            picked_id(sel.pick_from(list, &r, Instant::now()))
        };
        let mut grown = list.clone();
        grown.push(cand("new", "Healthy"));
        let shrunk: Vec<_> = list[1..].to_vec();
        for key in &keys {
            let before = pick(&list, key);
            prop_assert_eq!(&pick(&list, key), &before);
            let after_add = pick(&grown, key);
            prop_assert!(after_add == before || after_add == "new");
            if before != "i0" {
                prop_assert_eq!(pick(&shrunk, key), before);
            }
        }
    }

    /// Whatever the statuses, a pick never returns an excluded instance, and returns Unknown
    /// ones only when no instance is Healthy.
    #[test]
    fn picks_respect_routability(statuses in proptest::collection::vec(0usize..5, 1..8), policy in 0usize..Policy::NAMES.len()) {
        let names = ["Healthy", "Unknown", "Unhealthy", "Starting", "Stopping"];
        let policy = Policy::parse(Policy::NAMES[policy]).unwrap();
        let sel = Selector::default();
        let list: Vec<_> = statuses.iter().enumerate().map(|(i, s)| cand(&format!("i{i}"), names[*s])).collect();
        let any_healthy = statuses.contains(&0);
        let any_unknown = statuses.contains(&1);
        for k in 0..10 {
            let key = format!("k{k}");
            let r = PickRequest { slug: "s", policy: Some(policy), key: Some(&key), ..PickRequest::default() };
            match sel.pick_from(&list, &r, Instant::now()) {
                Picked::Instance(c) => {
                    let status = names[statuses[c.id[1..].parse::<usize>().unwrap()]];
                    prop_assert!(status == "Healthy" || (status == "Unknown" && !any_healthy));
                }
                Picked::NoneRoutable => prop_assert!(!any_healthy && !any_unknown),
                Picked::UnknownSlug | Picked::NoModel | Picked::Saturated => prop_assert!(false),
            }
        }
    }
}

#[test]
fn candidates_survive_writes_to_other_slugs_and_follow_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 64 << 20).unwrap();
    let sel = Selector::default();
    let put = |id: &str, slug: &str, status: &str| {
        let json = serde_json::json!({"id": id, "url": format!("http://{id}"), "slug": slug, "status": status});
        store
            .put(&INSTANCES, id, json.to_string().into_bytes(), Expect::Any)
            .unwrap();
    };
    put("a1", "a", "Healthy");
    let first = sel.candidates(&store, "a").unwrap();
    put("b1", "b", "Healthy");
    assert!(
        Arc::ptr_eq(&first, &sel.candidates(&store, "a").unwrap()),
        "a write to b must not rebuild a"
    );
    put("a1", "a", "Unhealthy");
    let rebuilt = sel.candidates(&store, "a").unwrap();
    assert!(!Arc::ptr_eq(&first, &rebuilt));
    let r = PickRequest {
        slug: "a",
        ..PickRequest::default()
    };
    assert!(matches!(sel.pick(&store, &r).unwrap(), Picked::NoneRoutable));
}
