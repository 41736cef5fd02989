//! [`FakeHost`]: Envoy as the filters see it, in memory, for unit tests of stream logic. Shared data has Envoy's
//! CAS semantics ([`MemoryStore`]); any call can be made to fail with [`FakeHost::fail`] to test error paths.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use super::{lossy, GrpcCall, HostError, HostResult, HttpCall, Side};
use crate::reply::LocalReply;
use crate::store::{MemoryStore, SharedStore};

/// An HTTP callout the fake host was asked to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl RecordedCall {
    /// A header of the call as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// A gRPC callout the fake host was asked to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedGrpcCall {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout: Duration,
}

/// An in-memory host. Fields are public so that tests can set up and inspect everything.
#[derive(Debug, Default)]
pub struct FakeHost {
    pub request_headers: RefCell<Vec<(String, Vec<u8>)>>,
    pub response_headers: RefCell<Vec<(String, Vec<u8>)>>,
    pub request_body: RefCell<Vec<u8>>,
    pub response_body: RefCell<Vec<u8>>,
    /// Properties by dotted path (`source.address`).
    pub properties: RefCell<HashMap<String, Vec<u8>>>,
    pub store: MemoryStore,
    pub replies: RefCell<Vec<LocalReply>>,
    pub resumed: RefCell<Vec<Side>>,
    pub http_calls: RefCell<Vec<RecordedCall>>,
    pub grpc_calls: RefCell<Vec<RecordedGrpcCall>>,
    pub tick_period: Cell<Option<Duration>>,
    pub monotonic: Cell<u64>,
    pub unix: Cell<u64>,
    /// Host calls (by method name, e.g. `"set_header"`) that fail with the given error.
    pub failures: RefCell<HashMap<&'static str, HostError>>,
    /// The host calls made so far, by method name: what a filter costs in a real host is mostly its calls.
    pub calls: RefCell<Vec<&'static str>>,
    /// Answer [`super::Host::cheap_single_header_reads`] as a dynamic module does (`true`) or as Wasm does.
    pub cheap_single_header_reads: Cell<bool>,
    /// Answer [`super::Host::can_add_body_to_bodiless`] as a dynamic module does (`true`) or as Wasm does.
    pub can_add_body_to_bodiless: Cell<bool>,
    next_token: Cell<u32>,
}

fn text_pairs(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
}

impl FakeHost {
    /// A host holding a request with these headers (pseudo-headers included).
    pub fn with_request(headers: &[(&str, &str)]) -> Self {
        let host = FakeHost::default();
        *host.request_headers.borrow_mut() = text_pairs(headers);
        host.unix.set(1_700_000_000_000_000_000);
        host
    }

    /// The same host with this request body.
    pub fn body(self, body: &[u8]) -> Self {
        *self.request_body.borrow_mut() = body.to_vec();
        self
    }

    /// Sets the upstream's response headers.
    pub fn set_response(&self, headers: &[(&str, &str)], body: &[u8]) {
        *self.response_headers.borrow_mut() = text_pairs(headers);
        *self.response_body.borrow_mut() = body.to_vec();
    }

    pub fn set_property(&self, path: &str, value: &str) {
        self.properties.borrow_mut().insert(path.to_string(), value.as_bytes().to_vec());
    }

    /// Makes every later call of `method` fail with `error`.
    pub fn fail(&self, method: &'static str, error: HostError) {
        self.failures.borrow_mut().insert(method, error);
    }

    fn check(&self, method: &'static str) -> HostResult<()> {
        self.calls.borrow_mut().push(method);
        match self.failures.borrow().get(method) {
            Some(err) => Err(*err),
            None => Ok(()),
        }
    }

    /// A header of a message as text (first value).
    pub fn header_of(&self, side: Side, name: &str) -> Option<String> {
        self.map(side).borrow().iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The only local reply sent, if exactly one was.
    pub fn reply(&self) -> Option<LocalReply> {
        match self.replies.borrow().as_slice() {
            [reply] => Some(reply.clone()),
            _ => None,
        }
    }

    /// The last HTTP callout made.
    pub fn last_call(&self) -> Option<RecordedCall> {
        self.http_calls.borrow().last().cloned()
    }

    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.monotonic.set(self.monotonic.get().saturating_add(nanos));
        self.unix.set(self.unix.get().saturating_add(nanos));
    }

    fn map(&self, side: Side) -> &RefCell<Vec<(String, Vec<u8>)>> {
        match side {
            Side::Request => &self.request_headers,
            Side::Response => &self.response_headers,
        }
    }

    fn buffer(&self, side: Side) -> &RefCell<Vec<u8>> {
        match side {
            Side::Request => &self.request_body,
            Side::Response => &self.response_body,
        }
    }

    fn token(&self) -> u32 {
        let token = self.next_token.get().wrapping_add(1);
        self.next_token.set(token);
        token
    }
}

impl super::Host for FakeHost {
    fn header(&self, side: Side, name: &str) -> HostResult<Option<Vec<u8>>> {
        self.check("header")?;
        // Envoy answers a single lookup with the first value of a repeated header.
        Ok(self.map(side).borrow().iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))
    }

    fn cheap_single_header_reads(&self) -> bool {
        self.cheap_single_header_reads.get()
    }

    fn can_add_body_to_bodiless(&self) -> bool {
        self.can_add_body_to_bodiless.get()
    }

    fn header_joined_text(&self, side: Side, name: &str) -> HostResult<Option<String>> {
        self.check("header_joined_text")?;
        let map = self.map(side).borrow();
        let values: Vec<String> = map.iter().filter(|(n, _)| n == name).map(|(_, v)| lossy(v.clone())).collect();
        Ok((!values.is_empty()).then(|| values.join(",")))
    }

    fn headers(&self, side: Side) -> HostResult<Vec<(String, Vec<u8>)>> {
        self.check("headers")?;
        Ok(self.map(side).borrow().clone())
    }

    fn set_header(&self, side: Side, name: &str, value: &[u8]) -> HostResult<()> {
        self.check("set_header")?;
        let mut map = self.map(side).borrow_mut();
        match map.iter().position(|(n, _)| n == name) {
            Some(first) => {
                let mut index = 0;
                map.retain(|(n, _)| {
                    index += 1;
                    n != name || index - 1 == first
                });
                if let Some(entry) = map.get_mut(first) {
                    entry.1 = value.to_vec();
                }
            }
            None => map.push((name.to_string(), value.to_vec())),
        }
        Ok(())
    }

    fn add_header(&self, side: Side, name: &str, value: &[u8]) -> HostResult<()> {
        self.check("add_header")?;
        self.map(side).borrow_mut().push((name.to_string(), value.to_vec()));
        Ok(())
    }

    fn remove_header(&self, side: Side, name: &str) -> HostResult<()> {
        self.check("remove_header")?;
        self.map(side).borrow_mut().retain(|(n, _)| n != name);
        Ok(())
    }

    fn body(&self, side: Side, size: usize) -> HostResult<Vec<u8>> {
        self.check("body")?;
        let body = self.buffer(side).borrow();
        Ok(body.get(..size.min(body.len())).unwrap_or_default().to_vec())
    }

    fn set_body(&self, side: Side, size: usize, body: &[u8]) -> HostResult<()> {
        self.check("set_body")?;
        // Envoy drains `size` bytes from the start and puts `body` in their place: a wrong size leaves a tail.
        let mut buffer = self.buffer(side).borrow_mut();
        let tail = buffer.get(size.min(buffer.len())..).unwrap_or_default().to_vec();
        *buffer = [body, &tail].concat();
        Ok(())
    }

    fn send_reply(&self, reply: &LocalReply) -> HostResult<()> {
        self.check("send_reply")?;
        self.replies.borrow_mut().push(reply.clone());
        Ok(())
    }

    fn resume(&self, side: Side) -> HostResult<()> {
        self.check("resume")?;
        self.resumed.borrow_mut().push(side);
        Ok(())
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        self.check("property")?;
        Ok(self.properties.borrow().get(&path.join(".")).cloned())
    }

    fn http_call(&self, call: &HttpCall<'_>) -> HostResult<u32> {
        self.check("http_call")?;
        let token = self.token();
        self.http_calls.borrow_mut().push(RecordedCall {
            token,
            cluster: call.cluster.to_string(),
            headers: call.headers.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect(),
            body: call.body.to_vec(),
            timeout: call.timeout,
        });
        Ok(token)
    }

    fn grpc_call(&self, call: &GrpcCall<'_>) -> HostResult<u32> {
        self.check("grpc_call")?;
        let token = self.token();
        self.grpc_calls.borrow_mut().push(RecordedGrpcCall {
            token,
            cluster: call.cluster.to_string(),
            service: call.service.to_string(),
            method: call.method.to_string(),
            message: call.message.to_vec(),
            timeout: call.timeout,
        });
        Ok(token)
    }

    fn set_tick_period(&self, period: Duration) -> HostResult<()> {
        self.check("set_tick_period")?;
        self.tick_period.set(Some(period));
        Ok(())
    }

    fn monotonic_nanos(&self) -> u64 {
        self.monotonic.get()
    }

    fn unix_nanos(&self) -> u64 {
        self.unix.get()
    }

    fn clear_route_cache(&self) -> HostResult<()> {
        self.check("clear_route_cache")
    }
}

impl SharedStore for FakeHost {
    fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        self.check("shared_get")?;
        self.store.get(key)
    }

    fn compare_and_set(&self, key: &str, value: Option<&[u8]>, cas: u32) -> HostResult<()> {
        self.check("shared_set")?;
        self.store.compare_and_set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;

    #[test]
    fn headers_behave_like_envoys_map() {
        let host = FakeHost::with_request(&[(":path", "/a"), ("x", "1"), ("x", "2")]);
        assert_eq!(host.header(Side::Request, "x").unwrap(), Some(b"1".to_vec()));
        host.set_header(Side::Request, "x", b"3").unwrap();
        assert_eq!(
            host.headers_text(Side::Request).unwrap(),
            vec![(":path".to_string(), "/a".to_string()), ("x".to_string(), "3".to_string())]
        );
        host.remove_header(Side::Request, "x").unwrap();
        assert_eq!(host.header(Side::Request, "x").unwrap(), None);
        host.fail("header", HostError::BadArgument);
        assert_eq!(host.header(Side::Request, ":path"), Err(HostError::BadArgument));
    }

    #[test]
    fn a_request_view_reads_by_name_only_where_single_reads_are_cheap() {
        use crate::host::RequestView;
        use crate::RequestHeaders;
        let headers = [(":path", "/a"), ("x-key", "1"), ("x-key", "2")];
        for cheap in [false, true] {
            let host = FakeHost::with_request(&headers);
            host.cheap_single_header_reads.set(cheap);
            let view = RequestView::by_name(&host);
            // Repeated headers read as their values joined, whichever way they were read.
            assert_eq!(view.header("X-Key").as_deref(), Some("1,2"));
            assert_eq!(view.header("x-key").as_deref(), Some("1,2"));
            assert_eq!(view.header("x-absent"), None);
            assert_eq!(view.header("x-absent"), None);
            let expected: &[&str] = if cheap { &["header_joined_text", "header_joined_text"] } else { &["headers"] };
            assert_eq!(*host.calls.borrow(), expected, "cheap single reads: {cheap}");
            // Once the whole map is read, lookups use it.
            assert_eq!(view.pairs().len(), 3);
            assert_eq!(view.header(":path").as_deref(), Some("/a"));
            assert_eq!(host.calls.borrow().len(), expected.len() + usize::from(cheap));
        }
    }

    #[test]
    fn a_body_replacement_of_the_wrong_size_leaves_a_tail_as_in_envoy() {
        let host = FakeHost::default().body(b"abcdef");
        host.set_body(Side::Request, 6, b"xy").unwrap();
        assert_eq!(*host.request_body.borrow(), b"xy");
        host.set_body(Side::Request, 1, b"z").unwrap();
        assert_eq!(*host.request_body.borrow(), b"zy");
    }

    #[test]
    fn callouts_get_distinct_tokens() {
        let host = FakeHost::default();
        let call = HttpCall { cluster: "c", headers: &[(":path", b"/")], body: b"x", timeout: Duration::from_secs(1) };
        let a = host.http_call(&call).unwrap();
        let b = host.http_call(&call).unwrap();
        assert_ne!(a, b);
        assert_eq!(host.last_call().unwrap().header(":path").as_deref(), Some("/"));
    }
}
