//! The query-serving limit: a bare axum handler that answers every GET with the same bytes
//! (read once from a file at start), so `ficus serve` can be compared with doing nothing but
//! HTTP on the same machine.
//!
//!   bare_axum <listen address> <body file>

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: bare_axum <listen> <body file>");
    let body: &'static [u8] = Box::leak(std::fs::read(&args[2])?.into_boxed_slice());
    let app = axum::Router::new().fallback(move || async move {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
    });
    let listener = tokio::net::TcpListener::bind(&args[1]).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
