//! Checks for rendered `:path`, `:authority` and `:method` values. Envoy takes a Wasm filter's pseudo-headers as they
//! are (its codec validated only what the client sent), re-selects the route with them and forwards them: a value
//! with a space or a tab becomes part of the upstream's request line, and dot segments would reach past the
//! route's prefix. So a rendered `:path` must be an origin-form request target, and it is normalised as Envoy's
//! `normalize_path` does for client requests; `:authority` must be `host[:port]`, `:method` an HTTP token.

/// The value to send for a rendered `:path`, or why it cannot be sent.
///
/// The path part (before `?`) gets RFC 3986 normalisation: percent-encoded unreserved characters are decoded
/// (`%2E` is a dot, `%41` an `A`), then dot segments are removed (`/a/./b/../c` is `/a/c`; `..` never climbs above
/// the root). Other escapes (`%2F` included) and the query stay as they are.
pub fn normalize_path(value: &str) -> Result<String, String> {
    origin_form(value).map_err(|why| refused(":path", value, why))
}

/// One message for every refusal (one formatting site keeps the .wasm small).
fn refused(name: &str, value: &str, why: &str) -> String {
    format!("rendered {name} {value:?} {why}")
}

fn origin_form(value: &str) -> Result<String, &'static str> {
    if !value.starts_with('/') {
        return Err("does not start with '/'");
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("contains whitespace, a control or a non-ASCII character");
    }
    if value.contains('#') {
        return Err("contains a fragment ('#')");
    }
    let (path, query) = match value.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (value, None),
    };
    check_escapes(value)?;
    let mut out = remove_dot_segments(&decode_unreserved(path));
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// Every `%` starts two hex digits.
fn check_escapes(value: &str) -> Result<(), &'static str> {
    let bytes = value.as_bytes();
    for (index, _) in value.match_indices('%') {
        let hex = bytes.get(index + 1..index + 3);
        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err("has an invalid percent-encoding");
        }
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Decodes `%XX` where XX is an unreserved character (ALPHA, DIGIT, `-`, `.`, `_`, `~`); the input's escapes are
/// valid (checked before).
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut index = 0;
    while let Some(&b) = bytes.get(index) {
        if b == b'%' {
            let decoded = match (
                bytes.get(index + 1).copied().and_then(hex_value),
                bytes.get(index + 2).copied().and_then(hex_value),
            ) {
                (Some(high), Some(low)) => Some(high * 16 + low),
                _ => None,
            };
            if let Some(c) = decoded.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                out.push(char::from(c));
                index += 3;
                continue;
            }
        }
        out.push(char::from(b));
        index += 1;
    }
    out
}

/// RFC 3986 section 5.2.4 over an absolute path, segment by segment.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." | ".." => {
                if segment == ".." {
                    segments.pop();
                }
                // `/a/..` and `/a/.` end with a slash.
                if last {
                    segments.push("");
                }
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// A rendered `:authority` must be `host[:port]`: a reg-name (unreserved, sub-delims, escapes), an IPv4 address,
/// or a bracketed IP literal; the port decimal, at most 65535. No user info (`@`).
pub fn check_authority(value: &str) -> Result<(), String> {
    host_port(value).map_err(|why| refused(":authority", value, why))
}

fn host_port(value: &str) -> Result<(), &'static str> {
    let invalid = Err;
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else { return invalid("is not host[:port]: unclosed '['") };
        if literal.is_empty() || !literal.chars().all(|c| c.is_ascii_hexdigit() || ":.".contains(c)) {
            return invalid("is not host[:port]: bad IP literal");
        }
        match after.strip_prefix(':') {
            Some(port) => (None, Some(port)),
            None if after.is_empty() => (None, None),
            None => return invalid("is not host[:port]: text after the IP literal"),
        }
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(value), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return invalid("is not host[:port]: empty host");
        }
        let reg_name = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=%".contains(c);
        if !host.chars().all(reg_name) {
            return invalid("is not host[:port]: invalid character in the host");
        }
        if host.contains('%') && check_escapes(host).is_err() {
            return invalid("is not host[:port]: invalid percent-encoding");
        }
    }
    if let Some(port) = port {
        let valid = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !valid || port.parse::<u32>().map_or(true, |p| p > 65535) {
            return invalid("is not host[:port]: bad port");
        }
    }
    Ok(())
}

/// A rendered `:method` must be an HTTP token (RFC 9110 `tchar`s).
pub fn check_method(value: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if value.is_empty() || !value.bytes().all(tchar) {
        return Err(refused(":method", value, "is not an HTTP token"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised() {
        for (input, expected) in [
            ("/", "/"),
            ("/api/a", "/api/a"),
            ("/api/../../admin", "/admin"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/a/%2e%2E/b", "/b"),
            ("/%41%7e%2F", "/A~%2F"),
            ("/a//b", "/a//b"),
            ("/a/..?x=/../y", "/?x=/../y"),
            ("/a/...", "/a/..."),
            ("/a?", "/a?"),
        ] {
            assert_eq!(normalize_path(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn bad_paths_are_refused() {
        for (input, reason) in [
            ("/api/a HTTP/1.0 x", "whitespace"),
            ("/a\tb", "whitespace"),
            ("/a\u{7f}", "control"),
            ("/é", "non-ASCII"),
            ("api", "does not start with '/'"),
            ("", "does not start with '/'"),
            ("/a#b", "fragment"),
            ("/a%2", "percent-encoding"),
            ("/a%zz", "percent-encoding"),
            ("/a?b=%", "percent-encoding"),
        ] {
            let err = normalize_path(input).unwrap_err();
            assert!(err.contains(reason), "{input:?}: {err}");
        }
    }

    #[test]
    fn authorities() {
        for good in ["example.com", "example.com:8080", "127.0.0.1:1", "[::1]", "[::1]:443", "a-b_c~%41"] {
            assert_eq!(check_authority(good), Ok(()), "{good}");
        }
        for bad in ["", ":80", "a b", "a:b", "a:99999", "u@host", "[::1", "[]:1", "[::1]x", "h/p", "a:", "a%g1"] {
            assert!(check_authority(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn methods() {
        for good in ["GET", "PATCH", "M-SEARCH", "x~"] {
            assert_eq!(check_method(good), Ok(()));
        }
        for bad in ["", "GET /", "G\tT", "(GET)", "GÉT"] {
            assert!(check_method(bad).is_err(), "{bad:?}");
        }
    }
}
