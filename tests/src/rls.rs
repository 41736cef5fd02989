//! A real Envoy rate-limit service (RLS v3 gRPC, tonic) backed by the `limitador` engine with in-memory storage,
//! for the global-mode tests. The RLS request's descriptors are bound as `descriptors` for limitador's CEL
//! conditions and variables, as limitador-server does, and the service's namespace is the request's domain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use limitador::limit::{Context, Expression, Limit, Predicate};
use tonic::{Request, Response, Status};

use crate::server::BackgroundServer;

pub mod proto {
    tonic::include_proto!("envoy.service.ratelimit.v3");
}

use proto::rate_limit_response::{Code, DescriptorStatus};
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
    mode: Mode,
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
        let mut over = Vec::new();
        for descriptor in &request.descriptors {
            let entries: HashMap<String, String> =
                descriptor.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
            let mut ctx = Context::default();
            ctx.list_binding("descriptors".to_string(), vec![entries]);
            let result = self
                .limiter
                .check_rate_limited_and_update(
                    &request.domain.as_str().into(),
                    &ctx,
                    u64::from(request.hits_addend.max(1)),
                )
                .map_err(|e| Status::internal(e.to_string()))?;
            over.push(result.limited);
        }
        let code = |limited: bool| if limited { Code::OverLimit } else { Code::Ok } as i32;
        Ok(Response::new(RateLimitResponse {
            overall_code: code(over.iter().any(|o| *o)),
            statuses: over.iter().map(|o| DescriptorStatus { code: code(*o), limit_remaining: 0 }).collect(),
            response_headers_to_add: vec![HeaderValue { key: "x-rls-response".into(), value: "checked".into() }],
            request_headers_to_add: vec![HeaderValue { key: "x-rls-request".into(), value: "checked".into() }],
        }))
    }
}

/// The running service; stops when dropped.
pub struct RateLimitServer {
    server: BackgroundServer,
    calls: Arc<AtomicU64>,
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
        let service = Service { limiter, calls: calls.clone(), mode };
        let server = BackgroundServer::start(port, |listener| async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let router = tonic::transport::Server::builder().add_service(RateLimitServiceServer::new(service));
            let _ = router.serve_with_incoming(incoming).await;
        })?;
        Ok(RateLimitServer { server, calls })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// How many ShouldRateLimit calls arrived.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}
