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

#[derive(Clone, PartialEq, Message)]
pub struct DescriptorStatus {
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
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

/// Encodes a request for `domain` with one descriptor per list of (entry key, value).
pub fn encode_request(domain: &str, descriptors: &[Vec<(String, String)>]) -> Vec<u8> {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: descriptors
            .iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries.iter().map(|(key, value)| Entry { key: key.clone(), value: value.clone() }).collect(),
            })
            .collect(),
        hits_addend: 1,
    }
    .encode_to_vec()
}

/// What the service said, in the terms the filter acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Per descriptor (same order as sent): over the limit?
    pub over_limit: Vec<bool>,
    pub overall_over_limit: bool,
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
        let bytes =
            encode_request("edge", &[vec![("x-api-key".into(), "k1".into()), ("client_ip".into(), "1.2.3.4".into())]]);
        let decoded = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.domain, "edge");
        assert_eq!(decoded.hits_addend, 1);
        assert_eq!(decoded.descriptors[0].entries[1], Entry { key: "client_ip".into(), value: "1.2.3.4".into() });
    }

    #[test]
    fn responses_decode() {
        let response = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![
                DescriptorStatus { code: Code::Ok as i32, limit_remaining: 3 },
                DescriptorStatus { code: Code::OverLimit as i32, limit_remaining: 0 },
            ],
            response_headers_to_add: vec![HeaderValue { key: "x-rl".into(), value: "1".into() }],
            request_headers_to_add: vec![HeaderValue { key: "x-up".into(), value: "2".into() }],
        };
        let answer = decode_response(&response.encode_to_vec()).unwrap();
        assert!(answer.overall_over_limit);
        assert_eq!(answer.over_limit, vec![false, true]);
        assert_eq!(answer.response_headers, vec![("x-rl".to_string(), "1".to_string())]);
        assert_eq!(answer.request_headers, vec![("x-up".to_string(), "2".to_string())]);
    }

    #[test]
    fn unknown_codes_and_garbage_are_errors() {
        assert!(decode_response(&RateLimitResponse::default().encode_to_vec()).unwrap_err().contains("code 0"));
        assert!(decode_response(b"\xff\xff\xff").unwrap_err().contains("undecodable"));
    }
}
