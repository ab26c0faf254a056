//! `ficus gateway`: the strangler-fig façade as its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ficus_gateway::proxy::{self, Gateway};
use ficus_gateway::Auth;
use ficus_runtime::Shutdown;
use tokio::task::JoinHandle;

/// How often the route file is checked for changes.
pub const ROUTES_POLL: Duration = Duration::from_millis(500);

/// A running gateway.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub shutdown: Shutdown,
    server: JoinHandle<std::io::Result<()>>,
    watcher: JoinHandle<()>,
}

/// Loads the routes and starts proxying on `listen`.
pub async fn start(
    routes: PathBuf,
    listen: SocketAddr,
    auth: Arc<Auth>,
) -> anyhow::Result<RunningGateway> {
    let gateway = Arc::new(
        Gateway::from_file(routes.clone(), auth)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("loading routes from {}", routes.display()))?,
    );
    let shutdown = Shutdown::new();
    let watcher = tokio::spawn(proxy::watch_file(
        gateway.clone(),
        ROUTES_POLL,
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let app = proxy::router(gateway.clone());
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.wait().await })
        .await
    });
    tracing::info!(%addr, routes = %routes.display(), "ficus gateway is proxying");
    Ok(RunningGateway {
        addr,
        gateway,
        shutdown,
        server,
        watcher,
    })
}

impl RunningGateway {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets requests in flight finish, stops watching the file.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.server.await??;
        let _ = self.watcher.await;
        Ok(())
    }
}
