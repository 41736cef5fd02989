//! moto (`moto_server` from the project's virtualenv) as a local AWS that really checks SigV4: one server per
//! test on a free loopback port, set up with boto3 while signature checking is off, then switched on with
//! `POST /moto-api/reset-auth` (body `0`, `content-type: text/plain`). Killed when dropped; its log is printed if
//! the test is failing.
//!
//! What moto checks and what it cannot: signed headers, scope, the body hash, session tokens of STS credentials,
//! double-encoded Lambda ARN paths. It does not check the clock, and it cannot verify a request without a body to
//! a JSON/query service (it hashes its own header dict as the body), nor header values that are not UTF-8.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::paths;

/// What the setup created (all in account 123456789012, region us-east-1).
#[derive(Debug, Clone)]
pub struct MotoSetup {
    /// The IAM user `envoy`'s access key (allow-all policy).
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Role `app` (allow-all policy), assumable with the user's key.
    pub role_arn: String,
    /// Lambda function `orders` (moto's Docker-less Lambda: it echoes the payload or answers a queued result).
    pub function_arn: String,
    /// S3 bucket `files`, SQS queue `jobs`.
    pub queue_url: String,
}

/// A running moto_server.
pub struct Moto {
    child: Child,
    port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

const SETUP: &str = r#"
import io, json, os, sys, urllib.request, zipfile
import boto3

url = os.environ["MOTO_URL"]

def post(path, body, content_type="application/json"):
    request = urllib.request.Request(url + path, data=body.encode(), method="POST",
                                     headers={"content-type": content_type})
    return urllib.request.urlopen(request).read()

post("/moto-api/config", json.dumps({"lambda": {"use_docker": False}}))
kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
allow_all = json.dumps({"Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
iam = boto3.client("iam", **kw)
iam.create_user(UserName="envoy")
iam.put_user_policy(UserName="envoy", PolicyName="all", PolicyDocument=allow_all)
key = iam.create_access_key(UserName="envoy")["AccessKey"]
trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                    "Principal": {"AWS": "arn:aws:iam::123456789012:user/envoy", "Service": "lambda.amazonaws.com"}}]})
role = iam.create_role(RoleName="app", AssumeRolePolicyDocument=trust)["Role"]
iam.put_role_policy(RoleName="app", PolicyName="all", PolicyDocument=allow_all)
code = io.BytesIO()
with zipfile.ZipFile(code, "w") as z:
    z.writestr("index.py", "def handler(event, context):\n    return event\n")
function = boto3.client("lambda", **kw).create_function(
    FunctionName="orders", Runtime="python3.12", Role=role["Arn"], Handler="index.handler",
    Code={"ZipFile": code.getvalue()})
boto3.client("s3", **kw).create_bucket(Bucket="files")
queue = boto3.client("sqs", **kw).create_queue(QueueName="jobs")["QueueUrl"]
if os.environ.get("MOTO_AUTH") != "off":
    post("/moto-api/reset-auth", "0", "text/plain")
print(json.dumps({"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"],
                  "role_arn": role["Arn"], "function_arn": function["FunctionArn"], "queue_url": queue}))
"#;

impl Moto {
    /// Starts moto_server on a free port and waits until it answers (a few attempts: another process may take
    /// the port between choosing and binding it).
    pub fn start() -> Moto {
        let bin = paths::project_root().join(".venv/bin/moto_server");
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("moto-").tempdir().expect("temporary directory");
            let log_path = dir.path().join("moto.log");
            let port = free_port();
            let log = fs::File::create(&log_path).expect("moto log");
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e} (run envoy-test/install)", bin.display()));
            let mut moto = Moto { child, port, log_path, _dir: dir };
            if moto.wait_ready() {
                return moto;
            }
            eprintln!("moto_server did not start on port {port}:\n{}", moto.log());
        }
        panic!("moto_server did not start");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                if let Ok((200, _)) = crate::admin::request(
                    std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
                    "GET",
                    "/moto-api/data.json",
                ) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates the user, role, function, bucket and queue, then turns signature checking on.
    pub fn setup(&self) -> MotoSetup {
        self.setup_with_auth(true)
    }

    /// As [`Moto::setup`]; with `auth: false` signature checking stays off (for the few calls moto cannot check,
    /// e.g. it insists on an `Authorization` header for `AssumeRoleWithWebIdentity`, which AWS does not).
    pub fn setup_with_auth(&self, auth: bool) -> MotoSetup {
        let out = self.python_with_env(SETUP, &[("MOTO_AUTH", if auth { "on" } else { "off" })]);
        let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("setup output {out:?}: {e}"));
        let field = |name: &str| v[name].as_str().unwrap_or_else(|| panic!("setup output without {name}")).to_string();
        MotoSetup {
            access_key_id: field("access_key_id"),
            secret_access_key: field("secret_access_key"),
            role_arn: field("role_arn"),
            function_arn: field("function_arn"),
            queue_url: field("queue_url"),
        }
    }

    /// Runs a Python script with the virtualenv's interpreter (boto3 available, `MOTO_URL` set); returns its
    /// stdout, panics with its stderr if it fails.
    pub fn python(&self, script: &str) -> String {
        self.python_with_env(script, &[])
    }

    fn python_with_env(&self, script: &str, env: &[(&str, &str)]) -> String {
        let python = paths::project_root().join(".venv/bin/python");
        let output = Command::new(&python)
            .arg("-c")
            .arg(script)
            .env("MOTO_URL", self.url())
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        assert!(
            output.status.success(),
            "python failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Queues results for moto's Docker-less Lambda: the next invocations answer these payloads in order.
    pub fn queue_lambda_results(&self, results: &[&str]) {
        let body = serde_json::json!({"results": results}).to_string();
        let script = format!(
            "import os, urllib.request\n\
             r = urllib.request.Request(os.environ['MOTO_URL'] + '/moto-api/static/lambda-simple/response', \
             data={body:?}.encode(), method='POST', headers={{'content-type': 'application/json'}})\n\
             urllib.request.urlopen(r).read()\n"
        );
        self.python(&script);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            crate::envoy::print_log_tail("moto log", &self.log(), 60);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}
