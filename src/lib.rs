//! msgc: a group-communication relay for clusters.
pub mod client;
pub mod config;
pub mod core;
pub mod mesh;
pub mod proto;
pub mod runtime;
