//! `uniffi-bindgen`: UniFFI's binding generator, built from the same `uniffi`
//! version as `tandem-mobile`, so generated code always matches the library.
//! See `mobile-ffi/scripts/bindings.sh` for the one command an app developer runs.

fn main() {
    uniffi::uniffi_bindgen_main();
}
