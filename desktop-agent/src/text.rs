//! Text that other devices chose, made safe to print on the desktop's
//! terminal. A phone names itself; that name is shown in the pairing dialog,
//! `tandem devices` and `tandem status`, where the desktop user decides whom
//! to trust. Unicode format characters (category Cf: bidi overrides and
//! isolates such as U+202E, zero-width spaces and joiners, the soft hyphen)
//! and controls (Cc, and the line and paragraph separators Zl, Zp) could make
//! that screen lie: "Ana's phone" spelled backwards behind a right-to-left
//! override, an invisible character that makes two names look alike, an
//! escape sequence that moves the cursor. [`visible`] shows each of them as
//! `<U+XXXX>` instead, so they are neither obeyed by the terminal nor hidden
//! from the user.

use std::fmt::Write as _;

use unicode_general_category::{GeneralCategory, get_general_category};

/// Whether the terminal would obey or hide `c` rather than show it.
fn is_hidden(c: char) -> bool {
    matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// `s` with every control (Cc), format (Cf), line separator (Zl) and
/// paragraph separator (Zp) character replaced by `<U+XXXX>` (its code point
/// in upper-case hex, at least four digits). Everything else is kept as it
/// is.
#[must_use]
pub fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_hidden(c) {
            let _ = write!(out, "<U+{:04X}>", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_control_characters_are_shown_not_obeyed() {
        // A right-to-left override: the screen would read "Ana's phone".
        assert_eq!(visible("\u{202e}enohp s'anA"), "<U+202E>enohp s'anA");
        // Zero-width space, joiner, non-joiner, word joiner, BOM, soft hyphen.
        assert_eq!(
            visible("A\u{200b}n\u{200d}a\u{200c}\u{2060}\u{feff}\u{ad}"),
            "A<U+200B>n<U+200D>a<U+200C><U+2060><U+FEFF><U+00AD>"
        );
        // Isolates, marks, tag characters (beyond the BMP).
        assert_eq!(visible("\u{2066}x\u{2069}\u{200f}"), "<U+2066>x<U+2069><U+200F>");
        assert_eq!(visible("\u{e0041}"), "<U+E0041>");
        // Controls: escape sequences, newlines, the line separator.
        assert_eq!(
            visible("a\x1b[2Jb\nc\u{2028}d\u{85}"),
            "a<U+001B>[2Jb<U+000A>c<U+2028>d<U+0085>"
        );
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for s in ["Ana's phone", "Pixel 8 — Zoë", "ماريا", "李的手机", "📱 phone", "a b\u{a0}c", ""]
        {
            assert_eq!(visible(s), s);
        }
    }
}
