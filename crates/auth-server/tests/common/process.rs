//! The key service as the real binary, in a child process (so that it can
//! be killed and restarted), on 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// A child process killed when dropped, however the test ends.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A key service (the binary) on `port`, with its data directory and,
/// for PostgreSQL, `database_url`.
pub(crate) struct KeyService {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: String,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) database_url: Option<String>,
    /// Environment variables set on each (re)start.
    pub(crate) env: Vec<(String, String)>,
    child: Option<KillOnDrop>,
}

impl KeyService {
    pub(crate) async fn start(database_url: Option<&str>) -> Self {
        Self::start_with(database_url, &[]).await
    }

    /// Started with these environment variables (on every restart too).
    pub(crate) async fn start_with(database_url: Option<&str>, env: &[(&str, &str)]) -> Self {
        let mut ks = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: String::new(),
            dir: tempfile::tempdir().unwrap(),
            database_url: database_url.map(str::to_owned),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
        };
        ks.restart().await;
        ks.admin = std::fs::read_to_string(auth_server::admin_key_path(ks.dir.path()))
            .unwrap()
            .trim()
            .to_owned();
        ks
    }

    /// (Re)starts the process on the same address; returns once it answers.
    pub(crate) async fn restart(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_auth-server"));
        command
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["serve", "--bind", &self.addr.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        match &self.database_url {
            Some(url) => command.env("DATABASE_URL", url),
            None => command.env_remove("DATABASE_URL"),
        };
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(KillOnDrop(command.spawn().unwrap()));
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("http://{}/health", self.addr)).await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the key service did not come up");
    }

    pub(crate) fn kill(&mut self) {
        self.child = None;
    }

    pub(crate) async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .request(
                method.parse().unwrap(),
                format!("http://{}{path}", self.addr),
            )
            .header("x-api-key", &self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    /// The CLI on this key service's database: its stdout (asserting
    /// success).
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        cli_on(self.dir.path(), self.database_url.as_deref(), &[], args)
    }
}

/// The CLI on the database of `data_dir` (PostgreSQL at `database_url`
/// when given), with these environment variables (`None`: removed): its
/// stdout, asserting success.
pub(crate) fn cli_on(
    data_dir: &Path,
    database_url: Option<&str>,
    env: &[(&str, Option<&str>)],
    args: &[&str],
) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_auth-server"));
    command.arg("--data-dir").arg(data_dir).args(args);
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    for (name, value) in env {
        match value {
            Some(v) => command.env(name, v),
            None => command.env_remove(name),
        };
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
