//! Micro-benchmark of SigV4 signing on the host: the header changes for one S3 GET (canonical request, string to
//! sign, signature), as the filter computes them per request.

// Benchmark code, not filter code: a failed setup should stop the run loudly.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use aws::config::parse;
use aws::signing::sign;
use aws::sigv4::Credentials;
use criterion::{criterion_group, criterion_main, Criterion};

fn signing(c: &mut Criterion) {
    let config = parse(
        br#"{"region": "us-east-1", "service": "s3", "host": "bucket.s3.us-east-1.amazonaws.com",
                            "credentials": {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "secret"},
                            "payload": "unsigned"}"#,
    )
    .unwrap();
    let credentials = Credentials {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: None,
    };
    let headers: Vec<(String, String)> = [
        (":method", "GET"),
        (":path", "/bucket/object.txt?versionId=3"),
        (":authority", "bench"),
        (":scheme", "http"),
        ("x-custom", "a b  c"),
        ("user-agent", "bench"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "5b5c7a1e-52b7-4a3c-8f2e-2d4f1f3c9a10"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    c.bench_function("sigv4 sign S3 GET (unsigned payload)", |b| {
        b.iter(|| sign(black_box(&headers), &config, &credentials, 1_440_938_160, "UNSIGNED-PAYLOAD").unwrap())
    });
}

criterion_group!(benches, signing);
criterion_main!(benches);
