//! Signed values: an HMAC-SHA256 tag stored ahead of a value's bytes, so bytes someone else
//! wrote to the cache server are never decoded (never unpickled) as ours.
//!
//! Layout: [`MAGIC`] (5 bytes), the tag (32 bytes), then the bytes as they would be stored
//! unsigned (serialized, then compressed). The tag covers a context (memcached's type flags: a
//! value's bytes with another flag would be read as another type) and the stored bytes, so it is
//! checked before anything is inflated or decoded. No value we write unsigned starts with
//! [`MAGIC`]: a pickle starts with 0x80, digits with a digit or `-`, the compressors' frames with
//! their own magic, and a serializer's output (JSON, msgpack) never with a NUL and then `RCS`.
//!
//! Keys are derived from Django's `SECRET_KEY` (then each of `SECRET_KEY_FALLBACKS`): values are
//! signed with the first and accepted under any of them, so a rotation keeps them readable.

use ring::hmac;

/// What a signed value starts with.
pub const MAGIC: &[u8; 5] = b"\x00RCS1";
/// The tag's length (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
const HEADER: usize = MAGIC.len() + TAG_LEN;
/// What the signing key is derived for (a secret used elsewhere gives other keys here).
const PURPOSE: &[u8] = b"django_rustcache.signed-values.v1";

/// A stored value, opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Signed, and the tag verified: the bytes under it.
    Signed(Vec<u8>),
    /// Not signed (written before signing was on, or by another client): the bytes as they are.
    Unsigned(Vec<u8>),
    /// Signed, but the tag does not verify under any key (tampered, or another secret's).
    Forged,
}

/// Signs with the first key and verifies with every key.
pub struct Signer {
    keys: Vec<hmac::Key>,
}

impl Signer {
    /// A signer for these secrets (the current one first). None without any.
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Option<Self> {
        if secrets.is_empty() {
            return None;
        }
        let keys = secrets
            .iter()
            .map(|secret| {
                let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref()), PURPOSE);
                hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
            })
            .collect();
        Some(Self { keys })
    }

    fn tag(key: &hmac::Key, context: &[u8], data: &[u8]) -> hmac::Tag {
        let mut mac = hmac::Context::with_key(key);
        mac.update(&u32::try_from(context.len()).unwrap_or(u32::MAX).to_be_bytes());
        mac.update(context);
        mac.update(data);
        mac.sign()
    }

    /// `data` signed: the header, then `data`.
    pub fn sign(&self, context: &[u8], data: &[u8]) -> Vec<u8> {
        let tag = Self::tag(&self.keys[0], context, data);
        let mut out = Vec::with_capacity(HEADER + data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(tag.as_ref());
        out.extend_from_slice(data);
        out
    }

    /// Stored bytes opened: the bytes under a tag that verifies, bytes that carry none, or
    /// [`Opened::Forged`].
    pub fn open(&self, context: &[u8], mut data: Vec<u8>) -> Opened {
        if !data.starts_with(MAGIC) {
            return Opened::Unsigned(data);
        }
        if data.len() < HEADER {
            return Opened::Forged;
        }
        let (tag, body) = data[MAGIC.len()..].split_at(TAG_LEN);
        if !self.keys.iter().any(|key| same(Self::tag(key, context, body).as_ref(), tag)) {
            return Opened::Forged;
        }
        data.drain(..HEADER);
        Opened::Signed(data)
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether stored bytes are an int as digits (what redis's INCR and memcached's incr need
/// unsigned, and which decode as nothing but an int).
pub fn is_digits(data: &[u8]) -> bool {
    let trimmed = data.trim_ascii();
    let body = trimmed.strip_prefix(b"-").unwrap_or(trimmed);
    !body.is_empty() && body.len() <= 40 && body.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_value_opens_and_a_changed_one_does_not() {
        let key = Signer::new(&["secret"]).expect("a secret");
        let signed = key.sign(b"\x00\x00\x00\x01", b"payload");
        assert!(signed.starts_with(MAGIC));
        assert_eq!(key.open(b"\x00\x00\x00\x01", signed.clone()), Opened::Signed(b"payload".to_vec()));
        // Any byte changed, in the tag or the body.
        for at in [MAGIC.len(), MAGIC.len() + 31, signed.len() - 1] {
            let mut bad = signed.clone();
            bad[at] ^= 1;
            assert_eq!(key.open(b"\x00\x00\x00\x01", bad), Opened::Forged, "byte {at}");
        }
        // Another context (a memcached value given another type flag).
        assert_eq!(key.open(b"\x00\x00\x00\x00", signed.clone()), Opened::Forged);
        // Cut short.
        assert_eq!(key.open(b"", signed[..HEADER - 1].to_vec()), Opened::Forged);
        assert_eq!(key.open(b"", b"\x80\x05plain".to_vec()), Opened::Unsigned(b"\x80\x05plain".to_vec()));
    }

    #[test]
    fn values_signed_under_an_old_secret_open_after_a_rotation() {
        let old = Signer::new(&["old"]).expect("a secret");
        let rotated = Signer::new(&["new", "old"]).expect("secrets");
        let signed = old.sign(b"", b"v");
        assert_eq!(rotated.open(b"", signed.clone()), Opened::Signed(b"v".to_vec()));
        assert_eq!(Signer::new(&["new"]).expect("a secret").open(b"", signed), Opened::Forged);
        // New values are signed with the first secret.
        assert_eq!(
            Signer::new(&["new"]).expect("a secret").open(b"", rotated.sign(b"", b"w")),
            Opened::Signed(b"w".to_vec())
        );
    }

    #[test]
    fn digits_are_told_from_other_bytes() {
        for (data, expected) in [
            (&b"42"[..], true),
            (b"-7", true),
            (b" 12 ", true),
            (b"", false),
            (b"-", false),
            (b"1.5", false),
            (b"\x80", false),
        ] {
            assert_eq!(is_digits(data), expected, "{data:?}");
        }
    }
}
