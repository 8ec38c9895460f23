//! A redis-server of a test's own, on a port of its choosing, which the test can kill and
//! start again (empty, as a real restart without persistence).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A redis-server of the test's own, which it can kill and restart (empty, like a real
/// restart without persistence).
pub struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    pub async fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let redis = Self { port, child };
        let url = redis.url();
        super::eventually(Duration::from_secs(10), "own redis answers", || async {
            match redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await {
                Ok(mut connection) => redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
