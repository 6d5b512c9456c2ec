//! `tandem-relay`: the relay server binary (filled in by the relay issue).

fn main() -> std::process::ExitCode {
    eprintln!(
        "tandem-relay {}: the relay server is not built yet (protocol v{})",
        env!("CARGO_PKG_VERSION"),
        tandem_relay::PROTOCOL_VERSION
    );
    std::process::ExitCode::FAILURE
}
