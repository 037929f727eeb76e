//! Starting and stopping the server: listeners, workers, timeouts, graceful shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::{App, HttpServer};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{error, info, warn};

use crate::boottree::{BootTree, TreeError};
use crate::config::ServerConfig;
use crate::http::{routes, AppState};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("cannot listen on {addr}: {source} (is another server using the port? pick another with --listen or -p)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Server(std::io::Error),
}

/// Binds `addr`. IPv6 sockets are IPv6-only, so `0.0.0.0:P` and `[::]:P` can both be bound.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let err = |source| ServeError::Listen { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

/// Runs the server until SIGTERM or SIGINT, then lets in-flight requests finish (bounded by
/// the shutdown timeout) and returns.
pub fn run(cfg: ServerConfig) -> Result<(), ServeError> {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        warn!(error = ?e.to_string(), "cannot raise the open-files limit; many clients at once may be refused");
    }
    let tree = Arc::new(BootTree::open(&cfg.root)?);
    info!(root = %tree.root().display(), "boot tree");

    let mut listeners = Vec::new();
    for addr in &cfg.listen {
        match bind(*addr) {
            Ok(l) => listeners.push(l),
            // The default dual-stack pair: a host without IPv6 still serves IPv4.
            Err(e) if cfg.listen.len() > 1 && addr.is_ipv6() && addr.ip().is_unspecified() => {
                warn!(error = ?e.to_string(), "IPv6 listener not started")
            }
            Err(e) => return Err(e),
        }
    }

    let state = AppState::new(tree.clone(), cfg.clone());
    let mut server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes))
        .workers(cfg.workers)
        .client_request_timeout(cfg.client_timeout)
        .client_disconnect_timeout(std::time::Duration::from_secs(1))
        .keep_alive(cfg.keep_alive)
        .shutdown_timeout(cfg.shutdown_timeout.as_secs());
    for l in listeners {
        let addr = l.local_addr().map_err(ServeError::Server)?;
        server = server
            .listen(l)
            .map_err(|source| ServeError::Listen { addr, source })?;
        info!(addr = %addr, "listening on http://{addr}/redirect");
    }

    for problem in tree.problems() {
        warn!(problem = ?problem.to_string(), "check");
    }
    if let Err(e) = crate::watch::spawn(tree.clone()) {
        error!(error = ?e.to_string(), "cannot watch the boot tree; changes still take effect, but are not reported");
    }

    actix_web::rt::System::new()
        .block_on(server.run())
        .map_err(ServeError::Server)?;
    info!("stopped");
    Ok(())
}
