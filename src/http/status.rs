//! The status codes tally sends, described once: code, reason phrase (RFC 9110 §15) and the
//! position a per-status metric uses. The response writer and the metrics both read this table,
//! so a new status cannot be written without also being counted.

/// Generates [`Status`] and its lookups from one list, so code, reason and index cannot drift.
macro_rules! status_table {
    ($($(#[$doc:meta])* $variant:ident = $code:literal $reason:literal,)+) => {
        /// A status code tally sends.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Status {
            $($(#[$doc])* $variant,)+
        }

        impl Status {
            /// Every status, in table order (`ALL[s.index()] == s`).
            pub const ALL: [Status; Status::COUNT] = [$(Status::$variant,)+];
            /// Number of statuses: the length of a per-status metrics array.
            pub const COUNT: usize = [$($code,)+].len();

            /// The numeric code, e.g. 200.
            pub const fn code(self) -> u16 {
                match self {
                    $(Status::$variant => $code,)+
                }
            }

            /// The code and its reason phrase, as in a status line: "200 OK".
            pub const fn line(self) -> &'static str {
                match self {
                    $(Status::$variant => concat!(stringify!($code), " ", $reason),)+
                }
            }

            /// Position in [`Status::ALL`], for arrays indexed by status.
            pub const fn index(self) -> usize {
                // Variants carry no explicit discriminant, so it is the declaration order,
                // which is the order of `ALL`.
                self as usize
            }

            pub fn from_code(code: u16) -> Option<Status> {
                match code {
                    $($code => Some(Status::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

status_table! {
    /// Interim answer to `Expect: 100-continue` (RFC 9110 §10.1.1).
    Continue = 100 "Continue",
    Ok = 200 "OK",
    BadRequest = 400 "Bad Request",
    NotFound = 404 "Not Found",
    MethodNotAllowed = 405 "Method Not Allowed",
    RequestTimeout = 408 "Request Timeout",
    ContentTooLarge = 413 "Content Too Large",
    UriTooLong = 414 "URI Too Long",
    ExpectationFailed = 417 "Expectation Failed",
    UnprocessableContent = 422 "Unprocessable Content",
    /// RFC 6585 §5.
    RequestHeaderFieldsTooLarge = 431 "Request Header Fields Too Large",
    InternalServerError = 500 "Internal Server Error",
    NotImplemented = 501 "Not Implemented",
    ServiceUnavailable = 503 "Service Unavailable",
    /// A reload was started (`POST /admin/kv/reload`); its outcome comes later.
    Accepted = 202 "Accepted",
    /// No or wrong credentials; the response challenges with `WWW-Authenticate`.
    Unauthorized = 401 "Unauthorized",
    /// The request cannot be done in the server's current state (nothing to reload).
    Conflict = 409 "Conflict",
    /// RFC 4918 §11.5: creating a named counter past `--max-counters`.
    InsufficientStorage = 507 "Insufficient Storage",
}

/// Prints the numeric code (as a metric label wants it), not the reason phrase.
impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.code(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::Status;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique() {
        let codes: HashSet<u16> = Status::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes.len(), Status::COUNT);
    }

    #[test]
    fn from_code_inverts_code() {
        for s in Status::ALL {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        assert_eq!(Status::from_code(299), None);
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }

    #[test]
    fn line_starts_with_the_code_and_a_space() {
        for s in Status::ALL {
            let line = s.line();
            assert!(line.starts_with(&format!("{} ", s.code())), "{line}");
            assert!(line.len() > 4, "{line} has no reason phrase");
        }
        assert_eq!(Status::ContentTooLarge.line(), "413 Content Too Large");
        assert_eq!(
            Status::UnprocessableContent.line(),
            "422 Unprocessable Content"
        );
    }

    #[test]
    fn display_prints_the_code() {
        assert_eq!(Status::NotFound.to_string(), "404");
    }
}
