//! What bounds one request: the sizes a client may send, each with its own status code when
//! exceeded.

/// Default of [`Limits::max_head_bytes`]: request line plus header fields.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 * 1024;
/// Default of [`Limits::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// Default of [`Limits::max_uri_bytes`].
pub const DEFAULT_MAX_URI_BYTES: usize = 2 * 1024;
/// Default of [`Limits::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Upper bound for [`Limits::max_headers`]: the size of the on-stack `httparse` header array.
pub const MAX_HEADERS_CAP: usize = 128;

/// Size limits for one request; each has its own status code when exceeded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line plus header fields, in bytes (431).
    pub max_head_bytes: usize,
    /// Number of header fields (431), at most [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
    /// Request target, in bytes (414).
    pub max_uri_bytes: usize,
    /// Decoded body, in bytes (413).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}
