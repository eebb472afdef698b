//! The compressors django-redis (and django-redis-cache) offer, in the formats they write, so a
//! site keeps its compressed cache when it switches: zlib and gzip streams, xz (Python's
//! `lzma.compress`), LZ4 frames (`lz4.frame`), zstd frames and bzip2 streams.
//!
//! Reading never trusts the setting alone: a value is inflated by the format its first bytes
//! name, and only if the whole stream decodes (checksums included); anything else is returned
//! as it is, the way django-redis falls back to the raw bytes. So values written under an
//! earlier compressor (or none) still read after the setting changes.

use std::io::{Read, Write as _};

use crate::codec::{self, MAX_INFLATED};
use crate::error::{Error, ErrorKind};

/// A compression format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A zlib stream (Python's `zlib.compress`).
    Zlib,
    /// A gzip member (Python's `gzip.compress`).
    Gzip,
    /// An xz stream with a CRC64 check (Python's `lzma.compress`).
    Lzma,
    /// An LZ4 frame with the content size, linked 64 KB blocks and a content checksum
    /// (`lz4.frame.compress` reads it; it writes the same frame without the checksum).
    Lz4,
    /// A zstd frame (`pyzstd.compress`, `zstandard`).
    Zstd,
    /// A bzip2 stream (Python's `bz2.compress`).
    Bzip2,
}

impl Format {
    /// The format named `name` (`zlib`, `gzip`, `lzma`/`xz`, `lz4`, `zstd`, `bz2`/`bzip2`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "zlib" => Self::Zlib,
            "gzip" => Self::Gzip,
            "lzma" | "xz" => Self::Lzma,
            "lz4" => Self::Lz4,
            "zstd" => Self::Zstd,
            "bz2" | "bzip2" => Self::Bzip2,
            _ => return None,
        })
    }

    /// The level the predecessors use when none is given: zlib 6, gzip 9 (Python's default),
    /// xz preset 4 (django-redis), zstd 3, bzip2 9. LZ4 frames have no level here.
    pub fn default_level(self) -> i32 {
        match self {
            Self::Zlib => 6,
            Self::Gzip | Self::Bzip2 => 9,
            Self::Lzma => 4,
            Self::Lz4 => 0,
            Self::Zstd => 3,
        }
    }

    /// The format whose header `data` starts with, if any.
    pub fn sniff(data: &[u8]) -> Option<Self> {
        match data {
            [0x1f, 0x8b, ..] => Some(Self::Gzip),
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Some(Self::Lzma),
            [0x04, 0x22, 0x4d, 0x18, ..] => Some(Self::Lz4),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Self::Zstd),
            [b'B', b'Z', b'h', b'1'..=b'9', ..] => Some(Self::Bzip2),
            // RFC 1950: deflate (method 8), a window of at most 32 KB, and a header check.
            [cmf, flg, ..]
                if cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0 =>
            {
                Some(Self::Zlib)
            }
            _ => None,
        }
    }
}

/// What a backend does to serialized values: compress those longer than `min_length` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compressor {
    pub format: Format,
    pub level: i32,
    pub min_length: usize,
}

fn failed(format: Format, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Protocol, format!("cannot {format:?}-compress a value: {e}"))
}

impl Compressor {
    /// `data` compressed, or `data` itself when it is not longer than `min_length` (as
    /// django-redis decides: `len(value) > min_length`).
    pub fn compress(&self, data: Vec<u8>) -> Result<Vec<u8>, Error> {
        if data.len() <= self.min_length {
            return Ok(data);
        }
        let level = self.level;
        let unsigned = |max: i32| level.clamp(0, max) as u32;
        let out = Vec::with_capacity(data.len() / 2 + 64);
        let format = self.format;
        Ok(match format {
            Format::Zlib => codec::compress(&data, unsigned(9)),
            Format::Gzip => {
                let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::new(unsigned(9)));
                e.write_all(&data).map_err(|e| failed(format, e))?;
                e.finish().map_err(|e| failed(format, e))?
            }
            Format::Lzma => {
                let mut e = liblzma::write::XzEncoder::new(out, unsigned(9));
                e.write_all(&data).map_err(|e| failed(format, e))?;
                e.finish().map_err(|e| failed(format, e))?
            }
            Format::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new()
                    .content_size(Some(data.len() as u64))
                    .block_mode(lz4_flex::frame::BlockMode::Linked)
                    .content_checksum(true);
                let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
                e.write_all(&data).map_err(|e| failed(format, e))?;
                e.finish().map_err(|e| failed(format, e))?
            }
            Format::Zstd => zstd::bulk::compress(&data, level.clamp(1, 22)).map_err(|e| failed(format, e))?,
            Format::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(out, bzip2::Compression::new(unsigned(9).max(1)));
                e.write_all(&data).map_err(|e| failed(format, e))?;
                e.finish().map_err(|e| failed(format, e))?
            }
        })
    }
}

fn read_all(reader: impl Read, hint: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(hint.saturating_mul(3).min(MAX_INFLATED));
    reader.take(MAX_INFLATED as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() <= MAX_INFLATED).then_some(out)
}

/// The content size an LZ4 frame header declares, if it declares one. The decoder stops at the
/// end of the input even when the end mark is missing, so a cut frame is caught by its size.
fn lz4_content_size(frame: &[u8]) -> Option<u64> {
    let flags = *frame.get(4)?;
    if flags & 0x08 == 0 {
        return None;
    }
    Some(u64::from_le_bytes(frame.get(6..14)?.try_into().ok()?))
}

/// `data` inflated, when it is a complete, valid stream of a format it names; else None.
pub fn decompress(data: &[u8]) -> Option<Vec<u8>> {
    match Format::sniff(data)? {
        Format::Zlib => codec::decompress(data).ok(),
        Format::Gzip => read_all(flate2::read::MultiGzDecoder::new(data), data.len()),
        Format::Lzma => read_all(liblzma::read::XzDecoder::new_multi_decoder(data), data.len()),
        Format::Lz4 => read_all(lz4_flex::frame::FrameDecoder::new(data), data.len())
            .filter(|out| lz4_content_size(data).is_none_or(|size| size == out.len() as u64)),
        Format::Zstd => zstd::stream::read::Decoder::with_buffer(data).ok().and_then(|d| read_all(d, data.len())),
        Format::Bzip2 => read_all(bzip2::read::MultiBzDecoder::new(data), data.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Format; 6] = [Format::Zlib, Format::Gzip, Format::Lzma, Format::Lz4, Format::Zstd, Format::Bzip2];

    #[test]
    fn every_format_round_trips_and_is_recognised() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for format in ALL {
            let c = Compressor { format, level: format.default_level(), min_length: 15 };
            let packed = c.compress(data.clone()).unwrap();
            assert!(packed.len() < data.len() / 2, "{format:?} did not compress");
            assert_eq!(Format::sniff(&packed), Some(format));
            assert_eq!(decompress(&packed).unwrap(), data, "{format:?}");
        }
    }

    #[test]
    fn short_values_stay_as_they_are() {
        for format in ALL {
            let c = Compressor { format, level: format.default_level(), min_length: 15 };
            assert_eq!(c.compress(b"exactly 15 byte".to_vec()).unwrap(), b"exactly 15 byte");
            assert_ne!(c.compress(b"sixteen bytes!!!".to_vec()).unwrap(), b"sixteen bytes!!!");
        }
    }

    #[test]
    fn uncompressed_and_damaged_data_is_not_inflated() {
        // A pickle, JSON, digits, and each format with its tail cut off.
        assert_eq!(decompress(b"\x80\x05\x95\x10"), None);
        assert_eq!(decompress(b"{\"a\": 1}"), None);
        assert_eq!(decompress(b"12345"), None);
        let data = vec![7u8; 5000];
        for format in ALL {
            let packed =
                Compressor { format, level: format.default_level(), min_length: 0 }.compress(data.clone()).unwrap();
            for cut in [1, 3, 12] {
                assert!(decompress(&packed[..packed.len() - cut]).is_none(), "{format:?} cut by {cut}");
            }
        }
    }

    #[test]
    fn reads_what_python_writes() {
        // zlib.compress(b"hello hello hello hello") and gzip.compress(..., mtime=0), from CPython 3.11.
        let zlib = b"x\x9c\xcbH\xcd\xc9\xc9W\xc8@\x27\x01h\x03\x08\xb1";
        assert_eq!(decompress(zlib).unwrap(), b"hello hello hello hello");
        let gzip = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\xcbH\xcd\xc9\xc9W\xc8@\x27\x01\xe3Q=\x8d\x17\x00\x00\x00";
        assert_eq!(decompress(gzip).unwrap(), b"hello hello hello hello");
    }
}
