//! Reserved for end-to-end suites that span several components. It holds
//! nothing yet: the process-level suites live next to the binaries they
//! start (`relay/tests/`, `desktop-agent/tests/`, `mobile-ffi/tests/`),
//! because Cargo gives tests only their own package's binary paths.
