#![allow(dead_code)]
//! Shared set-up for the end-to-end tests.
pub mod cut_proxy;
pub mod pg;
pub mod server;
