//! Bounded body buffering: decide, chunk by chunk, whether to keep buffering, use the body, or refuse it.

/// What to do after Envoy reports a body chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProgress {
    /// Keep buffering: the body is not complete yet and still within the limit.
    Buffering,
    /// The whole body is buffered and within the limit.
    Complete,
    /// The body is larger than the limit: reply 413.
    TooLarge,
}

/// A limit on how many body bytes a filter buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    pub max_bytes: usize,
}

impl BodyLimit {
    pub fn new(max_bytes: usize) -> Self {
        BodyLimit { max_bytes }
    }

    /// `buffered` is the size Envoy reports for the buffered body so far.
    pub fn progress(&self, buffered: usize, end_of_stream: bool) -> BodyProgress {
        if buffered > self.max_bytes {
            BodyProgress::TooLarge
        } else if end_of_stream {
            BodyProgress::Complete
        } else {
            BodyProgress::Buffering
        }
    }

    /// `true` when a declared `content-length` already exceeds the limit, so the request can be refused before
    /// any byte is buffered. A malformed value is left to Envoy's codec, which rejects it.
    pub fn declared_too_large(&self, content_length: Option<&str>) -> bool {
        content_length.and_then(|v| v.trim().parse::<u64>().ok()).is_some_and(|n| n > self.max_bytes as u64)
    }

    /// The message for a 413 reply.
    pub fn too_large_message(&self) -> String {
        format!("body larger than the limit of {} bytes", self.max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress() {
        let limit = BodyLimit::new(10);
        assert_eq!(limit.progress(5, false), BodyProgress::Buffering);
        assert_eq!(limit.progress(10, true), BodyProgress::Complete);
        assert_eq!(limit.progress(0, true), BodyProgress::Complete);
        assert_eq!(limit.progress(11, false), BodyProgress::TooLarge);
        assert_eq!(limit.progress(11, true), BodyProgress::TooLarge);
    }

    #[test]
    fn declared_length() {
        let limit = BodyLimit::new(10);
        assert!(limit.declared_too_large(Some("11")));
        assert!(!limit.declared_too_large(Some("10")));
        assert!(!limit.declared_too_large(Some("x")));
        assert!(!limit.declared_too_large(None));
        assert_eq!(limit.too_large_message(), "body larger than the limit of 10 bytes");
    }
}
