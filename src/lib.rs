//! msgc: a group-communication relay for clusters.
//!
//! Layers, dependencies pointing one way: [`proto`] (frames, codec) ← [`core`] (one shard's
//! sans-io state machine) ← [`mesh`] (peer table, dial rule) ← [`runtime`] (tokio-uring
//! threads and sockets). [`config`] reads the vendor's files; [`client`] is the library, and
//! [`ffi`] its C interface (`libmsgc`, `include/msgc.h`). [`ops`] is the operator's side of a
//! running server (metrics, control socket, systemd).
pub mod client;
pub mod config;
pub mod core;
pub mod ffi;
pub mod mesh;
pub mod ops;
pub mod proto;
pub mod runtime;
pub mod tls;

/// The README's Rust examples compile (checked by `cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
