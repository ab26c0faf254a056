//! The `ficus` binary's library half: wiring of the store, projections and HTTP API into a
//! running server, plus the demo and the benchmarks. Tests start servers through [`app`].

pub mod app;
pub mod bench;
pub mod blobs;
pub mod client;
pub mod demo;
pub mod gateway;
pub mod import;
pub mod legacy;
pub mod logs;
