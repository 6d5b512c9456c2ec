//! The terminal side of pairing: the QR code (and optionally PNG/SVG files
//! and the plain link), the phone's details and the 6-digit code, and the
//! question that decides the pairing and the device's scope.
//!
//! Everything the phone chose (its name, platform and version) goes through
//! [`visible`] before it reaches the terminal. Answers are read from an
//! [`Input`]: lines typed before the question was shown are discarded, so a
//! stray "y" typed earlier never confirms a device.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc};

use crate::pair::{ConfirmRequest, Decision, PairUi, UiFuture};
use crate::peers::Scope;
use crate::qr::PairingQr;
use crate::text::escaped;

/// Lines typed at the terminal, read by a thread of their own; shared by the
/// pairing prompt and `tandem up`'s "press Enter" (never both at once).
#[derive(Debug, Clone)]
pub struct Input {
    lines: Arc<Mutex<mpsc::Receiver<String>>>,
}

impl Input {
    /// The lines of this process's standard input. The reading thread ends
    /// at end of input (then [`Self::next_line`] returns `None`).
    #[must_use]
    pub fn stdin() -> Self {
        let (tx, rx) = mpsc::channel(16);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        Self::from_channel(rx)
    }

    /// Lines from a channel (tests, other front ends).
    #[must_use]
    pub fn from_channel(rx: mpsc::Receiver<String>) -> Self {
        Self { lines: Arc::new(Mutex::new(rx)) }
    }

    /// The next line; `None` once the input ended.
    pub async fn next_line(&self) -> Option<String> {
        self.lines.lock().await.recv().await
    }

    /// Drop the lines typed so far (before a question is asked).
    pub async fn discard_typed(&self) {
        let mut lines = self.lines.lock().await;
        while lines.try_recv().is_ok() {}
    }
}

/// Pairing on a terminal.
#[derive(Debug, Default)]
pub struct TerminalUi {
    /// Confirm without asking (scripts, tests), with the proposed scope.
    pub yes: bool,
    /// Print the link as text too.
    pub print_url: bool,
    /// Also write the QR code as a PNG here.
    pub qr_png: Option<PathBuf>,
    /// Also write the QR code as an SVG here.
    pub qr_svg: Option<PathBuf>,
    /// Do not draw the QR code in the terminal (files or URL only).
    pub no_terminal_qr: bool,
    /// Where answers come from; without one (and without `yes`) every
    /// pairing is refused.
    pub input: Option<Input>,
}

/// What each scope lets a device do, for the question.
fn scope_meaning(scope: Scope) -> &'static str {
    match scope {
        Scope::View => "watch tasks, nothing else",
        Scope::Submit => "send tasks, follow-ups and cancels; no approvals",
        Scope::Approve => "send tasks and answer approval requests",
        Scope::Rules => "send tasks, answer approval requests and add allow rules from them",
    }
}

/// The phone's details, the code and the proposed scope, as printed before
/// the question.
#[must_use]
pub fn confirm_text(r: &ConfirmRequest<'_>) -> String {
    let mut s = format!(
        "\n{} ({}, {}) wants to pair.\n",
        escaped(&r.phone.name),
        escaped(&r.phone.platform),
        escaped(&r.phone.app_version)
    );
    if r.phone.ephemeral {
        s.push_str(
            "It keeps its keys only while the page is open: closing or reloading the page ends \
             this pairing, and this computer forgets it once it has been gone for a while.\n",
        );
    }
    s.push_str(&format!("Code: {}\nDevice id: {}\n", r.sas, r.phone_id));
    match r.current {
        Some(c) if c == r.proposed => s.push_str(&format!(
            "This device is paired already, with scope {c}: pairing it again keeps that scope \
             unless you answer another one. Its old session ends.\n"
        )),
        Some(c) => s.push_str(&format!(
            "This device is paired already, with scope {c}; --scope asks for {}. Its old session \
             ends.\n",
            r.proposed
        )),
        None => {}
    }
    s.push_str(&format!("Scope: {} ({}).\n", r.proposed, scope_meaning(r.proposed)));
    s
}

/// The question (on a line of its own: the answer is typed below it).
#[must_use]
pub fn confirm_question(proposed: Scope) -> String {
    format!(
        "Does the phone show the same code? y = pair with scope {proposed}; view, submit or \
         approve = pair with that scope; anything else refuses. [y/N]\n"
    )
}

/// Read an answer to [`confirm_question`].
#[must_use]
pub fn parse_answer(line: &str, proposed: Scope) -> Decision {
    let a = line.trim().to_ascii_lowercase();
    if matches!(a.as_str(), "y" | "yes") {
        return Decision::Accept(proposed);
    }
    match a.parse::<Scope>() {
        Ok(scope) if !a.is_empty() => Decision::Accept(scope),
        _ => Decision::Refuse,
    }
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
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

    fn confirm<'a>(&'a mut self, request: ConfirmRequest<'a>) -> UiFuture<'a, Decision> {
        Box::pin(async move {
            let proposed = request.proposed;
            if self.yes {
                say(&confirm_text(&request));
                say(&format!(
                    "Confirmed (--yes) with scope {proposed}. Make sure the phone shows {}.\n",
                    request.sas
                ));
                return Decision::Accept(proposed);
            }
            let Some(input) = &self.input else {
                say(&confirm_text(&request));
                say("Nobody can answer here (no terminal): refused. Pair with --yes to confirm \
                     without asking.\n");
                return Decision::Refuse;
            };
            input.discard_typed().await;
            say(&confirm_text(&request));
            say(&confirm_question(proposed));
            match input.next_line().await {
                Some(line) => parse_answer(&line, proposed),
                None => {
                    say("\nNo answer (the input ended): refused.\n");
                    Decision::Refuse
                }
            }
        })
    }

    fn status(&mut self, message: &str) {
        println!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use tandem_proto::entropy::Entropy;
    use tandem_proto::message::DeviceInfo;
    use tandem_proto::sas::Sas;

    use super::*;

    fn request(info: &DeviceInfo, proposed: Scope, current: Option<Scope>) -> ConfirmRequest<'_> {
        let key = tandem_proto::DeviceKey::generate(&mut Entropy::os()).unwrap();
        ConfirmRequest {
            phone: info,
            phone_id: key.public().device_id(),
            sas: Sas::from_handshake_hash(&[7; 32]),
            proposed,
            current,
        }
    }

    #[test]
    fn answers_choose_the_scope_or_refuse() {
        assert_eq!(parse_answer("y\n", Scope::Submit), Decision::Accept(Scope::Submit));
        assert_eq!(parse_answer(" YES ", Scope::View), Decision::Accept(Scope::View));
        assert_eq!(parse_answer("view", Scope::Approve), Decision::Accept(Scope::View));
        assert_eq!(parse_answer("Approve", Scope::View), Decision::Accept(Scope::Approve));
        for refuse in ["", "n", "no", "yess", "admin", "\u{202e}y"] {
            assert_eq!(parse_answer(refuse, Scope::Approve), Decision::Refuse, "{refuse:?}");
        }
    }

    #[test]
    fn the_dialog_shows_a_hostile_name_inert_and_says_what_it_proposes() {
        let info = DeviceInfo {
            name: "\u{202e}enohp s'anA\u{200b}".into(),
            platform: "web".into(),
            app_version: "0.1.0".into(),
            ephemeral: true,
        };
        let text = confirm_text(&request(&info, Scope::Submit, None));
        let asked = text.lines().find(|l| l.contains("wants to pair")).unwrap();
        assert!(asked.contains("enohp s'anA") && asked.ends_with("(web, 0.1.0) wants to pair."));
        assert!(!text.contains('\u{202e}') && !text.contains('\u{200b}'), "{text}");
        assert!(text.contains("only while the page is open"), "{text}");
        assert!(text.contains("Scope: submit"), "{text}");
        let again = DeviceInfo { ephemeral: false, ..info };
        let text = confirm_text(&request(&again, Scope::View, Some(Scope::View)));
        assert!(text.contains("paired already, with scope view"), "{text}");
        assert!(!text.contains("page is open"));
    }
}
