//! Memcached's frames as the multiplexed connections cut them: each one parsed by the same
//! pure parsers as the blocking path (lengths bounded), text or binary by its first byte, and
//! the frames of one request handed to the dialect as that connection's replies.

use std::collections::VecDeque;

use super::binary::{self, Op, Packet};
use super::conn::Address;
use super::dialect::Replies;
use super::protocol::{self, Reply};
use crate::error::{Error, ErrorKind};
use crate::net::aio::Wire;

/// One reply frame: a text-protocol reply (with its data block), or a binary packet.
pub enum Frame {
    /// Text protocol.
    Text(Reply),
    /// Binary protocol.
    Binary(Packet),
}

/// Which frames are a request's answer.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// This many frames (one per pipelined store, delete, incr, ...).
    Frames(usize),
    /// This many answers, each ending at its terminator: `END` or an error line (text), the
    /// closing no-op of quiet gets or the empty stat (binary).
    Answers(usize),
}

/// Memcached's replies as the multiplexed connections read them: each frame parsed by the
/// same pure parsers as the blocking path (lengths bounded), text or binary by its first byte.
pub struct MemcachedWire;

/// The first byte of every binary-protocol response.
const BINARY_RESPONSE: u8 = 0x81;

impl Wire for MemcachedWire {
    type Frame = Frame;
    type Expect = Expect;
    type Scan = ();

    fn next_frame((): &mut (), buf: &[u8]) -> Result<Option<(Frame, usize)>, Error> {
        if buf.first() == Some(&BINARY_RESPONSE) {
            Ok(binary::parse(buf)?.map(|(p, used)| (Frame::Binary(p), used)))
        } else {
            Ok(protocol::parse(buf)?.map(|(r, used)| (Frame::Text(r), used)))
        }
    }

    fn is_last(expect: &mut Expect, frame: &Frame) -> bool {
        let ends = match (&*expect, frame) {
            (Expect::Frames(_), _) => true,
            (Expect::Answers(_), Frame::Text(reply)) => matches!(reply, Reply::End | Reply::Error(_)),
            (Expect::Answers(_), Frame::Binary(p)) => {
                p.opcode == Op::Noop as u8 || (p.opcode == Op::Stat as u8 && p.key.is_empty())
            }
        };
        let (Expect::Frames(left) | Expect::Answers(left)) = expect;
        if ends {
            *left = left.saturating_sub(1);
        }
        *left == 0
    }

    fn frame_len(buf: &[u8]) -> Option<usize> {
        if buf.first() == Some(&BINARY_RESPONSE) { binary::frame_len(buf) } else { protocol::value_frame_len(buf) }
    }
}

/// One request's answer cut from bytes that arrive a piece at a time (an event loop's
/// connection): the frames parsed so far are kept, and the bytes they took are not parsed again.
pub struct Answer {
    expect: Expect,
    frames: Vec<Frame>,
    used: usize,
}

impl Answer {
    /// The answer to a request that expects `expect`.
    pub fn new(expect: Expect) -> Self {
        Self { expect, frames: Vec::new(), used: 0 }
    }

    /// Follow `bytes` (everything read since the request, more each time): its frames and the
    /// bytes they took once the answer is whole, `None` until then.
    pub fn cut(&mut self, bytes: &[u8]) -> Result<Option<(Vec<Frame>, usize)>, Error> {
        while let Some((frame, used)) = MemcachedWire::next_frame(&mut (), &bytes[self.used..])? {
            self.used += used;
            let last = MemcachedWire::is_last(&mut self.expect, &frame);
            self.frames.push(frame);
            if last {
                return Ok(Some((std::mem::take(&mut self.frames), self.used)));
            }
        }
        Ok(None)
    }
}

/// The frames one request got, read by the dialect as a connection's replies.
pub struct Frames<'a> {
    frames: VecDeque<Frame>,
    addr: &'a Address,
}

impl<'a> Frames<'a> {
    pub(crate) fn new(frames: Vec<Frame>, addr: &'a Address) -> Self {
        Self { frames: frames.into(), addr }
    }

    fn short(&self) -> Error {
        Error::new(ErrorKind::Protocol, format!("memcached {}: a reply shorter than its request", self.addr))
    }
}

impl Replies for Frames<'_> {
    fn reply(&mut self) -> Result<Reply, Error> {
        match self.frames.pop_front() {
            Some(Frame::Text(r)) => Ok(r),
            Some(Frame::Binary(_)) => Err(Error::new(
                ErrorKind::Protocol,
                format!("memcached {}: a binary reply to a text request", self.addr),
            )),
            None => Err(self.short()),
        }
    }

    fn packet(&mut self) -> Result<Packet, Error> {
        match self.frames.pop_front() {
            Some(Frame::Binary(p)) => Ok(p),
            Some(Frame::Text(_)) => Err(Error::new(
                ErrorKind::Protocol,
                format!("memcached {}: a text reply to a binary request", self.addr),
            )),
            None => Err(self.short()),
        }
    }

    fn addr(&self) -> &Address {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer of a get, read as it arrives a byte at a time: nothing until its `END`, then
    /// its frames and exactly its bytes (the next reply's left alone).
    #[test]
    fn an_answer_cut_from_pieces_is_whole_only_at_its_end() {
        let answer = b"VALUE k 5 3\r\nabc\r\nEND\r\n";
        let mut bytes = answer.to_vec();
        bytes.extend_from_slice(b"VALUE n");
        let mut cut = Answer::new(Expect::Answers(1));
        for n in 0..answer.len() {
            assert!(cut.cut(&bytes[..n]).unwrap().is_none(), "whole after {n} bytes");
        }
        let (frames, used) = cut.cut(&bytes).unwrap().unwrap();
        assert_eq!(used, answer.len());
        let replies: Vec<Reply> = frames
            .into_iter()
            .map(|f| match f {
                Frame::Text(r) => r,
                Frame::Binary(_) => panic!("a binary frame"),
            })
            .collect();
        assert_eq!(
            replies,
            [Reply::Value { key: b"k".to_vec(), flags: 5, data: b"abc".to_vec(), cas: None }, Reply::End]
        );
    }

    /// A miss is its `END` alone; a server error ends the answer too.
    #[test]
    fn a_miss_or_an_error_line_ends_the_answer() {
        for reply in [&b"END\r\n"[..], b"SERVER_ERROR out of memory\r\n"] {
            let (frames, used) = Answer::new(Expect::Answers(1)).cut(reply).unwrap().unwrap();
            assert_eq!((frames.len(), used), (1, reply.len()));
        }
    }
}
