//! What the pure logic may ask of a request, and small helpers over paths, queries and headers.
//!
//! Logic takes a `&impl RequestHeaders` instead of calling the host, so that only the headers a rule needs are
//! read (each lookup is a hostcall in the filter) and so that unit tests can use a plain list of pairs.

use std::borrow::Cow;

/// Read access to a request's headers (pseudo-headers `:path`, `:method`, `:authority` included) and to the
/// few request properties rules refer to.
pub trait RequestHeaders {
    /// The header's value; several values of one header are joined with `,` as Envoy's matchers see them.
    /// Names are lower-case.
    fn header(&self, name: &str) -> Option<Cow<'_, str>>;

    /// Envoy's `xds.route_name` of the route the request matched, if any.
    fn route_name(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// Headers held in memory, e.g. what a test builds or what the filter read at once with `get_http_request_headers`.
impl RequestHeaders for [(String, String)] {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let mut values = self.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let first = values.next()?;
        match values.next() {
            None => Some(Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = format!("{first},{second}");
                for more in values {
                    joined.push(',');
                    joined.push_str(more);
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}

impl RequestHeaders for Vec<(String, String)> {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.as_slice().header(name)
    }
}

/// Splits `:path` into the path and the query string (without `?`); a fragment, which clients should not send,
/// is dropped.
pub fn split_path(path_and_query: &str) -> (&str, &str) {
    let without_fragment = path_and_query.split('#').next().unwrap_or_default();
    match without_fragment.split_once('?') {
        Some((path, query)) => (path, query),
        None => (without_fragment, ""),
    }
}

/// The first value of a query parameter, percent- and `+`-decoded (as Envoy's query-parameter matcher does).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value)
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is, and `+` stays `+` (paths, not
/// forms).
pub fn percent_decode(text: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(text).collect()
}

/// `true` for gRPC requests (`content-type: application/grpc`, `application/grpc+proto`, ...), which get a gRPC
/// status instead of an HTTP error body.
pub fn is_grpc(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let ct = ct.trim_start();
        ct.len() >= 16
            && ct.get(..16).is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
            && ct.get(16..).is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
    })
}

/// `true` for a message whose body is a tunnel (WebSocket and other upgrades, CONNECT, a `101` answer): its body has
/// no end to wait for, so a body filter treats it as a message without a body instead of holding it.
pub fn is_tunnel<R: RequestHeaders + ?Sized>(message: &R) -> bool {
    message.header("upgrade").is_some()
        || message.header(":method").is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"))
        || message.header(":status").is_some_and(|s| s.trim() == "101")
}

/// Removes the port from an address (`10.0.0.1:5342` -> `10.0.0.1`, `[::1]:80` -> `::1`).
pub fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        // One colon: host:port. More than one without brackets: a bare IPv6 address.
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    }
}

/// `true` when a header value may be forwarded: no CR, LF or NUL (which would split or truncate headers).
pub fn is_safe_header_value(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_joins_repeats() {
        let h = headers(&[(":path", "/a"), ("x-a", "1"), ("X-A", "2"), ("x-a", "3")]);
        assert_eq!(h.header(":path").as_deref(), Some("/a"));
        assert_eq!(h.header("x-a").as_deref(), Some("1,2,3"));
        assert_eq!(h.header("x-b"), None);
        assert_eq!(h.route_name(), None);
    }

    #[test]
    fn split_path_separates_query_and_drops_fragment() {
        assert_eq!(split_path("/a/b?x=1&y=2"), ("/a/b", "x=1&y=2"));
        assert_eq!(split_path("/a"), ("/a", ""));
        assert_eq!(split_path("/a#frag?x"), ("/a", ""));
        assert_eq!(split_path("/a?x=1#f"), ("/a", "x=1"));
        assert_eq!(split_path(""), ("", ""));
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param("a=1&b=x%20y+z", "b").as_deref(), Some("x y z"));
        assert_eq!(query_param("a=1&a=2", "a").as_deref(), Some("1"));
        assert_eq!(query_param("flag&a=1", "flag").as_deref(), Some(""));
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(query_param("", "b"), None);
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), b"a/b%zz%4");
        assert_eq!(percent_decode("%41%6a+"), b"Aj+");
        assert_eq!(percent_decode("%FF"), [0xff]);
        assert_eq!(percent_decode(""), b"");
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(Some("application/grpc")));
        assert!(is_grpc(Some("application/grpc+proto")));
        assert!(is_grpc(Some("Application/GRPC;charset=utf-8")));
        assert!(!is_grpc(Some("application/grpc-web")));
        assert!(!is_grpc(Some("application/json")));
        assert!(!is_grpc(Some("application/grp")));
        assert!(!is_grpc(None));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("10.0.0.1:5342"), "10.0.0.1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("example.com:443"), "example.com");
    }

    #[test]
    fn unsafe_header_values() {
        assert!(is_safe_header_value("a b\tc"));
        assert!(!is_safe_header_value("a\r\nx: y"));
        assert!(!is_safe_header_value("a\nb"));
        assert!(!is_safe_header_value("a\0b"));
    }

    #[test]
    fn tunnels() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
        };
        assert!(is_tunnel(&pairs(&[(":method", "GET"), ("upgrade", "websocket")])));
        assert!(is_tunnel(&pairs(&[(":method", "connect")])));
        assert!(is_tunnel(&pairs(&[(":status", "101")])));
        assert!(!is_tunnel(&pairs(&[(":method", "POST"), (":status", "200")])));
    }
}
