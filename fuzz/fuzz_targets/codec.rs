//! The codec on arbitrary bytes: `proto::decode` never panics; decoding a stream in chunks
//! gives the same frames and the same error as decoding it whole; and every frame that
//! decodes survives encode → decode unchanged (byte for byte, except ERROR messages, which
//! the decoder reads leniently).
//!
//! Input: byte 0 picks the largest frame accepted, byte 1 the chunk size; the rest is the
//! stream.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use msgc::proto::{self, Frame, McastHeader, ProtoError};

/// Frame size limits to decode with: below the header, tiny, the smallest configurable,
/// the default.
const MAX_FRAMES: [usize; 4] = [5, 64, proto::MIN_MAX_FRAME, proto::DEFAULT_MAX_FRAME];

/// Decodes `buf` until it needs more bytes or fails; returns the frames with their bytes.
fn decode_all(buf: &mut BytesMut, max_frame: usize, out: &mut Vec<(Frame, Vec<u8>)>) -> Option<ProtoError> {
    loop {
        // The bytes of the frame about to be decoded, kept to compare with its encoding.
        let size = match proto::frame_len(buf, max_frame) {
            Ok(Some(size)) if buf.len() >= size => Some(size),
            _ => None,
        };
        let bytes = size.map(|s| buf[..s].to_vec());
        let before = buf.len();
        match proto::decode(buf, max_frame) {
            Ok(Some(f)) => {
                let bytes = bytes.expect("decode returned a frame that frame_len called incomplete");
                assert_eq!(before - buf.len(), bytes.len(), "decode consumed other than the frame");
                assert!(bytes.len() >= proto::HEADER_LEN, "a frame of only {} bytes", bytes.len());
                out.push((f, bytes));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                assert!(size.is_none(), "a complete frame was not decoded");
                return None;
            }
            Err(e) => return Some(e),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [pick, chunk, stream @ ..] = data else { return };
    let max_frame = MAX_FRAMES[usize::from(*pick) % MAX_FRAMES.len()];
    let chunk = usize::from(*chunk).max(1);

    let mut whole = BytesMut::from(stream);
    let mut frames = Vec::new();
    let error = decode_all(&mut whole, max_frame, &mut frames);

    // The same stream arriving `chunk` bytes at a time, as TCP may deliver it.
    let mut buf = BytesMut::new();
    let mut chunked = Vec::new();
    let mut chunked_error = None;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        chunked_error = decode_all(&mut buf, max_frame, &mut chunked);
        if chunked_error.is_some() {
            break;
        }
    }
    assert_eq!(frames, chunked, "chunked decoding disagrees with whole decoding");
    assert_eq!(error, chunked_error, "chunked decoding fails differently");
    if error.is_none() {
        assert_eq!(whole.len(), buf.len(), "different leftovers");
    }

    for (frame, bytes) in &frames {
        assert!(bytes.len() <= max_frame, "a frame over max_frame decoded");
        assert_eq!(proto::frame_len(bytes, max_frame), Ok(Some(bytes.len())));
        assert_eq!(proto::parse_whole(bytes::Bytes::copy_from_slice(bytes)).as_ref(), Ok(frame));
        if let Frame::Mcast(m) = frame {
            let h = McastHeader::parse(bytes).expect("a decoded MCAST has a valid header");
            assert_eq!((h.sender, h.seq, h.order), (m.sender, m.seq, m.order));
            assert_eq!(h.group(bytes), m.group.as_bytes());
        }

        let encoded = frame.to_bytes();
        let mut again = BytesMut::from(&encoded[..]);
        let decoded = proto::decode(&mut again, proto::MAX_MAX_FRAME)
            .unwrap_or_else(|e| panic!("re-encoded {} does not decode: {e}", frame.name()));
        assert_eq!(decoded.as_ref(), Some(frame), "encode -> decode changed the frame");
        assert!(again.is_empty(), "re-encoded {} has trailing bytes", frame.name());
        match frame {
            // Messages are read leniently (lossy UTF-8, cut to a bounded length), so their
            // bytes may change once; after that they are stable.
            Frame::Error(_) => {
                let twice = decoded.expect("decoded above").to_bytes();
                assert_eq!(twice, encoded, "ERROR is not stable after one round trip");
            }
            _ => assert_eq!(&encoded[..], &bytes[..], "encode(decode(x)) != x for {}", frame.name()),
        }
    }
});
