//! What goes wrong with a request, and the status each answer gets.

use super::Status;

/// A request that cannot be served. Every variant closes the connection after its response,
/// because the framing of whatever follows can no longer be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request header section too large")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("request target too long")]
    UriTooLong,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("unsupported expectation")]
    ExpectationFailed,
}

impl HttpError {
    pub fn status(self) -> Status {
        match self {
            HttpError::BadRequest(_) => Status::BadRequest,
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => {
                Status::RequestHeaderFieldsTooLarge
            }
            HttpError::UriTooLong => Status::UriTooLong,
            HttpError::BodyTooLarge => Status::ContentTooLarge,
            HttpError::NotImplemented(_) => Status::NotImplemented,
            HttpError::ExpectationFailed => Status::ExpectationFailed,
        }
    }
}
