//! A real `nats-server` (Debian's package) for the tests: on a free loopback port, with its own configuration file
//! and JetStream store in a temporary directory; killed when dropped. It can be stopped, paused (SIGSTOP) and
//! started again on the same port, to test what the gateway does while NATS is away.

use std::fmt::Write as _;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    jetstream: bool,
    user: Option<(String, String)>,
    token: Option<String>,
    max_payload: Option<u64>,
}

impl NatsOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// JetStream on, storing in the server's temporary directory.
    pub fn jetstream(mut self) -> Self {
        self.jetstream = true;
        self
    }

    /// Clients must authenticate with this user and password.
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.user = Some((user.to_string(), password.to_string()));
        self
    }

    /// Clients must authenticate with this token.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// The server's `max_payload` (default 1 MiB).
    pub fn max_payload(mut self, bytes: u64) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Starts the server on a free port and waits until it accepts clients.
    pub fn start(self) -> NatsServer {
        let dir = tempfile::Builder::new().prefix("nats-test-").tempdir().expect("temporary directory");
        let port = free_port();
        let mut conf = format!("listen: \"127.0.0.1:{port}\"\n");
        if let Some(max) = self.max_payload {
            let _ = writeln!(conf, "max_payload: {max}");
        }
        if let Some((user, password)) = &self.user {
            let _ = writeln!(conf, "authorization {{ user: {user:?}, password: {password:?} }}");
        }
        if let Some(token) = &self.token {
            let _ = writeln!(conf, "authorization {{ token: {token:?} }}");
        }
        if self.jetstream {
            let _ = writeln!(conf, "jetstream {{ store_dir: {:?} }}", dir.path().join("js").display().to_string());
        }
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).expect("write nats.conf");
        let mut server = NatsServer { child: None, port, conf_path, log_path: dir.path().join("nats.log"), _dir: dir };
        server.start();
        server
    }
}

/// A running nats-server.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    conf_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// A plain server: no auth, no JetStream.
    pub fn start_default() -> Self {
        NatsOptions::new().start()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Starts the server (again) on its port and waits until it sends its INFO to a client.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("nats log");
            let mut child = Command::new(nats_server_bin())
                .arg("-c")
                .arg(&self.conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start nats-server: {e} (apt-get install nats-server)"));
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // e.g. the port is still held by the previous instance: try again
                }
                if sends_info(self.port) {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "nats-server did not start on port {}:\n{}", self.port, self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGKILL): its port refuses connections until [`NatsServer::start`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): the kernel still accepts connections, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("nats-server is running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.stop();
        if std::thread::panicking() {
            crate::envoy::print_log_tail("nats-server log", &self.log(), 100);
        }
    }
}

/// `NATS_SERVER_BIN`, else `nats-server` from `PATH` (Debian installs it in /usr/sbin).
fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() {
        return sbin;
    }
    PathBuf::from("nats-server")
}

/// A port the kernel just gave out and that is free again.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// `true` when a server on `port` greets a new client with `INFO`.
fn sends_info(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).is_ok() && &buf == b"INFO"
}
