//! The Envoy rate-limit service protocol (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`),
//! the messages declared with prost derives: the fields the filter uses, with the proto's field numbers.

use prost::Message;

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// `google.protobuf.UInt64Value`: overrides the request's `hits_addend` for this descriptor.
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<UInt64Value>,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct UInt64Value {
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct UInt32Value {
    #[prost(uint32, tag = "1")]
    pub value: u32,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    #[prost(message, repeated, tag = "4")]
    pub request_headers_to_add: Vec<HeaderValue>,
}

/// A descriptor's status. Its `quota` (field 5) is not declared: the filter asks on every request and does
/// not cache quota assignments.
#[derive(Clone, PartialEq, Message)]
pub struct DescriptorStatus {
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<CurrentLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<ProtoDuration>,
}

/// `RateLimitResponse.RateLimit`: the limit the service applied to a descriptor.
#[derive(Clone, PartialEq, Message)]
pub struct CurrentLimit {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `RateLimitResponse.RateLimit.Unit`: 0 unknown, 1 second, 2 minute, 3 hour, 4 day, 5 month, 6 year, 7 week.
    #[prost(int32, tag = "2")]
    pub unit: i32,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(message, optional, tag = "4")]
    pub unit_multiplier: Option<UInt32Value>,
}

impl CurrentLimit {
    /// The window in seconds, as Envoy computes it for `x-ratelimit-limit` (0: unknown unit).
    fn window_secs(&self) -> u64 {
        let unit: u64 = match self.unit {
            1 => 1,
            2 => 60,
            3 => 3_600,
            4 => 86_400,
            5 => 2_592_000,
            6 => 31_536_000,
            7 => 604_800,
            _ => 0,
        };
        let multiplier = self.unit_multiplier.map_or(1, |m| u64::from(m.value.max(1)));
        unit.saturating_mul(multiplier)
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    Unknown = 0,
    Ok = 1,
    OverLimit = 2,
}

/// One descriptor to send: its entries (key, value) and, if configured, its hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    pub hits_addend: Option<u64>,
}

/// Encodes a request for `domain`. Each descriptor with a `hits_addend` carries it (Envoy's per-descriptor field);
/// the request-level field, which services that predate it read (Limitador), is the descriptors' common value,
/// else 1.
pub fn encode_request(domain: &str, descriptors: &[Descriptor]) -> Vec<u8> {
    let mut addends = descriptors.iter().map(|d| d.hits_addend.unwrap_or(1));
    let first = addends.next().unwrap_or(1);
    let common = if addends.all(|a| a == first) { first } else { 1 };
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: descriptors
            .iter()
            .map(|d| RateLimitDescriptor {
                entries: d
                    .entries
                    .iter()
                    .map(|(key, value)| Entry { key: key.clone(), value: value.clone() })
                    .collect(),
                hits_addend: d.hits_addend.map(|value| UInt64Value { value }),
            })
            .collect(),
        // proto3 cannot tell 0 from unset, which services read as 1; an addend of 0 reaches only the
        // per-descriptor field.
        hits_addend: u32::try_from(common).unwrap_or(u32::MAX).max(1),
    }
    .encode_to_vec()
}

/// The `x-ratelimit-*` figures of a global decision, as Envoy's `enable_x_ratelimit_headers: DRAFT_VERSION_03`
/// builds them: from the status with the fewest requests remaining among those that carry a `current_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalFigures {
    /// `<limit>` then `, <requests>;w=<window>[;name="<name>"]` for every status with a known window.
    pub limit: String,
    pub remaining: u32,
    /// `duration_until_reset` in seconds, rounded up (Envoy truncates; a client told 0 would retry too early).
    pub reset_secs: u64,
}

impl GlobalFigures {
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("x-ratelimit-limit", self.limit.clone()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.reset_secs.to_string()),
        ]
    }
}

fn figures(statuses: &[DescriptorStatus]) -> Option<GlobalFigures> {
    let mut policy = String::new();
    let mut most: Option<&DescriptorStatus> = None;
    for status in statuses {
        let Some(limit) = &status.current_limit else { continue };
        if most.is_none_or(|m| status.limit_remaining < m.limit_remaining) {
            most = Some(status);
        }
        let window = limit.window_secs();
        if window > 0 {
            policy.push_str(&format!(", {};w={window}", limit.requests_per_unit));
            if !limit.name.is_empty() {
                policy.push_str(&format!(";name=\"{}\"", limit.name.replace('"', "'")));
            }
        }
    }
    let most = most?;
    let requests = most.current_limit.as_ref().map_or(0, |l| l.requests_per_unit);
    let reset = most.duration_until_reset.map_or(0, |d| {
        let secs = u64::try_from(d.seconds).unwrap_or(0);
        if d.nanos > 0 {
            secs.saturating_add(1)
        } else {
            secs
        }
    });
    Some(GlobalFigures { limit: format!("{requests}{policy}"), remaining: most.limit_remaining, reset_secs: reset })
}

/// What the service said, in the terms the filter acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Per descriptor (same order as sent): over the limit?
    pub over_limit: Vec<bool>,
    pub overall_over_limit: bool,
    /// `x-ratelimit-*` figures from the statuses, if any status carries its `current_limit`.
    pub figures: Option<GlobalFigures>,
    pub response_headers: Vec<(String, String)>,
    pub request_headers: Vec<(String, String)>,
}

/// Decodes the service's answer; an undecodable one is an error (handled like an unreachable service).
pub fn decode_response(bytes: &[u8]) -> Result<Answer, String> {
    let response = RateLimitResponse::decode(bytes).map_err(|e| format!("undecodable rate-limit response: {e}"))?;
    let pairs = |headers: Vec<HeaderValue>| headers.into_iter().map(|h| (h.key, h.value)).collect();
    match Code::try_from(response.overall_code) {
        Ok(Code::Ok) | Ok(Code::OverLimit) => Ok(Answer {
            over_limit: response.statuses.iter().map(|s| s.code == Code::OverLimit as i32).collect(),
            overall_over_limit: response.overall_code == Code::OverLimit as i32,
            figures: figures(&response.statuses),
            response_headers: pairs(response.response_headers_to_add),
            request_headers: pairs(response.request_headers_to_add),
        }),
        _ => Err(format!("rate-limit service answered code {}", response.overall_code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let entries = vec![("x-api-key".into(), "k1".into()), ("remote_address".into(), "1.2.3.4".into())];
        let bytes = encode_request("edge", &[Descriptor { entries: entries.clone(), hits_addend: None }]);
        let decoded = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.domain, "edge");
        assert_eq!(decoded.hits_addend, 1);
        assert_eq!(decoded.descriptors[0].hits_addend, None);
        assert_eq!(decoded.descriptors[0].entries[1], Entry { key: "remote_address".into(), value: "1.2.3.4".into() });
        // One addend: on the descriptor and the request; differing ones: per descriptor, the request says 1.
        let with = |hits: &[Option<u64>]| {
            let d: Vec<_> = hits.iter().map(|h| Descriptor { entries: entries.clone(), hits_addend: *h }).collect();
            RateLimitRequest::decode(encode_request("edge", &d).as_slice()).unwrap()
        };
        let one = with(&[Some(5)]);
        assert_eq!((one.hits_addend, one.descriptors[0].hits_addend), (5, Some(UInt64Value { value: 5 })));
        let two = with(&[Some(5), None]);
        assert_eq!(two.hits_addend, 1);
        assert_eq!(two.descriptors[0].hits_addend, Some(UInt64Value { value: 5 }));
        assert_eq!(two.descriptors[1].hits_addend, None);
        let same = with(&[Some(3), Some(3)]);
        assert_eq!(same.hits_addend, 3);
        let zero = with(&[Some(0)]);
        assert_eq!((zero.hits_addend, zero.descriptors[0].hits_addend), (1, Some(UInt64Value { value: 0 })));
    }

    #[test]
    fn responses_decode() {
        let response = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                DescriptorStatus { code: Code::Ok as i32, limit_remaining: 3, ..Default::default() },
                DescriptorStatus { code: Code::OverLimit as i32, limit_remaining: 0, ..Default::default() },
            ],
            response_headers_to_add: vec![HeaderValue { key: "x-rl".into(), value: "1".into() }],
            request_headers_to_add: vec![HeaderValue { key: "x-up".into(), value: "2".into() }],
        };
        let answer = decode_response(&response.encode_to_vec()).unwrap();
        assert!(answer.overall_over_limit);
        assert_eq!(answer.over_limit, vec![false, true]);
        assert_eq!(answer.response_headers, vec![("x-rl".to_string(), "1".to_string())]);
        assert_eq!(answer.request_headers, vec![("x-up".to_string(), "2".to_string())]);
        assert_eq!(answer.figures, None, "no status carries its limit");
    }

    fn status(remaining: u32, limit: Option<(u32, i32, &str)>, reset: Option<(i64, i32)>) -> DescriptorStatus {
        DescriptorStatus {
            code: Code::Ok as i32,
            current_limit: limit.map(|(requests_per_unit, unit, name)| CurrentLimit {
                requests_per_unit,
                unit,
                name: name.to_string(),
                unit_multiplier: None,
            }),
            limit_remaining: remaining,
            duration_until_reset: reset.map(|(seconds, nanos)| ProtoDuration { seconds, nanos }),
        }
    }

    #[test]
    fn figures_come_from_the_most_restrictive_status_as_envoy_draft_03() {
        let statuses = vec![
            status(7, Some((10, 1, "per-ip")), Some((1, 0))),
            status(2, Some((100, 2, "")), Some((41, 500_000_000))),
            status(0, None, None),
            status(9, Some((1000, 3, "")), Some((3000, 0))),
        ];
        let answer = decode_response(
            &RateLimitResponse { overall_code: Code::Ok as i32, statuses, ..Default::default() }.encode_to_vec(),
        )
        .unwrap();
        let figures = answer.figures.unwrap();
        assert_eq!(figures.limit, r#"100, 10;w=1;name="per-ip", 100;w=60, 1000;w=3600"#);
        assert_eq!((figures.remaining, figures.reset_secs), (2, 42));
        assert_eq!(
            figures.to_pairs(),
            [
                ("x-ratelimit-limit", figures.limit.clone()),
                ("x-ratelimit-remaining", "2".to_string()),
                ("x-ratelimit-reset", "42".to_string())
            ]
        );
        // An unknown unit has no window in the policy; a multiplier scales the window.
        let mut weekly = status(4, Some((5, 7, "")), None);
        if let Some(limit) = weekly.current_limit.as_mut() {
            limit.unit_multiplier = Some(UInt32Value { value: 2 });
        }
        let mixed = super::figures(&[status(3, Some((5, 0, "")), None), weekly]).unwrap();
        assert_eq!((mixed.limit.as_str(), mixed.remaining, mixed.reset_secs), ("5, 5;w=1209600", 3, 0));
    }

    #[test]
    fn unknown_codes_and_garbage_are_errors() {
        assert!(decode_response(&RateLimitResponse::default().encode_to_vec()).unwrap_err().contains("code 0"));
        assert!(decode_response(b"\xff\xff\xff").unwrap_err().contains("undecodable"));
    }
}
