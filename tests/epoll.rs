//! The server test suites again (server, mesh, client, tls, security, ops), every test of them,
//! with the servers on the epoll backend (tests/common picks epoll for modules below
//! `epoll::`), so that one `cargo test` covers both backends. `MSGC_TEST_IO=uring|epoll`
//! overrides the choice in every target.

// Each suite brings its own `mod common` (as it does in its own target); tests/common tells
// which target it is in from its module path.
#![allow(clippy::duplicate_mod)]

#[path = "server.rs"]
mod server;

#[path = "mesh.rs"]
mod mesh;

#[path = "client.rs"]
mod client;

#[path = "tls.rs"]
mod tls;

#[path = "security.rs"]
mod security;

#[path = "ops.rs"]
mod ops;
