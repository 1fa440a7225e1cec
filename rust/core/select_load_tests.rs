//! The model servers' picks: `least_load`, `prefix`, and models, over candidate lists.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::core::load::Load;
use crate::core::select::{Candidate, PickRequest, Picked, Policy, Selector};
use crate::core::shared::now_ms;

fn server(id: &str, models: &[&str]) -> Arc<Candidate> {
    let json = serde_json::json!({"id": id, "url": format!("http://127.0.0.1:{}", 9000 + id.len()),
                                  "slug": "llm", "status": "Healthy", "models": models});
    Arc::new(Candidate::from_json(json.to_string().as_bytes()).unwrap())
}

fn fleet(n: usize) -> Vec<Arc<Candidate>> {
    (0..n).map(|i| server(&format!("m{i}"), &["llama"])).collect()
}

fn report(sel: &Selector, id: &str, queued: u32, running: u32, kv_cache: f64) {
    sel.load().report(
        id,
        Load {
            queued,
            running,
            kv_cache,
        },
        100,
        now_ms(),
    );
}

fn pick(sel: &Selector, list: &[Arc<Candidate>], policy: Policy, prompt: Option<&[u8]>) -> Picked {
    let req = PickRequest {
        slug: "llm",
        policy: Some(policy),
        prefix: prompt,
        ..PickRequest::default()
    };
    sel.pick_from(list, &req, Instant::now())
}

fn id(p: Picked) -> String {
    match p {
        Picked::Instance(c) => c.id.clone(),
        other => panic!("expected an instance, got {other:?}"),
    }
}

#[test]
fn least_load_sends_to_the_idle_and_429s_when_all_are_full() {
    let sel = Selector::default();
    let list = fleet(4);
    report(&sel, "m0", 20, 16, 0.9);
    report(&sel, "m1", 0, 1, 0.1);
    report(&sel, "m2", 30, 16, 0.95);
    report(&sel, "m3", 0, 2, 0.2);
    let chosen: Vec<String> = (0..600)
        .map(|_| id(pick(&sel, &list, Policy::LeastLoad, None)))
        .collect();
    let idle = chosen.iter().filter(|c| *c == "m1" || *c == "m3").count();
    // Two of four drawn, the better kept: the busy two only when drawn together (p = 1/6).
    assert!(idle > 450, "{idle} of 600");
    assert!(chosen.iter().collect::<HashSet<_>>().len() > 2, "not all on the best");
    for (i, m) in ["m0", "m1", "m2", "m3"].iter().enumerate() {
        report(
            &sel,
            m,
            if i % 2 == 0 { 500 } else { 0 },
            0,
            if i % 2 == 0 { 0.0 } else { 1.0 },
        );
    }
    assert!(matches!(pick(&sel, &list, Policy::LeastLoad, None), Picked::Saturated));
}

#[test]
fn a_shared_prefix_goes_where_it_went_before() {
    let sel = Selector::default();
    let list = fleet(8);
    let system = "You are a careful assistant who answers in French. ".repeat(40);
    let first = id(pick(
        &sel,
        &list,
        Policy::Prefix,
        Some(format!("{system}Q: one").as_bytes()),
    ));
    for question in ["two", "three", "four"] {
        let prompt = format!("{system}Q: {question}");
        assert_eq!(id(pick(&sel, &list, Policy::Prefix, Some(prompt.as_bytes()))), first);
    }
    // Another selector (another process) places the same new prompt on the same instance.
    let other = Selector::default();
    assert_eq!(
        id(pick(
            &other,
            &list,
            Policy::Prefix,
            Some(format!("{system}Q: x").as_bytes())
        )),
        first
    );
}

#[test]
fn a_busy_holder_of_the_prefix_is_passed_over() {
    let sel = Selector::default();
    let list = fleet(4);
    let system = "Shared system prompt, long enough for several blocks. ".repeat(10);
    let holder = id(pick(&sel, &list, Policy::Prefix, Some(system.as_bytes())));
    for m in ["m0", "m1", "m2", "m3"] {
        report(&sel, m, 0, if m == holder { 40 } else { 1 }, 0.1);
    }
    let next = id(pick(&sel, &list, Policy::Prefix, Some(system.as_bytes())));
    assert_ne!(next, holder, "over the bound (1.25x the mean): least_load decides");
}

#[test]
fn a_model_is_served_only_by_the_instances_that_list_it() {
    let sel = Selector::default();
    let list = vec![
        server("a", &["llama"]),
        server("bb", &["qwen", "qwen-lora-sql"]),
        server("ccc", &[]),
    ];
    for _ in 0..20 {
        let req = PickRequest {
            slug: "llm",
            model: Some("qwen-lora-sql"),
            ..PickRequest::default()
        };
        assert_eq!(id(sel.pick_from(&list, &req, Instant::now())), "bb");
    }
    let req = PickRequest {
        slug: "llm",
        model: Some("mistral"),
        ..PickRequest::default()
    };
    assert!(matches!(sel.pick_from(&list, &req, Instant::now()), Picked::NoModel));
}
