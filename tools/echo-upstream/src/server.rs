//! In-process servers for the tests: a tokio runtime of their own, serving on a loopback port, stopped on drop.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A server running on its own runtime (so that it works from sync and async tests alike).
pub struct BackgroundServer {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BackgroundServer {
    /// Binds 127.0.0.1:`port` (0: any free port) and runs `serve` with the listener.
    pub fn start<F, Fut>(port: u16, serve: F) -> std::io::Result<Self>
    where
        F: FnOnce(TcpListener) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        // Bound with std so that no block_on runs inside a caller's runtime.
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        runtime.spawn(serve(listener));
        Ok(BackgroundServer { addr, runtime: Some(runtime) })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Blocks until Ctrl-C (for programs that only serve).
    pub fn run_until_ctrl_c(&self) {
        if let Some(runtime) = &self.runtime {
            let _ = runtime.block_on(tokio::signal::ctrl_c());
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
