//! pylibmc's value flags and zlib compression, shared by the network clients, so values
//! pylibmc wrote read back here and the reverse.
//!
//! pylibmc 1.6 writes: bytes 0, pickle 1, bool 2 (as `1`/`0`, and reads flag 2 back as an
//! int), int 4 (decimal digits, so the server's `incr` works), str 16 (UTF-8), and ORs in
//! zlib 8 when it compressed the bytes.

use std::io::Write as _;

use std::cell::RefCell;

use flate2::write::ZlibEncoder;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::{Error, ErrorKind};

/// Raw bytes.
pub const FLAG_BYTES: u32 = 0;
/// A pickle.
pub const FLAG_PICKLE: u32 = 1;
/// pylibmc's bool (`1`/`0`); python-memcached's and pymemcache's int.
pub const FLAG_INTEGER: u32 = 2;
/// An int as decimal digits.
pub const FLAG_LONG: u32 = 4;
/// The bytes are zlib-compressed (combined with a type flag).
pub const FLAG_ZLIB: u32 = 8;
/// UTF-8 text.
pub const FLAG_TEXT: u32 = 16;
/// The bits that say the type.
pub const TYPE_MASK: u32 = FLAG_PICKLE | FLAG_INTEGER | FLAG_LONG | FLAG_TEXT;

/// A decompressed value may be at most this large (a guard against zlib bombs).
pub const MAX_INFLATED: usize = 1 << 30;

thread_local! {
    /// A deflate state per thread and level, reset between values: setting one up costs more
    /// than compressing a small value.
    static DEFLATE: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    /// The same for inflating.
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Compress `data` at `level` (0-9) into a zlib stream, as pylibmc and Python's `zlib` do.
pub fn compress(data: &[u8], level: u32) -> Vec<u8> {
    let level = level.min(9);
    DEFLATE.with_borrow_mut(|slot| {
        let state = match slot {
            Some((l, state)) if *l == level => {
                state.reset();
                state
            }
            _ => &mut slot.insert((level, Compress::new(Compression::new(level), true))).1,
        };
        // Room for a good ratio; it grows when the data compresses less (a buffer as large as
        // the input would be a fresh mmap for every large value).
        let mut out = Vec::with_capacity(data.len() / 4 + 64);
        loop {
            let consumed = usize::try_from(state.total_in()).unwrap_or(usize::MAX).min(data.len());
            // All the input first, then the end of the stream (a single Finish call over a large
            // input is slower in zlib-rs).
            let flush = if consumed < data.len() { FlushCompress::None } else { FlushCompress::Finish };
            match state.compress_vec(&data[consumed..], &mut out, flush) {
                Ok(Status::StreamEnd) => return out,
                Ok(_) if out.len() == out.capacity() => out.reserve(out.capacity().max(64)),
                Ok(_) => {}
                Err(_) => return deflate_with_encoder(data, level),
            }
        }
    })
}

fn deflate_with_encoder(data: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::with_capacity(data.len() / 2 + 64), Compression::new(level));
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

/// Inflate a zlib stream: the whole of `data` must be one complete stream.
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, Error> {
    let bad =
        |e: &dyn std::fmt::Display| Error::new(ErrorKind::Protocol, format!("cannot decompress a stored value: {e}"));
    INFLATE.with_borrow_mut(|slot| {
        let state = slot.get_or_insert_with(|| Decompress::new(true));
        state.reset(true);
        let mut out = Vec::with_capacity(data.len().saturating_mul(3).clamp(64, 1 << 20));
        loop {
            let consumed = usize::try_from(state.total_in()).unwrap_or(usize::MAX).min(data.len());
            let before = (state.total_in(), state.total_out());
            match state.decompress_vec(&data[consumed..], &mut out, FlushDecompress::None) {
                Ok(Status::StreamEnd) => {
                    return if usize::try_from(state.total_in()).ok() == Some(data.len()) {
                        Ok(out)
                    } else {
                        Err(bad(&"data after the end of the stream"))
                    };
                }
                Ok(_) if out.len() == out.capacity() => {
                    if out.len() >= MAX_INFLATED {
                        return Err(Error::new(ErrorKind::Protocol, "a stored value inflates past 1 GiB"));
                    }
                    out.reserve(out.capacity().min(MAX_INFLATED - out.len()).max(64));
                }
                Ok(_) if (state.total_in(), state.total_out()) != before => {}
                // Room left but no progress: the input ended before the stream did.
                Ok(_) => return Err(bad(&"the stream is cut short")),
                Err(e) => return Err(bad(&e)),
            }
        }
    })
}

/// Compress when `min_len > 0`, the data is at least that long, and compression helps.
pub fn maybe_compress(data: Vec<u8>, flags: u32, min_len: usize, level: u32) -> (Vec<u8>, u32) {
    if min_len == 0 || data.len() < min_len {
        return (data, flags);
    }
    let packed = compress(&data, level);
    if packed.len() < data.len() { (packed, flags | FLAG_ZLIB) } else { (data, flags) }
}

/// Undo [`maybe_compress`]: the bytes and the type flags.
pub fn inflate_if_needed(data: Vec<u8>, flags: u32) -> Result<(Vec<u8>, u32), Error> {
    if flags & FLAG_ZLIB == 0 {
        return Ok((data, flags));
    }
    Ok((decompress(&data)?, flags & !FLAG_ZLIB))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_threshold() {
        let data = b"abc".repeat(1000);
        let (packed, flags) = maybe_compress(data.clone(), FLAG_TEXT, 100, 6);
        assert_eq!(flags, FLAG_TEXT | FLAG_ZLIB);
        assert!(packed.len() < data.len());
        assert_eq!(inflate_if_needed(packed, flags).unwrap(), (data.clone(), FLAG_TEXT));
        assert_eq!(maybe_compress(data.clone(), 0, 0, 6).1, 0, "0 disables compression");
        assert_eq!(maybe_compress(b"short".to_vec(), 0, 100, 6).1, 0);
        // Incompressible data is kept as is.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(maybe_compress(noise.clone(), 0, 10, 9), (noise.clone(), 0));
        // The reused per-thread state: noise (its output outgrows the first buffer), levels
        // switching, and empty input all come back intact.
        for level in [9, 1, 9, 0] {
            assert_eq!(decompress(&compress(&noise, level)).unwrap(), noise, "level {level}");
            assert_eq!(decompress(&compress(&data, level)).unwrap(), data, "level {level}");
            assert_eq!(decompress(&compress(b"", level)).unwrap(), b"");
        }
        // A stream must be whole and alone.
        let mut packed = compress(&noise, 6);
        assert!(decompress(&packed[..packed.len() - 1]).is_err());
        assert!(decompress(&packed[..packed.len() / 2]).is_err());
        packed.push(0);
        assert!(decompress(&packed).is_err());
    }

    #[test]
    fn reads_pythons_zlib() {
        // zlib.compress(b"hello hello hello hello")
        let py = [120, 156, 203, 72, 205, 201, 201, 87, 200, 64, 39, 1, 104, 3, 8, 177];
        assert_eq!(decompress(&py).unwrap(), b"hello hello hello hello");
    }

    #[test]
    fn corrupt_data_is_an_error() {
        assert_eq!(decompress(b"not zlib").unwrap_err().kind(), ErrorKind::Protocol);
    }
}
