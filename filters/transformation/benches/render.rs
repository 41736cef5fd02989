//! Micro-benchmark of template rendering on the host: a header template with an extraction and a function, and
//! a body template over a 1 KiB JSON context, as the filter renders them per request; and parsing that body,
//! whole or only as far as the body template reads it.

// Benchmark code, not filter code: a failed setup should stop the run loudly.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use serde_json::Value;
use transformation::template::{RenderData, Templates};

fn render(c: &mut Criterion) {
    let mut templates = Templates::new(false);
    templates.add("header", "hello {{ upper(extraction(\"name\")) }}", false).unwrap();
    templates
        .add(
            "body",
            "{\"customer\": \"{{ customer.name }}\", \"lines\": {{ length(items) }}, \"first\": \"{{ items.0.sku }}\"}",
            false,
        )
        .unwrap();
    let items: Vec<_> = (0..12).map(|i| json!({"sku": format!("sku-{i:04}"), "qty": i % 3 + 1})).collect();
    let mut data = RenderData {
        context: json!({"customer": {"name": "Ada Lovelace", "tier": "gold"}, "items": items}),
        ..RenderData::default()
    };
    data.extractions.insert("name".into(), "ada".into());
    c.bench_function("template render: header with extraction", |b| {
        b.iter(|| templates.render(black_box("header"), &data).unwrap())
    });
    c.bench_function("template render: body over 1 KiB JSON", |b| {
        b.iter(|| templates.render(black_box("body"), &data).unwrap())
    });

    // The benchmark's 1 KiB order (envoy-test/bench), read by the body template above.
    let items: Vec<_> =
        (0..23).map(|i| json!({"sku": format!("sku-{i:04}"), "qty": i % 3 + 1, "price": 9.5 + f64::from(i)})).collect();
    let order = json!({"customer": {"name": "Ada Lovelace", "email": "ada@example.com", "tier": "gold"},
                       "items": items, "note": "leave at the door"})
    .to_string();
    let reads = templates.json_reads();
    c.bench_function("JSON body: 1 KiB order parsed whole", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(order.as_bytes())).unwrap())
    });
    c.bench_function("JSON body: 1 KiB order parsed as far as the template reads", |b| {
        b.iter(|| reads.parse(black_box(order.as_bytes())).unwrap())
    });
}

criterion_group!(benches, render);
criterion_main!(benches);
