//! `tandem`: the desktop agent and CLI (filled in by the desktop-agent issue).

fn main() -> std::process::ExitCode {
    eprintln!(
        "tandem {}: the desktop agent is not built yet (protocol v{})",
        env!("CARGO_PKG_VERSION"),
        tandem_proto::frame::VERSION
    );
    std::process::ExitCode::FAILURE
}
