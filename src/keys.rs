//! Django's default cache key (`"{prefix}:{version}:{key}"`) and memcached's key rules, which
//! Django checks on every backend (`memcache_key_warnings`).

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

/// Append Django's default key, `"{prefix}:{version}:{key}"`, to `out`.
pub fn make_default(out: &mut String, prefix: &str, version: &str, key: &str) {
    out.reserve(prefix.len() + version.len() + key.len() + 2);
    out.push_str(prefix);
    out.push(':');
    out.push_str(version);
    out.push(':');
    out.push_str(key);
}

#[cfg(test)]
mod tests {
    use super::*;

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
