//! Text from outside Ferry (deploy messages, versions, reasons, probe
//! details, program output, audit actors) shown on a terminal: control
//! characters are escaped so that no input can clear the screen, retitle the
//! window, move the cursor or hide text with bidirectional overrides.

use std::borrow::Cow;

/// Characters that would act on a terminal instead of being shown:
/// C0 controls other than newline and tab, DEL, C1 controls (`\u{9b}` is a
/// one-byte CSI on some terminals), and Unicode's bidirectional overrides
/// and isolates.
fn acts_on_terminal(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every such character written as an escape (`\x1b`,
/// `\u{202e}`); text without any is returned as is, unallocated.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts_on_terminal) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !acts_on_terminal(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escapes_reach_the_terminal_only_as_text() {
        let hostile = "deploy \u{1b}[2J\u{1b}]0;pwned\u{7}done\r\u{9b}31m \u{202e}txt.exe";
        let shown = printable(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert_eq!(
            shown,
            "deploy \\x1b[2J\\x1b]0;pwned\\x07done\\x0d\\u{9b}31m \\u{202e}txt.exe"
        );
        // Ordinary text, newlines and tabs pass unchanged and unallocated.
        assert!(matches!(
            printable("v1 — ok\n\tnext"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
