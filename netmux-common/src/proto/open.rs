//! The open handshake of one proxied TCP stream, sans IO.
//!
//! The same rules hold in both directions: L2C streams are asked for by the
//! daemon and answered by the server, C2L streams the other way round.
//!
//! 1. The asking side writes a [`StreamHeader`] first and, in the same
//!    write, whatever its TCP client has already sent ([`write_header`]):
//!    the open costs no round trip.
//! 2. The answering side reads the header before anything else
//!    ([`HeaderReader`]); a header longer than [`MAX_HEADER_LEN`] or one
//!    that does not decode is a protocol violation. Bytes behind it are the
//!    client's and wait until the target is connected ([`Request::pending`]).
//! 3. The answering side writes exactly one [`OpenResult`] before any byte
//!    of its target ([`Request::answer`]).
//! 4. Unless the result is [`OpenResult::Connected`], the answering side
//!    then finishes its send side and stops its receive side
//!    (`STOP_SENDING` with [`error_code::NO_ERROR`]): no byte flows either
//!    way ([`Then::Close`]).
//! 5. The asking side reads the result before any far-end byte reaches its
//!    TCP client ([`ResultReader`]); anything but `Connected` means the
//!    client is reset.
//!
//! The async drivers (`tunnel::stream`) only move these bytes.

use std::fmt;

use bytes::{Bytes, BytesMut};

use super::codec::DecodeError;
use super::error_code;
use super::stream::{OpenResult, StreamHeader, MAX_HEADER_LEN};

/// Rule 1: the header, then the client's first bytes, as one write.
pub fn write_header(header: &StreamHeader, out: &mut BytesMut) {
    header.encode(out);
}

/// Why the answering side drops a stream without an answer (rule 2). The
/// stream is reset with [`error_code::PROTOCOL_VIOLATION`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The header does not decode, or is longer than [`MAX_HEADER_LEN`].
    Bad,
    /// The stream ended (or was reset) before a whole header arrived.
    Ended,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderError::Bad => "bad stream header",
            HeaderError::Ended => "stream ended before its header",
        })
    }
}

impl std::error::Error for HeaderError {}

/// Rule 2: collects the bytes that open a stream until a header decodes.
#[derive(Debug, Default)]
pub struct HeaderReader {
    buf: BytesMut,
}

impl HeaderReader {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the stream; `Ok(Some(_))` once the header is
    /// whole (bytes behind it go to [`Request::pending`]), `Ok(None)` while
    /// more are needed.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Request>, HeaderError> {
        self.buf.extend_from_slice(bytes);
        match StreamHeader::decode(&self.buf) {
            Ok((header, used)) => Ok(Some(Request {
                header,
                pending: self.buf.split_off(used).freeze(),
            })),
            Err(DecodeError::UnexpectedEnd) if self.buf.len() < MAX_HEADER_LEN => Ok(None),
            Err(_) => Err(HeaderError::Bad),
        }
    }

    /// The stream ended before a whole header.
    pub fn end(&self) -> HeaderError {
        HeaderError::Ended
    }
}

/// A stream whose header has arrived, waiting for the dial's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What the asking side wants connected.
    pub header: StreamHeader,
    /// Client bytes that came behind the header; they go to the target
    /// first, once connected.
    pub pending: Bytes,
}

impl Request {
    /// Rules 3 and 4: what to write and what to do after.
    pub fn answer(&self, result: OpenResult) -> Answer {
        let mut bytes = BytesMut::with_capacity(OpenResult::LEN);
        result.encode(&mut bytes);
        Answer {
            result,
            bytes: bytes.freeze(),
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The result given.
    pub result: OpenResult,
    /// Its wire form: written before any byte of the target.
    pub bytes: Bytes,
}

/// What the answering side does once its answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Bridge the stream and the target: bytes flow both ways.
    Bridge,
    /// Finish the send side and stop the receive side with `code`: the
    /// stream carries nothing more.
    Close {
        /// The `STOP_SENDING` code.
        code: u32,
    },
}

impl Answer {
    /// Rule 4.
    pub fn then(&self) -> Then {
        if self.result == OpenResult::Connected {
            Then::Bridge
        } else {
            Then::Close {
                code: error_code::NO_ERROR,
            }
        }
    }
}

/// Why the asking side resets its TCP client (rule 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The far end answered with this result.
    Answered(OpenResult),
    /// The result did not decode.
    BadResult(DecodeError),
    /// The stream ended before a result.
    Ended,
}

impl Refusal {
    /// Bounded metric label: the result's label, or `protocol_error`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Answered(r) => r.label(),
            _ => "protocol_error",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Answered(r) => f.write_str(r.label()),
            Refusal::BadResult(e) => write!(f, "bad open result: {e}"),
            Refusal::Ended => f.write_str("stream ended before the open result"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Rule 5: collects the far end's bytes until its result is known.
#[derive(Debug, Default)]
pub struct ResultReader {
    buf: BytesMut,
}

impl ResultReader {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the stream: `Ok(Some(rest))` when connected
    /// (`rest`: target bytes that came behind the result), `Ok(None)` while
    /// more are needed, `Err` when the client must be reset.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Bytes>, Refusal> {
        self.buf.extend_from_slice(bytes);
        match OpenResult::decode(&self.buf) {
            Ok((OpenResult::Connected, used)) => Ok(Some(self.buf.split_off(used).freeze())),
            Ok((other, _)) => Err(Refusal::Answered(other)),
            Err(DecodeError::UnexpectedEnd) => Ok(None),
            Err(e) => Err(Refusal::BadResult(e)),
        }
    }

    /// The stream ended before a result.
    pub fn end(&self) -> Refusal {
        Refusal::Ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::catalog::ServiceId;

    fn connect() -> StreamHeader {
        StreamHeader::Connect {
            service: ServiceId(7),
            port: 443,
        }
    }

    /// Runs both sides over in-memory bytes cut into `cut`-byte reads; as
    /// the drivers do, reads after the one that completes the header (or
    /// the result) are appended to what came behind it.
    fn exchange(
        result: OpenResult,
        first: &[u8],
        cut: usize,
    ) -> (Request, Answer, Result<Bytes, Refusal>) {
        let mut wire = BytesMut::new();
        write_header(&connect(), &mut wire);
        wire.extend_from_slice(first);
        let mut reader = HeaderReader::new();
        let mut chunks = wire.chunks(cut);
        let mut request = loop {
            let chunk = chunks.next().expect("a whole header before the end");
            if let Some(r) = reader.feed(chunk).expect("good header") {
                break r;
            }
        };
        let mut pending = BytesMut::from(&request.pending[..]);
        chunks.for_each(|c| pending.extend_from_slice(c));
        request.pending = pending.freeze();

        let answer = request.answer(result);
        let mut back = BytesMut::from(&answer.bytes[..]);
        if answer.then() == Then::Bridge {
            back.extend_from_slice(b"target bytes");
        }
        let mut results = ResultReader::new();
        let mut chunks = back.chunks(cut);
        let asked = loop {
            let Some(chunk) = chunks.next() else {
                break Err(results.end());
            };
            match results.feed(chunk) {
                Ok(None) => {}
                Ok(Some(rest)) => {
                    let mut all = BytesMut::from(&rest[..]);
                    chunks.by_ref().for_each(|c| all.extend_from_slice(c));
                    break Ok(all.freeze());
                }
                Err(r) => break Err(r),
            }
        };
        (request, answer, asked)
    }

    #[test]
    fn connected_carries_the_first_bytes_both_ways() {
        for cut in [1, 3, 64] {
            let (request, answer, asked) = exchange(OpenResult::Connected, b"GET / HTTP/1.1", cut);
            assert_eq!(request.header, connect());
            assert_eq!(
                request.pending,
                Bytes::from_static(b"GET / HTTP/1.1"),
                "cut {cut}"
            );
            assert_eq!(answer.then(), Then::Bridge);
            assert_eq!(asked, Ok(Bytes::from_static(b"target bytes")), "cut {cut}");
        }
    }

    #[test]
    fn every_refusal_closes_the_stream_and_resets_the_client() {
        for result in OpenResult::ALL
            .into_iter()
            .filter(|r| *r != OpenResult::Connected)
        {
            let (_, answer, asked) = exchange(result, b"", 1);
            assert_eq!(
                answer.then(),
                Then::Close {
                    code: error_code::NO_ERROR
                },
                "{result}"
            );
            assert_eq!(answer.bytes.len(), OpenResult::LEN);
            let refusal = asked.expect_err("refused");
            assert_eq!(refusal, Refusal::Answered(result));
            assert_eq!(refusal.to_string(), result.label());
            assert_eq!(refusal.label(), result.label());
        }
    }

    #[test]
    fn a_header_that_cannot_decode_is_bad_and_an_early_end_is_ended() {
        // Unknown kind, port 0, unknown address family.
        for bad in [
            &[99u8][..],
            &[1, 0, 0, 0, 1, 0, 0],
            &[2, 0, 0, 0, 1, 0, 80, 5],
        ] {
            assert_eq!(
                HeaderReader::new().feed(bad),
                Err(HeaderError::Bad),
                "{bad:?}"
            );
        }
        // A reverse header arriving byte by byte is incomplete, not bad.
        let mut r = HeaderReader::new();
        for b in [2, 0, 0, 0, 1, 0, 80, 4, 10, 0, 0] {
            assert_eq!(r.feed(&[b]), Ok(None));
        }
        assert_eq!(r.end(), HeaderError::Ended);
        assert_eq!(r.end().to_string(), "stream ended before its header");
        assert_eq!(HeaderError::Bad.to_string(), "bad stream header");
        let request = r.feed(&[1, 0x9c, 0x40]).expect("whole").expect("header");
        assert!(matches!(
            request.header,
            StreamHeader::Reverse { port: 80, .. }
        ));
        assert!(request.pending.is_empty());
    }

    #[test]
    fn a_result_that_does_not_decode_or_never_comes_is_a_refusal() {
        let mut r = ResultReader::new();
        assert_eq!(r.feed(&[]), Ok(None));
        let bad = r.feed(&[200]).expect_err("bad code");
        assert!(matches!(bad, Refusal::BadResult(_)));
        assert!(bad.to_string().starts_with("bad open result: "), "{bad}");
        assert_eq!(bad.label(), "protocol_error");
        let r = ResultReader::new();
        assert_eq!(r.end().to_string(), "stream ended before the open result");
        assert_eq!(r.end().label(), "protocol_error");
    }
}
