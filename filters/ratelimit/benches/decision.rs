//! Micro-benchmark of the per-request work, on the host: one GCRA decision, and a whole rule evaluation
//! (match, key, bucket key, decision) over an in-memory store with Envoy's CAS semantics.

// Benchmark code, not filter code: a failed setup should stop the run loudly.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ratelimit::config::{parse, Limit};
use ratelimit::engine::Engine;
use ratelimit::gcra::{Limiter, SlotTable};
use ratelimit::key::RequestFacts;
use shared::store::{reserve_create_cas, MemoryStore};
use shared::{DurationStr, RequestHeaders};

struct Request(Vec<(String, String)>);

impl RequestHeaders for Request {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0.header(name)
    }
}

impl RequestFacts for Request {
    fn client_ip(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("10.0.0.1"))
    }
}

fn decision(c: &mut Criterion) {
    let store = MemoryStore::default();
    reserve_create_cas(&store, "b:").unwrap();
    let limit = Limit { requests: 1_000_000_000, per: DurationStr(Duration::from_secs(1)), burst: None };
    let limiter = Limiter::new(&limit, &SlotTable::new("b:", 100_000)).unwrap();
    let key = "b:rule#0|5:key-1".to_string();
    let mut now = 1_000_000_000u64;
    c.bench_function("gcra decision (allowed)", |b| {
        b.iter(|| {
            now += 1000;
            black_box(limiter.check(&store, black_box(&key), now))
        })
    });

    let config = parse(
        br#"{"rules": [{"name": "per-key", "match": {"prefix": "/api"}, "key": [{"header": "x-api-key"}],
                               "limits": [{"requests": 1000000000, "per": "1s"}]}]}"#,
    )
    .unwrap();
    let engine = Engine::new(&config, "b:").unwrap();
    let request = Request(vec![
        (":path".into(), "/api/items".into()),
        (":method".into(), "GET".into()),
        ("x-api-key".into(), "key-1".into()),
    ]);
    c.bench_function("rule evaluation (match, key, decision)", |b| {
        b.iter(|| {
            now += 1000;
            black_box(engine.evaluate(&store, &config, black_box(&request), now))
        })
    });
}

criterion_group!(benches, decision);
criterion_main!(benches);
