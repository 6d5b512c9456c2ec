//! End-to-end tests for Tandem: they start real relay and agent processes on
//! `127.0.0.1:0` and drive them as a phone would. The harness lands with the
//! relay issue.
