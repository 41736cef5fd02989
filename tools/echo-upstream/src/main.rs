//! The echo upstream as a program, for the demo gateway: `echo-upstream [PORT]` (default 8081).

fn main() {
    let port = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8081);
    match echo_upstream::EchoUpstream::start_on(port) {
        Ok(upstream) => {
            println!("echo upstream listening on 127.0.0.1:{}", upstream.port());
            upstream.run_until_ctrl_c();
        }
        Err(err) => {
            eprintln!("echo upstream: cannot listen on 127.0.0.1:{port}: {err}");
            std::process::exit(1);
        }
    }
}
