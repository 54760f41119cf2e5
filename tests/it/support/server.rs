//! A Kura server for one test: a fresh data directory, the real `App`, a real TCP listener on
//! 127.0.0.1:0. Also a child-process server for tests that kill it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura::{App, Archive, Config};
use tempfile::TempDir;
use tokio::sync::oneshot;

pub struct TestServer {
    pub base: String,
    pub archive: Arc<Archive>,
    pub dir: TempDir,
    /// Dropping it shuts the server down, so it lives as long as the test server.
    _shutdown: oneshot::Sender<()>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed its configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
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
        TestServer { base, archive, dir, _shutdown: shutdown }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
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
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(kura_binary())
            .args(["serve", "--listen", &address.to_string(), "--data"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kura");
        let server = ChildServer { child, base: format!("http://{address}/dicomweb"), address };
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
