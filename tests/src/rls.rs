//! A real Envoy rate-limit service (RLS v3 gRPC, tonic) backed by the `limitador` engine with in-memory storage,
//! for the global-mode tests. The RLS request's descriptors are bound as `descriptors` for limitador's CEL
//! conditions and variables, as limitador-server does, and the service's namespace is the request's domain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use limitador::limit::{Context, Expression, Limit, Predicate};
use tonic::{Request, Response, Status};

use crate::server::BackgroundServer;

pub mod proto {
    tonic::include_proto!("envoy.service.ratelimit.v3");
}

use proto::rate_limit_response::rate_limit::Unit;
use proto::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use proto::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use proto::{HeaderValue, RateLimitRequest, RateLimitResponse};

/// How the service behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Answer,
    /// Answers only after this long (to exercise the filter's timeout).
    Slow(Duration),
}

struct Service {
    limiter: limitador::RateLimiter,
    calls: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<RateLimitRequest>>>,
    mode: Mode,
}

/// The unit of a limitador window, as envoyproxy/ratelimit reports it (windows without a unit: UNKNOWN).
fn unit(window: Duration) -> Unit {
    match window.as_secs() {
        1 => Unit::Second,
        60 => Unit::Minute,
        3600 => Unit::Hour,
        86400 => Unit::Day,
        _ => Unit::Unknown,
    }
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Mode::Slow(delay) = self.mode {
            tokio::time::sleep(delay).await;
        }
        let request = request.into_inner();
        self.received.lock().expect("received").push(request.clone());
        let mut statuses = Vec::new();
        for descriptor in &request.descriptors {
            let entries: HashMap<String, String> =
                descriptor.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
            let mut ctx = Context::default();
            ctx.list_binding("descriptors".to_string(), vec![entries]);
            // The descriptor's own hits_addend wins over the request's (as envoyproxy/ratelimit does); 0 in the
            // request means 1.
            let hits = descriptor.hits_addend.map_or(u64::from(request.hits_addend.max(1)), |h| h.value);
            let result = self
                .limiter
                .check_rate_limited_and_update(&request.domain.as_str().into(), &ctx, hits)
                .map_err(|e| Status::internal(e.to_string()))?;
            // The status of the most restrictive counter, as envoyproxy/ratelimit fills it.
            let counter = result.counters.iter().min_by_key(|c| c.remaining().unwrap_or(c.max_value()));
            let code = if result.limited { Code::OverLimit } else { Code::Ok } as i32;
            statuses.push(match counter {
                Some(counter) => DescriptorStatus {
                    code,
                    current_limit: Some(RateLimit {
                        name: String::new(),
                        requests_per_unit: u32::try_from(counter.max_value()).unwrap_or(u32::MAX),
                        unit: unit(counter.window()) as i32,
                    }),
                    limit_remaining: u32::try_from(counter.remaining().unwrap_or(0)).unwrap_or(u32::MAX),
                    duration_until_reset: counter
                        .expires_in()
                        .map(|d| proto::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }),
                },
                None => DescriptorStatus { code, ..Default::default() },
            });
        }
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        Ok(Response::new(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add: vec![HeaderValue { key: "x-rls-response".into(), value: "checked".into() }],
            request_headers_to_add: vec![HeaderValue { key: "x-rls-request".into(), value: "checked".into() }],
        }))
    }
}

/// The running service; stops when dropped.
pub struct RateLimitServer {
    server: BackgroundServer,
    calls: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<RateLimitRequest>>>,
}

/// A limit of `max` hits per `seconds` in `domain`, per distinct value of the descriptor entry `entry`
/// (`descriptors[0][entry]`), for descriptors that have that entry.
pub fn limit_per_entry(domain: &str, max: u64, seconds: u64, entry: &str) -> Limit {
    let variable = format!("descriptors[0]['{entry}']");
    let condition = Predicate::parse(format!("'{entry}' in descriptors[0]")).expect("condition");
    Limit::new(domain, max, seconds, [condition], [Expression::parse(variable).expect("variable")])
}

impl RateLimitServer {
    pub fn start(limits: Vec<Limit>, mode: Mode) -> Self {
        Self::start_on(0, limits, mode).expect("rate-limit service")
    }

    /// Starts on `port` (0: any free port), e.g. to bring a stopped service back on the same port.
    pub fn start_on(port: u16, limits: Vec<Limit>, mode: Mode) -> std::io::Result<Self> {
        let limiter = limitador::RateLimiter::new(10_000);
        for limit in limits {
            limiter.add_limit(limit);
        }
        let calls = Arc::new(AtomicU64::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let service = Service { limiter, calls: calls.clone(), received: received.clone(), mode };
        let server = BackgroundServer::start(port, |listener| async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let router = tonic::transport::Server::builder().add_service(RateLimitServiceServer::new(service));
            let _ = router.serve_with_incoming(incoming).await;
        })?;
        Ok(RateLimitServer { server, calls, received })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// How many ShouldRateLimit calls arrived.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Every request the service received, in order.
    pub fn received(&self) -> Vec<RateLimitRequest> {
        self.received.lock().expect("received").clone()
    }
}
