//! The protobuf codec of quotad's own services (server and client sides alike): prost's
//! encoder as tonic-prost ships it, and a decoder that reads each message from the one
//! contiguous slice tonic has buffered it in.
//!
//! Why not tonic-prost's decoder: it hands prost tonic's `DecodeBuf`, so every varint byte
//! and every field advances a `BytesMut`. Decoding the same bytes as a `&[u8]` cost about
//! a third fewer instructions per Admit (callgrind, BENCHMARKS.md, issue 19), and every
//! usage report of a stream is decoded the same way. The wire format, the errors (a
//! malformed message is INTERNAL, as tonic-prost answers) and the message size limits
//! (tonic's, applied before decoding) are unchanged.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// `tonic::codec::Codec` for quotad's generated services (`build.rs` names it).
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Decodes a message from the buffered bytes as one slice.
#[derive(Debug, Clone, Copy)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        let decoded = match buf.chunk().get(..len) {
            Some(bytes) => {
                let m = decode_slice(bytes);
                buf.advance(len);
                m
            }
            // tonic buffers a message contiguously; should that change, decode as before.
            None => U::decode(&mut *buf).map_err(malformed),
        };
        decoded.map(Some)
    }
}

/// One message from its bytes.
fn decode_slice<U: Message + Default>(bytes: &[u8]) -> Result<U, Status> {
    U::decode(bytes).map_err(malformed)
}

/// A message that does not parse, as tonic-prost answers it.
fn malformed(e: prost::DecodeError) -> Status {
    Status::internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn decodes_what_prost_encodes_and_refuses_a_truncated_message() {
        let req = pb::AdmitRequest {
            account_id: "acct".into(),
            resource: i32::from(pb::Resource::GpuShared),
            sku: "gpu.shared.a10".into(),
            quantity: 1000,
        };
        let bytes = req.encode_to_vec();
        assert_eq!(decode_slice::<pb::AdmitRequest>(&bytes).unwrap(), req);
        let cut = &bytes[..bytes.len() - 1];
        let bad = decode_slice::<pb::AdmitRequest>(cut).unwrap_err();
        assert_eq!(bad.code(), tonic::Code::Internal);
        assert_eq!(
            decode_slice::<pb::AdmitRequest>(&[]).unwrap(),
            pb::AdmitRequest::default()
        );
    }
}
