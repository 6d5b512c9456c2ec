//! The `tandem` binary's subcommands, by job (declared by `main.rs`; not
//! part of the library).

pub(crate) mod args;
pub(crate) mod commands;
pub(crate) mod local;
pub(crate) mod relay;
pub(crate) mod rules;
pub(crate) mod run;
