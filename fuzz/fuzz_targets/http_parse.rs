//! Fuzzes the request framer: no input may panic, and the answer must not depend on how the
//! input is split across reads (the connection loop parses its buffer after every read, keeping the parser's state).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally::http::{parse, BodyLocation, Limits, Parsed, RequestState, Status};

/// Frames `input` as the connection loop would, with reads ending at `splits`: the requests
/// it yields (method, path, body) and the error that ended it, if any.
fn frame(input: &[u8], splits: &[usize]) -> Vec<Result<(u8, Vec<u8>, Vec<u8>), Status>> {
    let limits = Limits::default();
    let mut scratch = Vec::new();
    let mut state = RequestState::default();
    let mut out = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = splits.iter().map(|&s| s.min(input.len())).collect();
    ends.push(input.len());
    ends.sort_unstable();
    for end in ends {
        loop {
            match parse(&input[start..end], &mut state, &limits, &mut scratch) {
                Ok(Parsed::Complete { head, body, len }) => {
                    let window = &input[start..end];
                    let body = match body {
                        BodyLocation::Input(r) => window[r].to_vec(),
                        BodyLocation::Scratch => scratch.clone(),
                    };
                    out.push(Ok((head.method as u8, window[head.path.clone()].to_vec(), body)));
                    start += len;
                }
                Ok(Parsed::EmptyLines { len }) => start += len,
                Ok(Parsed::Partial { .. }) => break,
                Err(err) => {
                    out.push(Err(err.status()));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose two split points; the rest is the input.
    let (splits, input) = match data {
        [a, b, rest @ ..] => ([usize::from(*a) * 7, usize::from(*b) * 13], rest),
        _ => return,
    };
    assert_eq!(frame(input, &splits), frame(input, &[]));
});
