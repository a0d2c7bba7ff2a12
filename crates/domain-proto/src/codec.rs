//! The protobuf codec of every generated service: prost encoding, but a body
//! that does not decode is the peer's fault, so the server answers
//! INVALID_ARGUMENT (code `MALFORMED_PROTOBUF`) instead of prost's INTERNAL.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Metadata value of `domain-error-code` for undecodable request bodies.
pub const MALFORMED_PROTOBUF: &str = "MALFORMED_PROTOBUF";

#[derive(Debug, Clone)]
pub struct DomainCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for DomainCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for DomainCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = DomainDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        DomainDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::default()))
    }
}

/// Wraps prost's decoder and remaps its decode failures.
#[derive(Debug)]
pub struct DomainDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for DomainDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            if status.code() == Code::Internal {
                crate::error::status(
                    Code::InvalidArgument,
                    MALFORMED_PROTOBUF,
                    format!("malformed protobuf body: {}", status.message()),
                )
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
