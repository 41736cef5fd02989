//! Building a rule's key from a request.

use std::borrow::Cow;
use std::hash::{DefaultHasher, Hasher};

use shared::request::{query_param, split_path};
use shared::RequestHeaders;

use crate::config::{KeyPart, KeySpec, NamedPart};

/// What the key parts need from a request beyond its headers.
pub trait RequestFacts: RequestHeaders {
    /// The downstream peer's address without the port.
    fn client_ip(&self) -> Option<Cow<'_, str>>;
}

/// The value of each key part, in order, or the first part the request lacks.
pub fn key_values<'p, R: RequestFacts + ?Sized>(parts: &'p [KeySpec], request: &R) -> Result<Vec<String>, &'p KeySpec> {
    parts.iter().map(|spec| part_value(&spec.part, request).ok_or(spec)).collect()
}

fn part_value<R: RequestFacts + ?Sized>(part: &KeyPart, request: &R) -> Option<String> {
    let value = match part {
        KeyPart::Header(name) => request.header(name)?.into_owned(),
        KeyPart::Query(name) => {
            let path = request.header(":path")?;
            query_param(split_path(&path).1, name)?.into_owned()
        }
        KeyPart::Literal(value) => value.clone(),
        KeyPart::Named(NamedPart::ClientIp) => request.client_ip()?.into_owned(),
        KeyPart::Named(NamedPart::Path) => split_path(&request.header(":path")?).0.to_string(),
        KeyPart::Named(NamedPart::Method) => request.header(":method")?.into_owned(),
        KeyPart::Named(NamedPart::Route) => request.route_name()?.into_owned(),
    };
    Some(value)
}

/// The 64-bit identity of a bucket: the limit's identity, then each value length-prefixed (so that no two
/// different value lists give the same input), hashed with SipHash under fixed keys: the same in every worker VM
/// (they run the same binary) and in the VMs a reload creates, so buckets survive reloads. Hashed in place: no key
/// string is built per request.
pub fn bucket_hash(limit_id: &str, values: &[String]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(limit_id.as_bytes());
    for value in values {
        hasher.write_usize(value.len());
        hasher.write(value.as_bytes());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req(Vec<(String, String)>, Option<&'static str>);

    impl RequestHeaders for Req {
        fn header(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.header(name)
        }
        fn route_name(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed("r1"))
        }
    }

    impl RequestFacts for Req {
        fn client_ip(&self) -> Option<Cow<'_, str>> {
            self.1.map(Cow::Borrowed)
        }
    }

    fn req(pairs: &[(&str, &str)], ip: Option<&'static str>) -> Req {
        Req(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(), ip)
    }

    #[test]
    fn values_of_every_part() {
        let parts: Vec<KeySpec> = [
            KeyPart::Header("x-api-key".into()),
            KeyPart::Query("tenant".into()),
            KeyPart::Literal("v1".into()),
            KeyPart::Named(NamedPart::ClientIp),
            KeyPart::Named(NamedPart::Path),
            KeyPart::Named(NamedPart::Method),
            KeyPart::Named(NamedPart::Route),
        ]
        .into_iter()
        .map(KeySpec::from)
        .collect();
        let r = req(&[(":path", "/a/b?tenant=t%201"), (":method", "GET"), ("x-api-key", "k1")], Some("10.0.0.1"));
        assert_eq!(key_values(&parts, &r).unwrap(), ["k1", "t 1", "v1", "10.0.0.1", "/a/b", "GET", "r1"]);
    }

    #[test]
    fn the_first_missing_part_is_reported() {
        let parts: Vec<KeySpec> =
            [KeyPart::Named(NamedPart::ClientIp), KeyPart::Header("x-api-key".into())].map(KeySpec::from).into();
        let r = req(&[(":path", "/")], Some("1.2.3.4"));
        assert_eq!(key_values(&parts, &r), Err(&parts[1]));
        assert_eq!(key_values(&parts[..1], &req(&[], None)), Err(&parts[0]));
        assert_eq!(
            key_values(&[KeyPart::Query("q".into()).into()], &req(&[(":path", "/x")], None)).unwrap_err().name(),
            "q"
        );
    }

    #[test]
    fn bucket_identities_are_unambiguous() {
        assert_eq!(bucket_hash("p:r#0", &["a|1:b".into()]), bucket_hash("p:r#0", &["a|1:b".into()]));
        assert_ne!(bucket_hash("p", &["a|1:b".into()]), bucket_hash("p", &["a".into(), "b".into()]));
        assert_ne!(bucket_hash("p", &["ab".into()]), bucket_hash("p", &["a".into(), "b".into()]));
        assert_ne!(bucket_hash("p:r#0", &["a".into()]), bucket_hash("p:r#1", &["a".into()]));
        assert_ne!(bucket_hash("p", &["x".repeat(10_000)]), bucket_hash("p", &["y".repeat(10_000)]));
    }
}
