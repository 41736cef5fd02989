//! The no-op filter as a dynamic module: the filters' host layer with a stream that overrides no callback.

use std::rc::Rc;

use shared::host::{Filter, Stream};
use shared::Host;

pub struct Noop;

impl Filter for Noop {
    const NAME: &'static str = "noop";
    type Stream = NoopStream;

    fn configure(_host: &dyn Host, _config: &[u8], _previous: Option<&Self>) -> Result<Self, String> {
        Ok(Noop)
    }

    fn stream(_filter: Rc<Self>) -> NoopStream {
        NoopStream
    }
}

pub struct NoopStream;

impl Stream for NoopStream {}

shared::dynamic_module!(Noop);
