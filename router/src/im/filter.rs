//! The content filter: Aho–Corasick over a word list (`backend.filter.words_file`), applied to
//! SEND bodies where messages are stored. `reject` refuses a matching SEND (CONTENT_REJECTED);
//! `mask` replaces every match with `*` bytes of the same length, so the stored, pushed and
//! pulled body is the masked one. Matching is ASCII-case-insensitive and leftmost-longest over
//! the raw body bytes (a UTF-8 word matches only whole, so a masked UTF-8 body stays valid).
//!
//! Owns the compiled automaton; built once from configuration and shared read-only (`Arc`)
//! by every partition. Never touches IO after construction.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// What a match does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAction {
    Reject,
    Mask,
}

/// A compiled word list and its action.
pub struct ContentFilter {
    matcher: AhoCorasick,
    action: FilterAction,
    words: usize,
}

impl std::fmt::Debug for ContentFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentFilter")
            .field("words", &self.words)
            .field("action", &self.action)
            .finish()
    }
}

/// What the filter decided for one body.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No match: store as is.
    Clean,
    /// Refuse the SEND.
    Reject,
    /// Store this body instead.
    Masked(Vec<u8>),
}

impl ContentFilter {
    /// A filter over `text`'s words: one per line, surrounding whitespace trimmed, empty lines
    /// and lines starting with `#` skipped. `Err` names the problem (no words, too large).
    pub fn from_list(text: &str, action: FilterAction) -> Result<Self, String> {
        let words: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|w| !w.is_empty() && !w.starts_with('#'))
            .collect();
        if words.is_empty() {
            return Err("the word list has no words".into());
        }
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(&words)
            .map_err(|e| format!("cannot build the matcher: {e}"))?;
        Ok(Self {
            matcher,
            action,
            words: words.len(),
        })
    }

    pub fn action(&self) -> FilterAction {
        self.action
    }

    /// Number of words in the list.
    pub fn words(&self) -> usize {
        self.words
    }

    /// The verdict on `body`.
    pub fn check(&self, body: &[u8]) -> Verdict {
        let mut matches = self.matcher.find_iter(body).peekable();
        if matches.peek().is_none() {
            return Verdict::Clean;
        }
        match self.action {
            FilterAction::Reject => Verdict::Reject,
            FilterAction::Mask => {
                let mut masked = body.to_vec();
                for m in matches {
                    masked[m.start()..m.end()].fill(b'*');
                }
                Verdict::Masked(masked)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_matches_anywhere_case_insensitively() {
        let f = ContentFilter::from_list("# comment\nspam\n\n  Scam  \n", FilterAction::Reject)
            .unwrap();
        assert_eq!(f.words(), 2);
        assert_eq!(f.check(b"hello"), Verdict::Clean);
        assert_eq!(f.check(b"buy SPAM now"), Verdict::Reject);
        assert_eq!(f.check(b"a scam"), Verdict::Reject);
    }

    #[test]
    fn mask_replaces_every_match_keeping_length_and_utf8() {
        let f = ContentFilter::from_list("bad\nbadder\n坏", FilterAction::Mask).unwrap();
        assert_eq!(
            f.check(b"bad, Badder, ok"),
            Verdict::Masked(b"***, ******, ok".to_vec()),
            "leftmost-longest: `badder` is masked whole"
        );
        let Verdict::Masked(m) = f.check("很坏的".as_bytes()) else {
            panic!("expected a mask");
        };
        assert_eq!(String::from_utf8(m).unwrap(), "很***的");
    }

    #[test]
    fn an_empty_list_is_refused() {
        assert!(ContentFilter::from_list("\n# only a comment\n", FilterAction::Mask).is_err());
    }
}
