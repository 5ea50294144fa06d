//! Splitting and quoting the words of an `iptables-save` / `iptables-restore` line.
//!
//! `iptables-save` wraps words that hold anything but letters, digits, `_` and `-` in double
//! quotes only when needed (comments, mostly) and escapes `"`, `\` and `'` with a backslash;
//! `iptables-restore` reads the same syntax back.

use std::borrow::Cow;

/// Splits one line into words, removing the quoting. `None` if a quote is left open or the line
/// ends in a lone backslash.
pub(crate) fn split(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(words);
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' => quoted = !quoted,
                '\\' => word.push(chars.next()?),
                c if c.is_whitespace() && !quoted => break,
                c => word.push(c),
            }
        }
        if quoted {
            return None;
        }
        words.push(word);
    }
}

/// Joins words into one line, quoting those that need it.
pub(crate) fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &str) -> Cow<'_, str> {
    let special = |c: char| c.is_whitespace() || matches!(c, '"' | '\\' | '\'');
    if !word.is_empty() && !word.chars().any(special) {
        return Cow::Borrowed(word);
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('"');
    for c in word.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Cow::Owned(quoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quoted_comments() {
        let words = split(r#"-A X -m comment --comment "flanneld masq" -j RETURN"#).unwrap();
        assert_eq!(
            words,
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "RETURN"
            ]
        );
    }

    #[test]
    fn splits_escapes_and_extra_spaces() {
        let words = split(r#"  a  "say \"hi\"" b\'c "" "#).unwrap();
        assert_eq!(words, ["a", r#"say "hi""#, "b'c", ""]);
    }

    #[test]
    fn rejects_open_quotes() {
        assert_eq!(split(r#"-A X --comment "open"#), None);
        assert_eq!(split(r"-A X \"), None);
    }

    #[test]
    fn join_quotes_only_when_needed_and_round_trips() {
        let words = [
            "-s",
            "10.1.0.0/16",
            "--comment",
            "flanneld masq",
            r#"a"b"#,
            "",
        ];
        let line = join(&words);
        assert_eq!(
            line,
            r#"-s 10.1.0.0/16 --comment "flanneld masq" "a\"b" """#
        );
        assert_eq!(split(&line).unwrap(), words);
    }
}
