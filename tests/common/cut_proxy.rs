//! A TCP proxy in front of a [`TestPg`]'s Unix socket that loses one statement or its reply on
//! purpose, to make a commit's outcome unknown to its client. The connection is cut at the
//! chosen point of the first request carrying a marker (an `add` delta: its 8 bytes big-endian
//! appear in the Bind message); everything else passes. Each forwarded connection uses two
//! threads, which end with it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::pg::TestPg;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cut {
    /// Forward the statement, then drop PostgreSQL's reply and close both sides.
    DropReply,
    /// Close both sides instead of forwarding the statement: it never runs.
    DropStatement,
    /// Forward the statement and close both sides at once, before any reply.
    CloseAfterStatement,
}

/// Where to cut, and the marker bytes of the statement to cut at.
type ArmedCut = (Cut, [u8; 8]);

pub struct CutProxy {
    /// A tokio-postgres connection string through the proxy.
    pub url: String,
    armed: Arc<Mutex<Option<ArmedCut>>>,
}

enum Pass {
    Forward,
    ForwardThenClose,
    Close,
}

impl CutProxy {
    pub fn start(pg: &TestPg) -> CutProxy {
        let field = |name: &str| {
            pg.url()
                .split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .map(str::to_owned)
                .expect("test cluster URL field")
        };
        let socket = format!("{}/.s.PGSQL.{}", field("host="), field("port="));
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let port = listener.local_addr().expect("proxy address").port();
        let armed: Arc<Mutex<Option<ArmedCut>>> = Arc::default();
        let shared = Arc::clone(&armed);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(client), Ok(server)) = (client, UnixStream::connect(&socket)) else {
                    continue;
                };
                forward(client, server, Arc::clone(&shared));
            }
        });
        let url = format!(
            "host=127.0.0.1 port={port} user={} dbname=postgres",
            field("user=")
        );
        CutProxy { url, armed }
    }

    /// Cuts the connection carrying the next statement whose parameters include `delta`.
    pub fn arm(&self, cut: Cut, delta: i64) {
        self.arm_at(cut, delta.to_be_bytes());
    }

    /// Cuts the connection carrying the next message that contains `marker` (e.g. the first 8
    /// bytes of an Idempotency-Key's digest).
    pub fn arm_at(&self, cut: Cut, marker: [u8; 8]) {
        *self.armed.lock().expect("proxy state") = Some((cut, marker));
    }
}

fn forward(client: std::net::TcpStream, server: UnixStream, armed: Arc<Mutex<Option<ArmedCut>>>) {
    let (Ok(client_w), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let close = {
        let (client, server) = (client.try_clone().ok(), server.try_clone().ok());
        Arc::new(move || {
            if let Some(client) = &client {
                let _ = client.shutdown(Shutdown::Both);
            }
            if let Some(server) = &server {
                let _ = server.shutdown(Shutdown::Both);
            }
        })
    };
    let drop_next_reply = Arc::new(AtomicBool::new(false));
    let (close_up, drop_reply) = (Arc::clone(&close), Arc::clone(&drop_next_reply));
    std::thread::spawn(move || {
        pump(client, server_w, |chunk| {
            let Ok(mut armed) = armed.lock() else {
                return Pass::Forward;
            };
            let Some((cut, marker)) = *armed else {
                return Pass::Forward;
            };
            if !chunk.windows(8).any(|window| window == marker) {
                return Pass::Forward;
            }
            *armed = None;
            match cut {
                Cut::DropStatement => Pass::Close,
                Cut::CloseAfterStatement => Pass::ForwardThenClose,
                Cut::DropReply => {
                    drop_reply.store(true, Ordering::SeqCst);
                    Pass::Forward
                }
            }
        });
        close_up();
    });
    std::thread::spawn(move || {
        pump(server, client_w, |_| {
            if drop_next_reply.load(Ordering::SeqCst) {
                Pass::Close
            } else {
                Pass::Forward
            }
        });
        close();
    });
}

/// Copies `from` to `to` chunk by chunk, asking `decide` about each, until either side ends.
fn pump(mut from: impl Read, mut to: impl Write, mut decide: impl FnMut(&[u8]) -> Pass) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &buffer[..n];
        match decide(chunk) {
            Pass::Close => return,
            Pass::ForwardThenClose => {
                let _ = to.write_all(chunk);
                return;
            }
            Pass::Forward => {
                if to.write_all(chunk).is_err() {
                    return;
                }
            }
        }
    }
}
