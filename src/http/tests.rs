//! The request framing rules, one test per rule, through [`parse`] and without sockets; plus
//! properties on random and mutated input (no panic, same answer however the input is split).

use super::*;
use proptest::prelude::*;

fn limits() -> Limits {
    Limits::default()
}

fn parse_all(input: &[u8]) -> (Result<Parsed, HttpError>, Vec<u8>) {
    let mut scratch = Vec::new();
    let parsed = parse(input, &mut RequestState::default(), &limits(), &mut scratch);
    (parsed, scratch)
}

fn complete(input: &[u8]) -> (Head, BodyLocation, usize, Vec<u8>) {
    match parse_all(input) {
        (Ok(Parsed::Complete { head, body, len }), scratch) => (head, body, len, scratch),
        other => panic!("expected a complete request, got {other:?}"),
    }
}

fn error(input: &[u8]) -> HttpError {
    match parse_all(input).0 {
        Err(err) => err,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn is_partial(input: &[u8]) -> bool {
    matches!(parse_all(input).0, Ok(Parsed::Partial { .. }))
}

fn body_of<'a>(input: &'a [u8], body: &BodyLocation, scratch: &'a [u8]) -> &'a [u8] {
    match body {
        BodyLocation::Input(r) => &input[r.clone()],
        BodyLocation::Scratch => scratch,
    }
}

const GET: &[u8] = b"GET /api/v1/system/health HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn a_simple_get_is_complete_with_its_path_and_length() {
    let (head, body, len, _) = complete(GET);
    assert_eq!(head.method, Method::Get);
    assert_eq!(&GET[head.path.clone()], b"/api/v1/system/health");
    assert_eq!(len, GET.len());
    assert_eq!(body, BodyLocation::Input(len..len));
    assert!(head.keep_alive);
    assert!(!head.http10);
}

#[test]
fn a_request_fed_byte_by_byte_is_partial_until_its_last_byte() {
    let req = b"POST /get_value HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    for end in 0..req.len() {
        assert!(
            is_partial(&req[..end]),
            "prefix of {end} bytes was not partial"
        );
    }
    let (_, body, len, scratch) = complete(req);
    assert_eq!(len, req.len());
    assert_eq!(body_of(req, &body, &scratch), b"hello");
}

#[test]
fn a_chunked_request_split_at_every_boundary_is_partial_then_identical() {
    let req = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: t\r\n\r\n";
    for end in 0..req.len() {
        assert!(
            is_partial(&req[..end]),
            "prefix of {end} bytes was not partial"
        );
    }
    let (head, body, len, scratch) = complete(req);
    assert_eq!(head.framing, BodyFraming::Chunked);
    assert_eq!(len, req.len());
    assert_eq!(body_of(req, &body, &scratch), b"abcde");
}

#[test]
fn pipelined_requests_are_framed_one_at_a_time() {
    let mut input = GET.to_vec();
    input.extend_from_slice(
        b"POST /api/v1/counter HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    let (_, _, first, _) = complete(&input);
    assert_eq!(first, GET.len());
    let (head, body, second, scratch) = complete(&input[first..]);
    assert_eq!(head.method, Method::Post);
    assert_eq!(second, input.len() - first);
    assert_eq!(body_of(&input[first..], &body, &scratch), b"{}");
}

#[test]
fn http11_keeps_alive_unless_connection_close() {
    assert!(complete(GET).0.keep_alive);
    let (head, ..) = complete(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n");
    assert!(!head.keep_alive);
    let (head, ..) = complete(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: te, close\r\n\r\n");
    assert!(!head.keep_alive);
}

#[test]
fn http10_closes_unless_keep_alive() {
    let (head, ..) = complete(b"GET / HTTP/1.0\r\n\r\n");
    assert!(head.http10);
    assert!(!head.keep_alive);
    let (head, ..) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(head.keep_alive);
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    let err = error(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(err.status(), Status::BadRequest);
}

#[test]
fn chunked_not_last_is_400_and_unknown_codings_are_501() {
    assert_eq!(
        error(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").status(),
        Status::BadRequest
    );
    assert_eq!(
        error(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n").status(),
        Status::BadRequest
    );
    assert_eq!(
        error(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").status(),
        Status::NotImplemented
    );
}

#[test]
fn transfer_encoding_in_http10_is_400() {
    assert_eq!(
        error(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").status(),
        Status::BadRequest
    );
}

#[test]
fn bad_or_conflicting_content_lengths_are_400() {
    for cl in [
        "+5",
        "-1",
        "5 5",
        "5,5",
        "abc",
        "",
        "0x10",
        "99999999999999999999",
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\n");
        assert_eq!(
            error(req.as_bytes()).status(),
            Status::BadRequest,
            "Content-Length: {cl:?}"
        );
    }
    let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    assert_eq!(error(req).status(), Status::BadRequest);
}

#[test]
fn repeated_identical_content_lengths_are_accepted() {
    let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab";
    let (_, _, len, _) = complete(req);
    assert_eq!(len, req.len());
}

#[test]
fn a_body_over_the_limit_is_413_before_it_is_read() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        limits().max_body_bytes + 1
    );
    assert_eq!(error(req.as_bytes()), HttpError::BodyTooLarge);
}

#[test]
fn a_chunked_body_over_the_limit_is_413() {
    let size = limits().max_body_bytes + 1;
    let mut req =
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size:x}\r\n")
            .into_bytes();
    req.extend(std::iter::repeat_n(b'a', size));
    assert_eq!(error(&req), HttpError::BodyTooLarge);
}

#[test]
fn malformed_chunks_are_400() {
    for chunks in [
        "zz\r\nab\r\n0\r\n\r\n",
        "2\r\nabc\r\n0\r\n\r\n",
        "2\nab\r\n0\r\n\r\n",
        "2 x\r\nab\r\n0\r\n\r\n",
    ] {
        let req =
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}");
        assert_eq!(
            error(req.as_bytes()).status(),
            Status::BadRequest,
            "chunks {chunks:?}"
        );
    }
}

#[test]
fn a_header_section_over_the_limit_is_431_complete_or_not() {
    let big = "a".repeat(limits().max_head_bytes);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    assert_eq!(error(req.as_bytes()), HttpError::HeadTooLarge);
    let unfinished = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}");
    assert_eq!(error(unfinished.as_bytes()), HttpError::HeadTooLarge);
}

#[test]
fn too_many_header_fields_is_431() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..limits().max_headers {
        req.push_str(&format!("X-{i}: v\r\n"));
    }
    req.push_str("\r\n");
    assert_eq!(error(req.as_bytes()), HttpError::TooManyHeaders);
    assert_eq!(
        HttpError::TooManyHeaders.status(),
        Status::RequestHeaderFieldsTooLarge
    );
}

#[test]
fn a_long_request_target_is_414_complete_or_not() {
    let path = format!("/{}", "p".repeat(limits().max_uri_bytes + 64));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(error(req.as_bytes()), HttpError::UriTooLong);
    let unfinished = format!("GET {path}");
    assert_eq!(error(unfinished.as_bytes()), HttpError::UriTooLong);
    assert_eq!(HttpError::UriTooLong.status(), Status::UriTooLong);
}

#[test]
fn http11_without_exactly_one_host_is_400() {
    assert_eq!(
        error(b"GET / HTTP/1.1\r\n\r\n").status(),
        Status::BadRequest
    );
    assert_eq!(
        error(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").status(),
        Status::BadRequest
    );
}

#[test]
fn expect_100_continue_is_reported_once_the_head_is_complete() {
    let req = b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    match parse_all(req).0 {
        Ok(Parsed::Partial { head: Some(head) }) => assert!(head.expect_continue),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        error(b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n"),
        HttpError::ExpectationFailed
    );
}

#[test]
fn the_first_offending_header_field_decides_the_error() {
    assert_eq!(
        error(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: x\r\n\r\n"),
        HttpError::ExpectationFailed
    );
    assert_eq!(
        error(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\nExpect: magic\r\n\r\n"),
        HttpError::BadRequest("invalid Content-Length")
    );
}

#[test]
fn the_query_string_and_absolute_form_are_not_part_of_the_path() {
    let req = b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(&req[complete(req).0.path], b"/metrics");
    let req = b"GET http://example.com/metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(&req[complete(req).0.path], b"/metrics");
    let req = b"GET http://example.com HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(&req[complete(req).0.path], b"");
}

#[test]
fn methods_other_than_get_head_post_delete_are_other() {
    assert_eq!(
        complete(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").0.method,
        Method::Head
    );
    assert_eq!(
        complete(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n").0.method,
        Method::Delete
    );
    assert_eq!(
        complete(b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n").0.method,
        Method::Other
    );
    assert_eq!(
        complete(b"get / HTTP/1.1\r\nHost: x\r\n\r\n").0.method,
        Method::Other
    );
}

#[test]
fn garbage_and_other_versions_are_400() {
    for input in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"GET\r\n\r\n",
    ] {
        assert_eq!(error(input).status(), Status::BadRequest, "{input:?}");
    }
}

#[test]
fn empty_lines_before_a_request_line_are_ignored() {
    assert_eq!(parse_all(b"\r\n").0, Ok(Parsed::EmptyLines { len: 2 }));
    assert_eq!(parse_all(b"\n").0, Ok(Parsed::EmptyLines { len: 1 }));
    assert_eq!(parse_all(b"\r").0, Ok(Parsed::Partial { head: None }));
    let mut input = b"\r\n\n\r\n".to_vec();
    input.extend_from_slice(GET);
    assert_eq!(parse_all(&input).0, Ok(Parsed::EmptyLines { len: 5 }));
    assert_eq!(complete(&input[5..]).2, GET.len());
    // Not an empty line: a CR followed by anything but LF.
    assert_eq!(
        error(b"\rGET / HTTP/1.1\r\n\r\n").status(),
        Status::BadRequest
    );
}

#[test]
fn a_bare_lf_is_400_in_the_head_as_in_chunked_framing() {
    for input in [
        &b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\na\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: v\n\r\n",
    ] {
        assert_eq!(error(input).status(), Status::BadRequest, "{input:?}");
    }
    assert_eq!(
        error(b"GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n").status(),
        Status::BadRequest,
        "a bare CR"
    );
}

#[test]
fn control_characters_in_chunk_extensions_and_trailers_are_400() {
    for chunks in [
        "1;a\rb\r\nx\r\n0\r\n\r\n",
        "1;a\0b\r\nx\r\n0\r\n\r\n",
        "1;a=\x01\r\nx\r\n0\r\n\r\n",
        "0\r\nT: a\0b\r\n\r\n",
        "0\r\nT: a\rb\r\n\r\n",
        "0\r\nno colon\r\n\r\n",
        "0\r\n: no name\r\n\r\n",
        "0\r\nT: v\r\n folded\r\n\r\n",
    ] {
        let req =
            format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}");
        assert_eq!(
            error(req.as_bytes()).status(),
            Status::BadRequest,
            "chunks {chunks:?}"
        );
    }
    let ok = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;a=b;c=\"d e\"\r\nx\r\n0\r\nT: v\tw\r\n\r\n";
    assert_eq!(complete(ok).2, ok.len());
}

#[test]
fn the_target_limit_counts_the_target_only_complete_or_not() {
    // A long method with a target exactly at the limit: fine whether or not the line is done.
    let method = "M".repeat(100);
    let target = format!("/{}", "t".repeat(limits().max_uri_bytes - 1));
    let line = format!("{method} {target}");
    assert!(is_partial(line.as_bytes()));
    let req = format!("{line} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(complete(req.as_bytes()).0.method, Method::Other);
    // One byte more is 414, complete or not.
    let line = format!("{method} {target}t");
    assert_eq!(error(line.as_bytes()), HttpError::UriTooLong);
    let req = format!("{line} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(error(req.as_bytes()), HttpError::UriTooLong);
}

#[test]
fn a_chunked_body_trickled_one_byte_per_read_costs_work_linear_in_its_size() {
    // 64 KiB of data in 1 KiB chunks with extensions, then a trailer; every read adds 1 byte.
    let mut req = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let head_len = req.len();
    for i in 0..64u8 {
        req.extend_from_slice(b"400;part=1\r\n");
        req.extend(std::iter::repeat_n(b'a' + i % 26, 1024));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\nTrailer-Field: t\r\n\r\n");
    let mut state = RequestState::default();
    let mut scratch = Vec::new();
    super::chunked::EXAMINED.with(|e| e.set(0));
    for end in head_len..req.len() {
        let parsed = parse(&req[..end], &mut state, &limits(), &mut scratch);
        assert!(
            matches!(parsed, Ok(Parsed::Partial { head: Some(_) })),
            "{end}"
        );
    }
    let parsed = parse(&req, &mut state, &limits(), &mut scratch);
    assert!(matches!(parsed, Ok(Parsed::Complete { len, .. }) if len == req.len()));
    assert_eq!(scratch.len(), 64 * 1024);
    let examined = super::chunked::EXAMINED.with(|e| e.get());
    let body_len = req.len() - head_len;
    assert!(
        examined <= 2 * body_len,
        "the decoder examined {examined} bytes for a body of {body_len}"
    );
}

/// Parses `input` fed in pieces ending at `splits`, the way the connection loop does: parse
/// the buffered bytes after each piece with the state the last call left, consume complete
/// requests.
fn framed_in_pieces(input: &[u8], splits: &[usize]) -> Vec<Result<(Head, Vec<u8>), HttpError>> {
    let mut results = Vec::new();
    let mut scratch = Vec::new();
    let mut state = RequestState::default();
    let mut start = 0;
    let mut ends: Vec<usize> = splits.iter().map(|&s| s.min(input.len())).collect();
    ends.push(input.len());
    ends.sort_unstable();
    for end in ends {
        loop {
            match parse(&input[start..end], &mut state, &limits(), &mut scratch) {
                Ok(Parsed::Complete { head, body, len }) => {
                    let body = body_of(&input[start..end], &body, &scratch).to_vec();
                    results.push(Ok((head, body)));
                    start += len;
                }
                Ok(Parsed::EmptyLines { len }) => start += len,
                Ok(Parsed::Partial { .. }) => break,
                Err(err) => {
                    results.push(Err(err));
                    return results;
                }
            }
        }
    }
    results
}

fn request_strategy() -> impl Strategy<Value = Vec<u8>> {
    let one = prop_oneof![
        Just(GET.to_vec()),
        Just(b"POST /get_value HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"key\":\"k\"}".to_vec()),
        Just(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n".to_vec()),
        Just(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec()),
        Just(b"HEAD /metrics?x HTTP/1.1\r\nhost: y\r\nExpect: 100-continue\r\n\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\r\n".to_vec()),
    ];
    prop::collection::vec(one, 1..5).prop_map(|v| v.concat())
}

/// Requests at the edges of the framing rules: bare LF, control characters in chunk
/// extensions and trailers, targets around the length limit behind methods of any length,
/// with an invalid byte before or after the limit.
fn edge_strategy() -> impl Strategy<Value = Vec<u8>> {
    let max_uri = limits().max_uri_bytes;
    let edge = prop_oneof![
        Just(b"GET / HTTP/1.1\nHost: x\n\n".to_vec()),
        Just(b"GET / HTTP/1.1\r\nHost: x\r\n\n".to_vec()),
        Just(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;e\r\na\r\n0\r\n\r\n".to_vec()),
        Just(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;e\0\r\na\r\n0\r\n\r\n".to_vec()),
        Just(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\na\r\n0\r\n\r\n".to_vec()),
        Just(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: v\r\n\r\n".to_vec()),
        Just(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: \rv\r\n\r\n".to_vec()),
        Just(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: v\n\r\n".to_vec()),
        (1usize..64, max_uri - 2..max_uri + 3, prop::option::of((0usize..max_uri + 3, any::<u8>())))
            .prop_map(|(method_len, target_len, bad)| {
                let mut target = vec![b'u'; target_len];
                target[0] = b'/';
                if let Some((at, byte)) = bad {
                    let at = at.min(target_len - 1);
                    target[at] = byte;
                }
                let mut req = vec![b'M'; method_len];
                req.push(b' ');
                req.extend_from_slice(&target);
                req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
                req
            }),
    ];
    (request_strategy(), edge).prop_map(|(a, b)| [a, b].concat())
}

#[test]
fn edge_cases_frame_the_same_split_at_any_single_byte() {
    let max_uri = limits().max_uri_bytes;
    let long_method = format!(
        "{} /{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "M".repeat(60),
        "u".repeat(max_uri - 1)
    );
    let long_target_bad_late = format!(
        "GET /{}\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        "u".repeat(max_uri + 10)
    );
    let long_target_bad_early = format!(
        "GET /\x01{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "u".repeat(max_uri + 10)
    );
    let inputs: [&[u8]; 6] = [
        long_method.as_bytes(),
        long_target_bad_late.as_bytes(),
        long_target_bad_early.as_bytes(),
        b"GET / HTTP/1.1\r\nHost: x\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;e\0\r\na\r\n0\r\nT: v\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nT: v\x7f\r\n\r\n",
    ];
    for input in inputs {
        let whole = framed_in_pieces(input, &[]);
        for split in 0..=input.len() {
            assert_eq!(
                framed_in_pieces(input, &[split]),
                whole,
                "split at {split} of {input:?}"
            );
        }
    }
}

/// Split points anywhere in an input.
fn splits_strategy() -> impl Strategy<Value = Vec<prop::sample::Index>> {
    prop::collection::vec(any::<prop::sample::Index>(), 0..8)
}

fn split_at(input: &[u8], splits: &[prop::sample::Index]) -> Vec<usize> {
    splits.iter().map(|i| i.index(input.len() + 1)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut scratch = Vec::new();
        let _ = parse(&input, &mut RequestState::default(), &limits(), &mut scratch);
    }

    #[test]
    fn the_result_does_not_depend_on_how_input_is_split(
        input in request_strategy(),
        splits in prop::collection::vec(0usize..600, 0..8),
    ) {
        prop_assert_eq!(framed_in_pieces(&input, &splits), framed_in_pieces(&input, &[]));
    }

    #[test]
    fn mutated_requests_never_panic_and_split_the_same(
        input in request_strategy(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        splits in prop::collection::vec(0usize..600, 0..8),
    ) {
        let mut input = input;
        for (at, byte) in edits {
            let i = at.index(input.len());
            input[i] = byte;
        }
        prop_assert_eq!(framed_in_pieces(&input, &splits), framed_in_pieces(&input, &[]));
    }

    #[test]
    fn edge_cases_split_the_same(input in edge_strategy(), splits in splits_strategy()) {
        let splits = split_at(&input, &splits);
        prop_assert_eq!(framed_in_pieces(&input, &splits), framed_in_pieces(&input, &[]));
    }

    #[test]
    fn mutated_edge_cases_split_the_same(
        input in edge_strategy(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        splits in splits_strategy(),
    ) {
        let mut input = input;
        for (at, byte) in edits {
            let i = at.index(input.len());
            input[i] = byte;
        }
        let splits = split_at(&input, &splits);
        prop_assert_eq!(framed_in_pieces(&input, &splits), framed_in_pieces(&input, &[]));
    }
}

#[test]
fn the_authorization_value_is_given_as_a_range_and_a_repeated_one_as_empty() {
    let input = b"POST /a HTTP/1.1\r\nHost: t\r\nAuthorization:  Bearer x y \r\n\r\n";
    let (head, ..) = complete(input);
    let range = head.authorization.expect("present");
    assert_eq!(&input[range], b"Bearer x y");
    let (head, ..) = complete(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(head.authorization, None);
    let (head, ..) =
        complete(b"GET / HTTP/1.1\r\nHost: t\r\nAuthorization: a\r\nauthorization: a\r\n\r\n");
    assert!(head.authorization.expect("present").is_empty());
}

#[test]
fn the_idempotency_key_field_is_exposed_trimmed_and_a_repeat_is_flagged() {
    let req = b"POST /api/v1/counter HTTP/1.1\r\nHost: x\r\nidempotency-key:  abc-1 \r\n\r\n";
    let (head, ..) = complete(req);
    let key = head.idempotency_key.clone().expect("the key");
    assert_eq!(&req[key], b"abc-1");
    assert!(!head.idempotency_key_repeated);

    let (head, ..) = complete(GET);
    assert_eq!(head.idempotency_key, None);

    let twice = b"POST / HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n\r\n";
    assert!(complete(twice).0.idempotency_key_repeated);
}
