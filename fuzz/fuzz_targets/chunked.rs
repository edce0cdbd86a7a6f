//! Fuzzes the chunked body decoder (RFC 9112 §7.1) through the framer: a POST with
//! `Transfer-Encoding: chunked` whose body is the fuzz input. Properties: no panic; the same
//! answer fed at once, in three pieces, or one byte per read (the decoder keeps its state
//! across reads); and a body the decoder accepts is what a plain reading of the chunks gives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::http::{parse, BodyLocation, Limits, Parsed, RequestState, Status};

const HEAD: &[u8] = b"POST /get_value HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n";

/// The first request's decoded body (or its error, or `None` if it never completes), with
/// reads ending at each of `ends`.
fn decode(input: &[u8], ends: &[usize]) -> Option<Result<Vec<u8>, Status>> {
    let limits = Limits::default();
    let (mut state, mut scratch) = (RequestState::default(), Vec::new());
    for &end in ends.iter().chain([&input.len()]) {
        match parse(&input[..end.min(input.len())], &mut state, &limits, &mut scratch) {
            Ok(Parsed::Complete { body, .. }) => {
                return Some(Ok(match body {
                    BodyLocation::Scratch => scratch,
                    BodyLocation::Input(range) => input[range].to_vec(),
                }))
            }
            Ok(Parsed::Partial { .. }) => {}
            Ok(Parsed::EmptyLines { .. }) => unreachable!("the input starts with a request line"),
            Err(err) => return Some(Err(err.status())),
        }
    }
    None
}

/// The chunks' data read plainly: `size[;ext]CRLF data CRLF` until size 0. Lenient where the
/// decoder is strict, so it must agree on whatever the decoder accepts.
fn plain_reading(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        // The size's hex digits; extensions (after `;`, any bytes but CR/LF/NUL) are ignored.
        let line = &body[..line_end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = usize::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

fuzz_target!(|data: &[u8]| {
    let (splits, body) = match data {
        [a, b, rest @ ..] => ([usize::from(*a), usize::from(*a) + usize::from(*b) * 3], rest),
        _ => return,
    };
    let input = [HEAD, body].concat();
    let at_once = decode(&input, &[]);
    let pieces: Vec<usize> = splits.iter().map(|s| HEAD.len() + s).collect();
    assert_eq!(decode(&input, &pieces), at_once, "three pieces");
    let bytewise: Vec<usize> = (HEAD.len()..input.len()).collect();
    assert_eq!(decode(&input, &bytewise), at_once, "one byte per read");
    if let Some(Ok(decoded)) = &at_once {
        let plain = plain_reading(body).expect("an accepted body reads plainly");
        assert_eq!(&plain, decoded, "the decoded body is the chunks' data");
    }
});
