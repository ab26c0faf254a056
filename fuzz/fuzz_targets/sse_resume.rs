//! Fuzzes where a live subscription resumes: the `Last-Event-ID` header and the
//! `from_position` / `limit` query parameters of `GET /v1/subscribe` and `GET /v1/all`, through
//! the handlers' own parsing. Nothing may panic; a refusal is a 400; an accepted id resumes
//! right after itself and prints back to the same id.
#![no_main]

use ficus_gateway::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Input: header bytes, a 0xFF separator, then the query string (no separator: no header).
    let (header, query) = match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let query = String::from_utf8_lossy(query);
    match fuzzing::sse_resume(header, &query) {
        Ok(from) => {
            if let Some(raw) = header {
                let last = fuzzing::last_event_id(raw).expect("the header was accepted");
                assert_eq!(from, last + 1, "resumes right after the last id it saw");
                // The server sends `id: {position}`; a client echoing it resumes there.
                let echoed = fuzzing::last_event_id(last.to_string().as_bytes())
                    .expect("a position the server sent is accepted");
                assert_eq!(echoed, last, "an id round-trips");
            }
        }
        Err(e) => assert_eq!(e.status.as_u16(), 400, "{}: {}", e.code, e.message),
    }
    match fuzzing::read_all_query(&query) {
        Ok((from, limit)) => assert!(from >= 1 && limit >= 1),
        Err(e) => assert_eq!(e.status.as_u16(), 400, "{}: {}", e.code, e.message),
    }
});
