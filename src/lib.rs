//! msgc: a group-communication relay for clusters.
pub mod config;
pub mod proto;
