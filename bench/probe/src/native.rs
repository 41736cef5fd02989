//! The probe as a dynamic module: the `panic` kind (the panic test of the dynamic-module build).

use std::rc::Rc;

use shared::host::{Filter, Stream};
use shared::{Flow, Host, Side};

pub struct Probe;

impl Filter for Probe {
    const NAME: &'static str = "probe";
    type Stream = ProbeStream;

    fn configure(_host: &dyn Host, config: &[u8], _previous: Option<&Self>) -> Result<Self, String> {
        match config.split(|b| *b == b':').next() {
            Some(b"panic") => Ok(Probe),
            _ => Err("the dynamic-module probe has the `panic` kind only".to_string()),
        }
    }

    fn stream(_filter: Rc<Self>) -> ProbeStream {
        ProbeStream
    }
}

pub struct ProbeStream;

impl Stream for ProbeStream {
    fn on_request_headers(&mut self, host: &dyn Host, _end_of_stream: bool) -> Flow {
        if let Ok(Some(_)) = host.header(Side::Request, "x-probe-panic") {
            #[allow(clippy::panic)] // the point of this kind: a panic on demand
            {
                panic!("probe: panic requested by the client");
            }
        }
        // The mark is what the test looks for; a refused header shows as a missing mark.
        let _ = host.set_header(Side::Request, "x-probe-vm", b"alive");
        Flow::Continue
    }
}

shared::dynamic_module!(Probe);
