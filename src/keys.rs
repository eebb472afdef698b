//! Django's default cache key (`"{prefix}:{version}:{key}"`) and memcached's key rules, which
//! Django checks on every backend (`memcache_key_warnings`).

use std::fmt::Write as _;

/// Memcached refuses keys longer than this many characters (Django counts characters).
pub const MEMCACHE_MAX_KEY_LENGTH: usize = 250;

/// What is wrong with a key, by memcached's rules. Both can be true at once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeyProblems {
    /// More than [`MEMCACHE_MAX_KEY_LENGTH`] characters.
    pub too_long: bool,
    /// A control character, a space or DEL (`[\x00-\x20\x7f]`).
    pub bad_chars: bool,
}

impl KeyProblems {
    /// Whether the key is acceptable to memcached.
    pub fn is_ok(self) -> bool {
        !self.too_long && !self.bad_chars
    }
}

/// Check `key` by memcached's rules, the way Django's `memcache_key_warnings` does.
pub fn check(key: &str) -> KeyProblems {
    let bytes = key.as_bytes();
    // Non-ASCII bytes are all >= 0x80, so the forbidden set can be tested byte by byte.
    let bad_chars = bytes.iter().any(|&b| b <= 0x20 || b == 0x7f);
    // Fewer bytes than the limit means fewer characters too; only longer keys are counted.
    let too_long = bytes.len() > MEMCACHE_MAX_KEY_LENGTH && key.chars().count() > MEMCACHE_MAX_KEY_LENGTH;
    KeyProblems { too_long, bad_chars }
}

/// The most bytes a key may have on memcached's wire (both protocols).
pub const MEMCACHED_MAX_KEY_BYTES: usize = 250;

/// Whether a key's bytes may go on memcached's wire: at most [`MEMCACHED_MAX_KEY_BYTES`], none a
/// control character, a space or DEL (in the text protocol they would split or end the command
/// line; the binary protocol keeps the same rule so both refuse the same keys). The text protocol
/// also refuses an empty key (`allow_empty`: the binary one carries it).
pub fn wire_ok(key: &[u8], allow_empty: bool) -> bool {
    (allow_empty || !key.is_empty())
        && key.len() <= MEMCACHED_MAX_KEY_BYTES
        && !key.iter().any(|&b| b <= 0x20 || b == 0x7f)
}

/// The stable form a key memcached would refuse takes with `KEY_HASHING`: its first 150 bytes
/// (cut at a character boundary) with spaces and control characters made `_`, then `#` and the
/// SHA-256 of the whole key in hex: at most 215 bytes, readable where the key was, and two keys
/// differing anywhere get different forms.
pub fn digest_form(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut cut = key.len().min(150);
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    let head: String = key[..cut].chars().map(|c| if c <= ' ' || c == '\u{7f}' { '_' } else { c }).collect();
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(head.len() + 65);
    out.push_str(&head);
    out.push('#');
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Append Django's default key, `"{prefix}:{version}:{key}"`, to `out`.
pub fn make_default(out: &mut String, prefix: &str, version: &str, key: &str) {
    out.reserve(prefix.len() + version.len() + key.len() + 2);
    out.push_str(prefix);
    out.push(':');
    out.push_str(version);
    out.push(':');
    out.push_str(key);
}

/// Whether `text` matches a glob `pattern` as redis's MATCH reads one: `*` any run, `?` any
/// one character, `[abc]`, `[a-z]` and `[^a]` a class, `\\` escaping the next character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the text it has taken.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => class_match(&p, pi + 1, t[ti]),
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        if let Some(next) = step {
            pi = next;
            ti += 1;
        } else if let Some((after, taken)) = star {
            pi = after;
            ti = taken + 1;
            star = Some((after, taken + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `c` is in the class that starts at `p[at]` (after its `[`); where the pattern goes on.
fn class_match(p: &[char], mut at: usize, c: char) -> Option<usize> {
    let negated = p.get(at) == Some(&'^');
    if negated {
        at += 1;
    }
    let mut found = false;
    let mut first = true;
    loop {
        match p.get(at) {
            None => return None, // an unclosed class matches nothing
            Some(']') if !first => break,
            Some('\\') if at + 1 < p.len() => {
                found |= p[at + 1] == c;
                at += 2;
            }
            Some(&lo) if p.get(at + 1) == Some(&'-') && p.get(at + 2).is_some_and(|&hi| hi != ']') => {
                let hi = p[at + 2];
                found |= (lo.min(hi)..=lo.max(hi)).contains(&c);
                at += 3;
            }
            Some(&x) => {
                found |= x == c;
                at += 1;
            }
        }
        first = false;
    }
    (found != negated).then_some(at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_forms_are_stable_short_and_valid_on_the_wire() {
        let long = "k".repeat(400);
        let spaced = "user name\twith\r\nbreaks";
        let unicode = "é".repeat(200);
        for key in [long.as_str(), spaced, unicode.as_str()] {
            let form = digest_form(key);
            assert!(wire_ok(form.as_bytes(), false), "{form}");
            assert!(form.len() <= 215);
            assert_eq!(form, digest_form(key));
        }
        assert_eq!(&digest_form(spaced)[..23], "user_name_with__breaks#");
        assert_ne!(digest_form("a b"), digest_form("a_b"));
        assert_ne!(digest_form(&long), digest_form(&"k".repeat(401)));
    }

    #[test]
    fn glob_matches_as_redis_match_does() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("*", "anything", true),
            (":1:user*", ":1:user:42", true),
            (":1:user*", ":2:user:42", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h*llo", "hello!", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxbxxa", false),
            ("[", "[", false),
            ("clé*", "clé:1", true),
        ] {
            assert_eq!(glob_match(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn default_key_format() {
        let mut s = String::new();
        make_default(&mut s, "", "1", "answer");
        assert_eq!(s, ":1:answer");
        let mut s = String::new();
        make_default(&mut s, "site", "22", "a:b");
        assert_eq!(s, "site:22:a:b");
    }

    #[test]
    fn memcacheds_wire_rule() {
        assert!(wire_ok(b"a:1:key", false));
        assert!(wire_ok(&[b'a'; 250], false));
        assert!(!wire_ok(&[b'a'; 251], true));
        assert!(!wire_ok(b"a b", true));
        assert!(!wire_ok(b"a\r\nflush_all", true));
        assert!(!wire_ok(b"\x7f", true));
        assert!(!wire_ok(b"", false));
        assert!(wire_ok(b"", true));
        assert!(wire_ok("清".as_bytes(), false));
    }

    #[test]
    fn plain_keys_pass() {
        assert!(check(":1:hello-world_ok").is_ok());
        assert!(check("清水").is_ok());
        assert!(check(&"a".repeat(250)).is_ok());
    }

    #[test]
    fn control_characters_and_spaces_fail() {
        for key in ["a b", "a\r\nflush_all", "tab\t", "nul\0", "del\x7f", " "] {
            let p = check(key);
            assert!(p.bad_chars, "{key:?}");
            assert!(!p.too_long);
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // 250 three-byte characters: 750 bytes but within the limit, as Django counts.
        assert!(check(&"清".repeat(250)).is_ok());
        let p = check(&("a".repeat(250) + "清"));
        assert!(p.too_long);
        assert!(!p.bad_chars);
    }
}
