//! Tandem's desktop agent: pairing with a phone through a QR code, the
//! outbound connection to the relay, running tasks through the executors the
//! user configured, and the audit log. The binary `tandem` is a thin CLI
//! over this library.

pub mod acp;
pub mod agent_config;
pub mod audit;
pub mod awake;
pub mod claude;
pub mod crashpoint;
pub mod daemon;
pub mod damage;
pub mod datadir;
pub mod diffs;
pub mod executor;
pub mod history;
pub mod ipc;
pub mod keystore;
pub mod pair;
pub mod peers;
pub mod projects;
pub mod qr;
pub mod report;
pub mod rules;
pub mod service;
pub mod settings;
pub mod tasks;
pub mod text;
pub mod ui;
