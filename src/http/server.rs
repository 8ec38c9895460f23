//! The HTTP/1.1 server under the router (hyper, as `axum::serve` runs it), with the bounds a
//! public server needs and `axum::serve` does not set:
//!
//! * **Header read timeout.** A client must send a request's headers within
//!   `server.header_read_timeout_secs` of starting it, and a keep-alive connection waiting for
//!   its next request gets the same time (hyper's timer runs while it waits for a request
//!   head): half-open requests and idle connections are closed, not held for ever.
//! * **Connections per client address.** At most `server.max_connections_per_ip` open
//!   connections from one address, WebSockets included (the count lives as long as the
//!   connection's stream, upgraded or not). One over it is answered 429 with the error
//!   envelope and closed. Behind a proxy (`rate_limit.client_ip_header` set) every connection
//!   comes from the proxy, so this bound is not applied here: it bounds Socket.io sockets per
//!   client address the proxy forwards instead (`realtime::budget`), and the per-address rate
//!   limit bounds REST requests.
//! * **Graceful shutdown.** When `shutdown` fires: no more accepts, idle connections closed,
//!   requests in flight answered, then [`serve`] returns.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long a refused connection's answer may take to write.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// The bounds of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    /// `None`: no bound (behind a proxy).
    pub max_connections_per_ip: Option<usize>,
}

/// Serves `app` on `listener` until `shutdown`, then drains (see the module docs).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: CancellationToken) {
    let open = Arc::new(OpenConnections::default());
    // Each connection holds a receiver; once all are dropped, every connection has ended.
    let (connections, _) = tokio::sync::watch::channel(());
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
        };
        // Small realtime frames go out at once, not held back by Nagle's algorithm waiting
        // for the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let Some(counted) = open.admit(peer.ip(), limits.max_connections_per_ip) else {
            tokio::spawn(refuse(tcp, peer));
            continue;
        };
        let service = app.clone().map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(Counted { tcp, _counted: counted }), TowerToHyperService::new(service))
            .with_upgrades();
        let (shutdown, alive) = (shutdown.clone(), connections.subscribe());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = shutdown.cancelled() => {
                    // Idle: closed now; a request in flight: answered, then closed.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = ended {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(alive);
        });
    }
    drop(listener);
    connections.closed().await;
}

/// Accepting fails when the process is out of file descriptors, among others: wait a
/// little rather than spin (as `axum::serve` does).
async fn accept_failed(err: io::Error) {
    if !matches!(err.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
        tracing::warn!(error = %err, "accepting a connection failed");
        metrics::counter!("http_accept_errors_total").increment(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Answers a connection over the per-address bound 429, in the error envelope, and closes it.
async fn refuse(mut tcp: TcpStream, peer: SocketAddr) {
    metrics::counter!("http_connections_refused_total", "reason" => "too_many_connections").increment(1);
    tracing::info!(%peer, "too many connections from this address; refusing one");
    let body = r#"{"success":false,"error":{"code":"TOO_MANY_CONNECTIONS","message":"too many open connections from this address"}}"#;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// Open connections per client address.
#[derive(Default)]
struct OpenConnections {
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl OpenConnections {
    /// Counts one more connection from `ip`, unless it already has `most`.
    fn admit(self: &Arc<Self>, ip: IpAddr, most: Option<usize>) -> Option<Slot> {
        let mut by_ip = self.by_ip.lock();
        let open = by_ip.entry(ip).or_default();
        if most.is_some_and(|most| *open >= most) {
            return None;
        }
        *open += 1;
        Some(Slot { open: self.clone(), ip })
    }
}

/// One counted connection; dropped with the connection's stream.
struct Slot {
    open: Arc<OpenConnections>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_ip = self.open.by_ip.lock();
        if let Some(open) = by_ip.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// A connection's stream with its count: an upgraded connection (a WebSocket) keeps the
/// stream, and so the count, after its HTTP request is done.
struct Counted {
    tcp: TcpStream,
    _counted: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
