//! Text from executors and phones made safe to show: approval summaries and
//! details before they reach a phone, and whatever the desktop's own
//! terminal output prints of phone-supplied text.
//!
//! [`visible`] removes what a person cannot see but a renderer obeys:
//!
//! * Unicode format characters (general category `Cf`: the bidi embeddings
//!   and overrides U+202A–U+202E and isolates U+2066–U+2069, the marks
//!   U+200E/U+200F, zero-width space, non-joiner and joiner U+200B–U+200D,
//!   U+2060–U+2064, the BOM U+FEFF, soft hyphen U+00AD, tag characters
//!   U+E0001–U+E007F, …) are removed, so `rm -rf ~ #\u{202E}txt.exe` shows
//!   in its logical order;
//! * the other default-ignorable characters that are not `Cf` (listed in
//!   [`INVISIBLE`]: Hangul fillers, the combining grapheme joiner, Khmer and
//!   Mongolian invisible vowels and variation selectors) are removed;
//! * controls (`Cc`) other than `\n` and `\t` are replaced by a visible
//!   stand-in: C0 controls and DEL by their Control Pictures (`␛` for ESC,
//!   `␍` for CR, …), C1 controls by U+FFFD; a `\r\n` pair becomes `\n`;
//! * the line and paragraph separators U+2028/U+2029 become `\n`.
//!
//! [`escaped`] is for names a device chose for itself (shown where the
//! desktop user decides whom to trust: the pairing dialog, `tandem devices`,
//! `tandem status`): every control (Cc), format (Cf), line separator (Zl) and
//! paragraph separator (Zp) character, and the other invisible characters of
//! [`INVISIBLE`], is shown as `<U+XXXX>` instead of being
//! obeyed or dropped, so "Ana's phone" spelled backwards behind a
//! right-to-left override, or two names that differ only by an invisible
//! character, show as what they are, on one line.
//!
//! [`head_tail`] caps a long text so both ends stay visible: its head,
//! ` … [N bytes cut] … `, and its tail, within a budget in bytes of the
//! JSON string encoding (what [`crate::executor::MAX_EVENT_TEXT`] counts).
//!
//! The category table is the `unicode-general-category` crate's (Unicode
//! 16.0).

use std::fmt::Write as _;

use unicode_general_category::{GeneralCategory, get_general_category};

/// Characters removed by [`visible`] that are invisible but not `Cf`
/// (from Unicode's `Default_Ignorable_Code_Point` property), as inclusive
/// ranges.
pub const INVISIBLE: &[(char, char)] = &[
    ('\u{034F}', '\u{034F}'),   // combining grapheme joiner
    ('\u{115F}', '\u{1160}'),   // Hangul choseong / jungseong fillers
    ('\u{17B4}', '\u{17B5}'),   // Khmer inherent vowels
    ('\u{180B}', '\u{180F}'),   // Mongolian free variation selectors
    ('\u{3164}', '\u{3164}'),   // Hangul filler
    ('\u{FE00}', '\u{FE0F}'),   // variation selectors
    ('\u{FFA0}', '\u{FFA0}'),   // halfwidth Hangul filler
    ('\u{E0100}', '\u{E01EF}'), // variation selectors supplement
];

/// What [`visible`] does with one character.
enum Shown {
    Keep(char),
    Replace(char),
    Drop,
}

fn classify(c: char) -> Shown {
    match c {
        '\n' | '\t' => Shown::Keep(c),
        '\u{2028}' | '\u{2029}' => Shown::Replace('\n'),
        // C0 controls and DEL: their Control Pictures (U+2400–U+241F, U+2421).
        c if u32::from(c) < 0x20 => {
            Shown::Replace(char::from_u32(0x2400 + u32::from(c)).unwrap_or('\u{FFFD}'))
        }
        '\u{7F}' => Shown::Replace('\u{2421}'),
        c => match get_general_category(c) {
            GeneralCategory::Control => Shown::Replace('\u{FFFD}'),
            GeneralCategory::Format => Shown::Drop,
            _ if INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)) => Shown::Drop,
            _ => Shown::Keep(c),
        },
    }
}

/// `text` without invisible or direction-changing characters, and with
/// controls other than newline and tab made visible (see the module docs).
#[must_use]
pub fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        match classify(c) {
            Shown::Keep(c) | Shown::Replace(c) => out.push(c),
            Shown::Drop => {}
        }
    }
    out
}

/// `value` with [`visible`] applied to every string in it, object keys
/// included: a tool's input as a phone shows it.
#[must_use]
pub fn visible_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(visible(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(visible_json).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (visible(&k), visible_json(v))).collect())
        }
        other => other,
    }
}

/// Whether [`visible`] would change `text`.
#[must_use]
pub fn is_visible(text: &str) -> bool {
    text.chars().all(|c| matches!(classify(c), Shown::Keep(_)))
}

/// `text` on one line for a terminal: [`visible`], then newlines and tabs
/// as spaces.
#[must_use]
pub fn one_line(text: &str) -> String {
    visible(text).chars().map(|c| if c == '\n' || c == '\t' { ' ' } else { c }).collect()
}

/// `text` with every control (Cc), format (Cf), line separator (Zl) and
/// paragraph separator (Zp) character, and every other invisible one
/// ([`INVISIBLE`]), replaced by `<U+XXXX>` (its code point in upper-case
/// hex, at least four digits); everything else kept. For names
/// devices chose for themselves (see the module docs).
#[must_use]
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = matches!(
            get_general_category(c),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        ) || INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c));
        if hidden {
            let _ = write!(out, "<U+{:04X}>", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes `c` takes inside a JSON string as `serde_json` writes it.
#[must_use]
pub fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The marker between head and tail.
fn marker(cut: usize) -> String {
    format!(" … [{cut} bytes cut] … ")
}

/// `text` if its JSON string encoding (without the quotes) takes at most
/// `max` bytes; else its head, ` … [N bytes cut] … ` (N counts the UTF-8
/// bytes left out) and its tail, about half the budget each, cut on
/// character boundaries, the whole within `max`. A budget too small for the
/// marker gives just the head.
#[must_use]
pub fn head_tail(text: &str, max: usize) -> String {
    let total = text.chars().map(json_len).fold(0usize, usize::saturating_add);
    if total <= max {
        return text.to_owned();
    }
    // The marker with the largest count it could show (every byte cut).
    let room = max.saturating_sub(marker(text.len()).len());
    if room == 0 {
        let mut used = 0usize;
        return text
            .chars()
            .take_while(|c| {
                used = used.saturating_add(json_len(*c));
                used <= max
            })
            .collect();
    }
    let head_budget = room.div_ceil(2);
    let tail_budget = room - head_budget;
    let mut used = 0usize;
    let mut head_end = 0usize;
    for (i, c) in text.char_indices() {
        used = used.saturating_add(json_len(c));
        if used > head_budget {
            break;
        }
        head_end = i + c.len_utf8();
    }
    let mut used = 0usize;
    let mut tail_start = text.len();
    for (i, c) in text.char_indices().rev() {
        if i < head_end {
            break;
        }
        used = used.saturating_add(json_len(c));
        if used > tail_budget {
            break;
        }
        tail_start = i;
    }
    let (head, rest) = text.split_at(head_end);
    let (middle, tail) = rest.split_at(tail_start - head_end);
    format!("{head}{}{tail}", marker(middle.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_characters_and_invisibles_are_removed() {
        let tricky = "rm -rf ~ #\u{202E}gnp.exe\u{202C} \u{2066}x\u{2069}\u{200B}\u{200D}\u{FEFF}\u{AD}\u{E0041}\u{3164}\u{FE0F}";
        assert_eq!(visible(tricky), "rm -rf ~ #gnp.exe x");
        for c in [
            '\u{202A}', '\u{202B}', '\u{202D}', '\u{2067}', '\u{2068}', '\u{200E}', '\u{200F}',
            '\u{200C}', '\u{2060}', '\u{2064}',
        ] {
            assert_eq!(visible(&format!("a{c}b")), "ab", "U+{:04X}", u32::from(c));
            assert!(!is_visible(&format!("a{c}b")));
        }
        assert!(is_visible("plain text\nwith a tab\tand ünïcödé 日本 🎉"));
    }

    #[test]
    fn controls_are_shown_newlines_and_tabs_kept() {
        assert_eq!(
            visible("a\r\nb\tc\x1b[31md\re\x7f\u{85}f\u{2028}g"),
            "a\nb\tc␛[31md␍e␡\u{FFFD}f\ng"
        );
        assert_eq!(one_line("a\nb\tc\u{202E}"), "a b c");
    }

    #[test]
    fn long_texts_keep_their_head_and_tail() {
        let text = format!("HEAD{}TAIL", "x".repeat(10_000));
        let capped = head_tail(&text, 200);
        assert!(capped.starts_with("HEADxx"), "{capped}");
        assert!(capped.ends_with("xxTAIL"), "{capped}");
        assert!(capped.len() <= 200, "{}", capped.len());
        let (head, rest) = capped.split_once(" … [").unwrap();
        let (count, tail) = rest.split_once(" bytes cut] … ").unwrap();
        let cut: usize = count.parse().unwrap();
        assert_eq!(head.len() + cut + tail.len(), text.len());
        // Short texts pass unchanged; escapes count as JSON bytes.
        assert_eq!(head_tail("short", 200), "short");
        let quotes = "\"".repeat(150);
        let capped = head_tail(&quotes, 200);
        assert!(serde_json::to_string(&capped).unwrap().len() <= 202);
        // Multi-byte characters are never split.
        let wide = "日本語".repeat(1000);
        let capped = head_tail(&wide, 301);
        assert!(capped.starts_with('日') && capped.ends_with('語'));
        assert!(capped.len() <= 301);
        // A budget below the marker's size: the head alone.
        assert_eq!(head_tail("abcdefghijklmnopqrstuvwxyz", 5), "abcde");
    }
    #[test]
    fn every_string_of_a_json_value_is_made_visible() {
        let input = serde_json::json!({
            "command": "ls \u{202e}hs | x",
            "k\u{200b}ey": ["a\u{2066}b", 1, null, {"deep": "\u{1b}[2J"}],
            "n": 3,
        });
        assert_eq!(
            visible_json(input),
            serde_json::json!({
                "command": "ls hs | x",
                "key": ["ab", 1, null, {"deep": "\u{241b}[2J"}],
                "n": 3,
            })
        );
    }

    #[test]
    fn names_show_format_and_control_characters_instead_of_obeying_them() {
        // A right-to-left override: the screen would read "Ana's phone".
        assert_eq!(escaped("\u{202e}enohp s'anA"), "<U+202E>enohp s'anA");
        // Zero-width space, joiner, non-joiner, word joiner, BOM, soft hyphen.
        assert_eq!(
            escaped("A\u{200b}n\u{200d}a\u{200c}\u{2060}\u{feff}\u{ad}"),
            "A<U+200B>n<U+200D>a<U+200C><U+2060><U+FEFF><U+00AD>"
        );
        // Isolates, marks, tag characters (beyond the BMP).
        assert_eq!(escaped("\u{2066}x\u{2069}\u{200f}"), "<U+2066>x<U+2069><U+200F>");
        assert_eq!(escaped("\u{e0041}"), "<U+E0041>");
        // Controls: escape sequences, newlines, the line separator.
        assert_eq!(
            escaped("a\x1b[2Jb\nc\u{2028}d\u{85}"),
            "a<U+001B>[2Jb<U+000A>c<U+2028>d<U+0085>"
        );
        // The other invisible characters (default-ignorable, not Cf): a name
        // that differs from "Ana's phone" only by one must not look the same.
        for c in ['\u{3164}', '\u{115F}', '\u{FFA0}', '\u{FE0F}', '\u{034F}', '\u{E0100}'] {
            let name = format!("Ana's phone{c}");
            assert_eq!(
                escaped(&name),
                format!("Ana's phone<U+{:04X}>", u32::from(c)),
                "U+{:04X}",
                u32::from(c)
            );
        }
        for s in ["Ana's phone", "Pixel 8 — Zoë", "ماريا", "李的手机", "📱 phone", "a b\u{a0}c", ""]
        {
            assert_eq!(escaped(s), s);
        }
    }
}
