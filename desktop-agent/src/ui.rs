//! The terminal side of pairing: the QR code (and optionally PNG/SVG files
//! and the plain link), the 6-digit code, and the confirmation prompt.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use tandem_proto::DeviceId;
use tandem_proto::message::DeviceInfo;
use tandem_proto::sas::Sas;

use crate::pair::PairUi;
use crate::qr::PairingQr;

/// Pairing on a terminal.
#[derive(Debug, Default)]
pub struct TerminalUi {
    /// Confirm without asking (scripts, tests).
    pub yes: bool,
    /// Print the link as text too.
    pub print_url: bool,
    /// Also write the QR code as a PNG here.
    pub qr_png: Option<PathBuf>,
    /// Also write the QR code as an SVG here.
    pub qr_svg: Option<PathBuf>,
    /// Do not draw the QR code in the terminal (files or URL only).
    pub no_terminal_qr: bool,
}

impl PairUi for TerminalUi {
    fn show_code(&mut self, link: &str) {
        let mut out = std::io::stdout().lock();
        match PairingQr::new(link) {
            Ok(qr) => {
                if !self.no_terminal_qr {
                    let _ = writeln!(
                        out,
                        "\nScan this code with your phone's camera:\n\n{}",
                        qr.terminal()
                    );
                }
                if let Some(p) = &self.qr_png {
                    match qr.write_png(p, 8) {
                        Ok(()) => {
                            let _ = writeln!(out, "QR code written to {}", p.display());
                        }
                        Err(e) => {
                            let _ = writeln!(out, "could not write {}: {e}", p.display());
                        }
                    }
                }
                if let Some(p) = &self.qr_svg
                    && let Err(e) = qr.write_svg(p)
                {
                    let _ = writeln!(out, "could not write {}: {e}", p.display());
                }
            }
            Err(e) => {
                let _ = writeln!(out, "cannot draw the QR code ({e}); open the link instead");
            }
        }
        if self.print_url {
            // Scripts read this line.
            let _ = writeln!(out, "pairing link: {link}");
        }
        let _ = writeln!(out, "The code changes every two minutes. Waiting for a phone…");
        let _ = out.flush();
    }

    fn confirm(&mut self, phone: &DeviceInfo, phone_id: DeviceId, sas: Sas) -> bool {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "\n{} ({}, {}) wants to pair.\nCode: {sas}\nDevice id: {phone_id}",
            phone.name, phone.platform, phone.app_version
        );
        if self.yes {
            let _ = writeln!(out, "Confirmed (--yes). Make sure the phone shows {sas}.");
            return true;
        }
        let _ = write!(out, "Does the phone show the same code? [y/N] ");
        let _ = out.flush();
        drop(out);
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_err() {
            return false;
        }
        matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
    }

    fn status(&mut self, message: &str) {
        println!("{message}");
    }
}
