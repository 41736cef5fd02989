//! Micro-benchmark of subject building on the host: a template with header, path and method placeholders,
//! rendered and validated as the filter does per request.

// Benchmark code, not filter code: a failed setup should stop the run loudly.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nats::subject::SubjectTemplate;

fn subject(c: &mut Criterion) {
    let template = SubjectTemplate::parse("orders.{header:x-tenant}.{path:2}.{method}").unwrap();
    let request: Vec<(String, String)> = [(":path", "/events/created?x=1"), (":method", "POST"), ("x-tenant", "acme")]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    c.bench_function("subject build and check", |b| b.iter(|| template.render(black_box(&request)).unwrap()));
}

criterion_group!(benches, subject);
criterion_main!(benches);
