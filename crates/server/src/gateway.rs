//! `ficus gateway`: the strangler-fig façade as its own process.
//!
//! Like nginx's worker processes, it runs one single-threaded runtime per core, each with its
//! own listening socket on the same address (`SO_REUSEPORT`, the kernel spreads connections)
//! and its own upstream connection pool: a request never hops between threads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ficus_gateway::admin_listener::{gateway_side, Listener};
use ficus_gateway::proxy::{self, Gateway};
use ficus_gateway::Auth;
use ficus_runtime::Shutdown;
use futures::future::Either;

/// How often the route file is checked for changes.
pub const ROUTES_POLL: Duration = Duration::from_millis(500);
/// How often running rollouts are judged.
pub const ROLLOUT_TICK: Duration = Duration::from_millis(200);

/// A running gateway.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub shutdown: Shutdown,
    workers: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
    /// The admin listener's address and server, when the admin API has its own address.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    watcher: tokio::task::JoinHandle<()>,
    rollouts: tokio::task::JoinHandle<()>,
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    listener.into_std()
}

/// Loads the routes and starts proxying on `listen`, one worker per core.
pub async fn start(
    routes: PathBuf,
    listen: SocketAddr,
    auth: Arc<Auth>,
) -> anyhow::Result<RunningGateway> {
    start_with(routes, listen, None, auth).await
}

/// [`start`], with the façade's admin API and console on `admin_listen` only when it is set
/// (`ficus gateway --admin-listen`): the public address then answers them 404.
pub async fn start_with(
    routes: PathBuf,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    auth: Arc<Auth>,
) -> anyhow::Result<RunningGateway> {
    let gateway = Arc::new(
        Gateway::from_file(routes.clone(), auth)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("loading routes from {}", routes.display()))?,
    );
    // A weight the saved rollout state asks for (a crash came between the two) is set
    // before the first request is served.
    gateway
        .rollouts
        .apply_pending(&gateway)
        .map_err(anyhow::Error::msg)
        .context("applying the saved rollout state")?;
    let shutdown = Shutdown::new();
    let rollouts = tokio::spawn(proxy::rollout_ctl::run(
        gateway.clone(),
        ROLLOUT_TICK,
        shutdown.clone(),
    ));
    let watcher = tokio::spawn(proxy::watch_file(
        gateway.clone(),
        ROUTES_POLL,
        shutdown.clone(),
    ));
    // The first socket fixes the port (when asked for port 0); the others share it.
    let first = bind(listen).with_context(|| format!("binding {listen}"))?;
    let addr = first.local_addr()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut listeners = vec![first];
    for _ in 1..cores {
        listeners.push(bind(addr).with_context(|| format!("binding {addr}"))?);
    }
    let side = if admin_listen.is_some() {
        Listener::Public
    } else {
        Listener::All
    };
    let (admin_addr, admin) = match admin_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("binding the admin address {at}"))?;
            let admin_addr = listener.local_addr()?;
            let app = gateway_side(
                proxy::router(gateway.clone()).merge(ficus_gateway::console::routes()),
                Listener::Admin,
            );
            let server = tokio::spawn(crate::app::serve_http(
                listener,
                app,
                crate::app::HEADER_READ_TIMEOUT,
                shutdown.clone(),
            ));
            tracing::info!(addr = %admin_addr, "the gateway's admin API has its own address");
            (Some(admin_addr), Some(server))
        }
        None => (None, None),
    };
    let mut workers = Vec::with_capacity(cores);
    for (i, listener) in listeners.into_iter().enumerate() {
        let (gateway, stop) = (gateway.clone(), shutdown.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("ficus-gateway-{i}"))
                .spawn(move || -> std::io::Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        // The console is served here too: on this address the façade's
                        // admin API (routes, weights) is same-origin for it.
                        let app = gateway_side(
                            proxy::router(gateway.clone()).merge(ficus_gateway::console::routes()),
                            side,
                        );
                        // A request for a path the façade does not answer itself is proxied
                        // without going through the router, whose fallback would do the same.
                        let handler = move |req: axum::extract::Request| {
                            if proxy::own_path(req.uri().path()) {
                                Either::Left(tower::ServiceExt::oneshot(app.clone(), req))
                            } else {
                                let gateway = gateway.clone();
                                Either::Right(async move { Ok(gateway.handle(req).await) })
                            }
                        };
                        // The same accept loop as the API: a client that dribbles its
                        // headers is cut off after the header-read timeout.
                        crate::app::serve_with(
                            listener,
                            crate::app::HEADER_READ_TIMEOUT,
                            stop,
                            handler,
                        )
                        .await
                    })
                })?,
        );
    }
    tracing::info!(%addr, routes = %routes.display(), workers = cores, "ficus gateway is proxying");
    Ok(RunningGateway {
        addr,
        gateway,
        shutdown,
        workers,
        admin_addr,
        admin,
        watcher,
        rollouts,
    })
}

impl RunningGateway {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets requests in flight finish, stops watching the file.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        let workers = self.workers;
        tokio::task::spawn_blocking(move || {
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a gateway worker panicked"))??;
            }
            anyhow::Ok(())
        })
        .await??;
        if let Some(admin) = self.admin {
            admin.await??;
        }
        let _ = self.watcher.await;
        let _ = self.rollouts.await;
        Ok(())
    }
}
