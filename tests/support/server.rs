//! Kura servers for tests: in-process on 127.0.0.1:0 (the real `App` over a fresh data
//! directory), or `kura serve` as a child process for tests that kill or restart it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use kura::{App, Archive, Config};
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::client::stow;

/// A Kura server for one test: a fresh data directory, the real `App`, 127.0.0.1:0.
pub struct Server {
    pub base: String,
    pub archive: Arc<Archive>,
    pub dir: TempDir,
    _shutdown: oneshot::Sender<()>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::with_data_dir(dir.path().join("data"));
        adjust(&mut config);
        let archive = Arc::new(Archive::open(&config.data_dir, config.archive.clone()).await.expect("open"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let base = format!("http://{address}{}", config.base_path);
        let app = App::new(archive.clone(), Arc::new(config));
        let (shutdown, signal) = oneshot::channel::<()>();
        tokio::spawn(kura::server::serve(listener, app, async move {
            let _ = signal.await;
        }));
        Server { base, archive, dir, _shutdown: shutdown }
    }

    /// A server with an adjusted configuration holding `parts` (one STOW-RS that must succeed).
    pub async fn with_config(parts: &[Vec<u8>], adjust: impl FnOnce(&mut Config)) -> Server {
        let server = Server::start_with(adjust).await;
        let reply = stow(&server.base, None, parts).await;
        assert_eq!(reply.status, StatusCode::OK, "setup STOW: {}", reply.text());
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server holding `parts`, stored with one STOW-RS request that must succeed.
    pub async fn with(parts: &[Vec<u8>]) -> Server {
        let server = Server::start().await;
        let reply = stow(&server.base, None, parts).await;
        assert_eq!(reply.status, StatusCode::OK, "setup STOW: {}", reply.text());
        server
    }
}

impl Drop for ChildServer {
    /// A test that fails leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kura key create` on a stopped server's data directory; returns (id, secret).
pub fn create_key(data_dir: &Path, institution: &str, roles: &str) -> (String, String) {
    let output = Command::new(kura_binary())
        .args(["key", "create", "--data"])
        .arg(data_dir)
        .args(["--institution", institution, "--role", roles, "--name", &format!("{institution} {roles}")])
        .output()
        .expect("kura key create");
    assert!(output.status.success(), "kura key create: {}", String::from_utf8_lossy(&output.stderr));
    let secret = String::from_utf8(output.stdout).expect("utf-8").trim().to_string();
    let id = secret.strip_prefix("kura_").and_then(|rest| rest.split('_').next()).expect("key shape").to_string();
    (id, secret)
}

/// The `kura` binary under test.
pub fn kura_binary() -> &'static str {
    env!("CARGO_BIN_EXE_kura")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `kura serve` as a child process, for crash and restart tests.
pub struct ChildServer {
    pub child: Child,
    pub base: String,
    pub address: SocketAddr,
}

impl ChildServer {
    pub fn start(data_dir: &Path) -> ChildServer {
        ChildServer::start_with(data_dir, &[])
    }

    /// `kura serve` with further arguments.
    pub fn start_with(data_dir: &Path, args: &[&str]) -> ChildServer {
        ChildServer::start_logged(data_dir, args, None)
    }

    /// `kura serve` with further arguments; with `log`, its output goes to that file at debug
    /// level. `base` says `https` when `--tls-cert` is among the arguments.
    pub fn start_logged(data_dir: &Path, args: &[&str], log: Option<&Path>) -> ChildServer {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // The log goes to stdout (tracing's default); errors at start-up to stderr.
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("log file");
                (Stdio::from(file.try_clone().expect("clone")), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::inherit()),
        };
        let child = Command::new(kura_binary())
            .args(["serve", "--listen", &address.to_string(), "--data"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", if log.is_some() { "debug" } else { "warn" })
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn kura");
        let scheme = if args.contains(&"--tls-cert") { "https" } else { "http" };
        let server = ChildServer { child, base: format!("{scheme}://{address}/dicomweb"), address };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.address).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("kura did not start listening within 60 s");
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the server.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
        assert!(status.expect("kill").success(), "kill -{name}");
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "kura exited with {status} after SIGTERM");
    }
}
