//! Cleaning of untrusted text before it reaches a template or a header.
//!
//! Event fields such as the display name, merchant and description come from
//! producers and are treated as hostile. [`clean_line`] turns such a value into
//! one line of plain text of bounded length. HTML escaping is left to the
//! template engine, and header encoding to lettre.

/// Ellipsis appended to a value that was shortened.
pub(crate) const ELLIPSIS: char = '…';

/// Returns `true` for Unicode bidirectional formatting characters (Unicode
/// Standard Annex 9), which can make text display in a different order than
/// it is stored and so disguise the content of a subject or name.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Returns `true` for invisible characters that have no place in a name or a
/// subject: zero-width spaces and joiners and the byte order mark.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// Returns `true` for characters that break a line: C0 and C1 control
/// characters (CR, LF, TAB among them), DEL, and the Unicode line and
/// paragraph separators.
fn is_line_breaking(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Converts untrusted text into a single line of at most `max_chars`
/// characters.
///
/// Control characters and line separators become spaces, bidirectional
/// formatting and zero-width characters are removed, runs of whitespace
/// collapse into one space, and the result is trimmed. A longer result is cut
/// at a character boundary and ends with an ellipsis, which counts towards
/// `max_chars`.
pub(crate) fn clean_line(input: &str, max_chars: usize) -> String {
    let mut cleaned = String::with_capacity(input.len().min(max_chars * 4));
    let mut cleaned_chars = 0;
    let mut pending_space = false;

    for c in input.chars() {
        // One character past the limit is enough to know the text gets cut.
        if cleaned_chars > max_chars {
            break;
        }
        if is_bidi_control(c) || is_invisible(c) {
            continue;
        }
        if is_line_breaking(c) || c.is_whitespace() {
            pending_space = cleaned_chars > 0;
            continue;
        }
        if pending_space {
            cleaned.push(' ');
            cleaned_chars += 1;
            pending_space = false;
        }
        cleaned.push(c);
        cleaned_chars += 1;
    }

    truncate_chars(&cleaned, max_chars)
}

/// Shortens `text` to at most `max_chars` characters, ending a shortened text
/// with an ellipsis.
pub(crate) fn truncate_chars(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    if max_chars == 0 {
        return String::new();
    }

    let prefix: String = text.chars().take(max_chars - 1).collect();
    let mut shortened = prefix.trim_end().to_owned();
    shortened.push(ELLIPSIS);
    shortened
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_line_cases() {
        let cases: &[(&str, usize, &str)] = &[
            ("Alice", 40, "Alice"),
            ("  Alice   Smith ", 40, "Alice Smith"),
            ("Eve\r\nBcc: evil@x", 40, "Eve Bcc: evil@x"),
            ("tab\there", 40, "tab here"),
            ("nul\u{0}byte", 40, "nul byte"),
            ("del\u{7f}char", 40, "del char"),
            ("c1\u{85}next-line", 40, "c1 next-line"),
            ("line\u{2028}sep", 40, "line sep"),
            ("\u{202E}gnp.exe\u{202C}", 40, "gnp.exe"),
            ("a\u{2066}b\u{2069}c\u{200F}d", 40, "abcd"),
            ("zero\u{200B}width\u{FEFF}", 40, "zerowidth"),
            ("abcdefghij", 10, "abcdefghij"),
            ("abcdefghijk", 10, "abcdefghi…"),
            ("abcd efghijk", 6, "abcd…"),
            ("ÄÖÜäöüßÄÖÜ", 5, "ÄÖÜä…"),
            ("anything", 0, ""),
            ("", 10, ""),
            ("\r\n\t", 10, ""),
        ];

        for (input, max, expected) in cases {
            assert_eq!(
                clean_line(input, *max),
                *expected,
                "clean_line({input:?}, {max})"
            );
        }
    }

    #[test]
    fn clean_line_bounds_very_long_input() {
        let input = "x".repeat(1_000_000);

        let cleaned = clean_line(&input, 64);

        assert_eq!(cleaned.chars().count(), 64);
        assert!(cleaned.ends_with(ELLIPSIS));
    }
}
