//! The connection driven through a scripted stream: no socket, no listener, no binary. The
//! client's bytes arrive in the chunks a test sends; every write the connection makes is kept
//! apart, so a test sees how responses were batched. The application is the real one (a
//! sample replica, the counter's owner and a store pointed at a database that does not exist,
//! so an increment is deferred, then answered 503 exactly as when PostgreSQL is down).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::api::{App, Instance, Route};
use crate::counter::store::{self, StoreConfig, StoreHandle};
use crate::counter::{self, CounterCore, CounterShared};
use crate::http::{HttpDate, Limits};
use crate::kv::{self, Replica};
use crate::metrics::CoreMetrics;
use crate::server::context::ConnContext;
use crate::server::registry::Registry;
use crate::server::stream::Stream;

use super::batch::MAX_PENDING_OUTPUT_BYTES;
use super::buffers::INITIAL_BUFFER_BYTES;

/// A connection string that never connects (a socket directory that does not exist).
const NO_DATABASE: &str = "host=/nonexistent-tally-unit-test port=1 user=tally connect_timeout=1";

/// What the client has sent and what the connection did, shared by the test and the stream.
#[derive(Default)]
struct Script {
    /// Chunks not read yet; a read takes at most one (less if the buffer is smaller).
    input: VecDeque<Vec<u8>>,
    /// The client closed its side: reads return 0 once `input` is empty.
    eof: bool,
    /// The connection's task, waiting for input.
    waker: Option<Waker>,
    /// Each `write_all`, in order.
    writes: Vec<Vec<u8>>,
    /// The connection sent FIN.
    write_side_closed: bool,
    /// Times the connection gave its memory back while idle.
    trims: usize,
}

/// The test's end of the connection.
#[derive(Clone, Default)]
struct Client(Rc<RefCell<Script>>);

impl Client {
    fn send(&self, bytes: &[u8]) {
        let mut script = self.0.borrow_mut();
        script.input.push_back(bytes.to_vec());
        if let Some(waker) = script.waker.take() {
            waker.wake();
        }
    }

    fn close(&self) {
        let mut script = self.0.borrow_mut();
        script.eof = true;
        if let Some(waker) = script.waker.take() {
            waker.wake();
        }
    }

    fn writes(&self) -> Vec<String> {
        self.0
            .borrow()
            .writes
            .iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect()
    }

    fn output(&self) -> String {
        self.writes().concat()
    }

    fn write_side_closed(&self) -> bool {
        self.0.borrow().write_side_closed
    }

    fn trims(&self) -> usize {
        self.0.borrow().trims
    }

    /// The stream the connection gets; `LENDS`: like the ring's, it waits without a buffer.
    fn stream<const LENDS: bool>(&self) -> ScriptedStream<LENDS> {
        ScriptedStream {
            script: self.0.clone(),
            // A real descriptor for the abortive close after a failed write (never a socket
            // here, so setting SO_LINGER on it fails, and is ignored, as on a closed socket).
            null: std::fs::File::open("/dev/null").expect("/dev/null opens"),
        }
    }
}

struct ScriptedStream<const LENDS: bool> {
    script: Rc<RefCell<Script>>,
    null: std::fs::File,
}

impl<const LENDS: bool> ScriptedStream<LENDS> {
    /// Ready once input or end of input is there; `take` copies input into `buf`.
    async fn next_input(&mut self, buf: Option<&mut [u8]>) -> usize {
        let mut buf = buf;
        std::future::poll_fn(|cx| {
            let mut script = self.script.borrow_mut();
            if let Some(chunk) = script.input.front_mut() {
                let Some(buf) = buf.as_deref_mut() else {
                    return Poll::Ready(0);
                };
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                chunk.drain(..n);
                if chunk.is_empty() {
                    script.input.pop_front();
                }
                Poll::Ready(n)
            } else if script.eof {
                Poll::Ready(0)
            } else {
                script.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl<const LENDS: bool> Stream for ScriptedStream<LENDS> {
    const WAITS_WITHOUT_BUFFER: bool = LENDS;

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(self.next_input(Some(buf)).await)
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.script.borrow_mut().writes.push(buf.to_vec());
        Ok(())
    }

    async fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.script.borrow_mut().write_side_closed = true;
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.null.as_raw_fd()
    }

    async fn readable(&mut self) -> std::io::Result<()> {
        self.next_input(None).await;
        Ok(())
    }

    fn trim(&mut self) {
        self.script.borrow_mut().trims += 1;
    }
}

/// One core's context with the real application on it; the store is shut down on drop.
struct Core {
    ctx: Rc<ConnContext>,
    store: StoreHandle,
}

impl Drop for Core {
    fn drop(&mut self) {
        self.store.shutdown();
    }
}

/// Builds a core's context on the running executor (the counter's tasks and its owner start
/// on it), with the sweeper running: the coarse clock, deadlines and idle trims.
fn core(request_timeout_secs: u64) -> Core {
    let store = store::spawn(StoreConfig {
        commit_timeout: Duration::from_millis(200),
        ..StoreConfig::new(NO_DATABASE)
    })
    .expect("the store thread starts");
    let shared = Arc::new(CounterShared::new(store.clone(), 0));
    let mut wiring = counter::wire(1);
    let port = wiring.cores.pop().expect("one core's port");
    let owner = glommio::spawn_local(counter::run_owner(wiring.owner, shared.clone()));
    let (named, named_core) = counter::named::unowned_core(store.clone());
    let instance = Arc::new(Instance::new(
        vec![CoreMetrics::new(Route::METRIC_LABELS)],
        shared,
        named,
    ));
    let counter = CounterCore::new(port, 0);
    glommio::spawn_local(counter.clone().run_batcher()).detach();
    glommio::spawn_local(counter.clone().run_replies()).detach();
    let replica = Replica::build(&kv::sample(10, 1));
    let app = Rc::new(App::new(
        0,
        instance,
        replica,
        counter,
        Some(owner),
        (named_core, None),
    ));
    let ctx = Rc::new(ConnContext {
        app,
        limits: Limits::default(),
        request_timeout_secs,
        idle_timeout_secs: 60,
        max_connections: 16,
        date: RefCell::new(HttpDate::new()),
        registry: Registry::new(),
        shutting_down: Cell::new(false),
        read_buffers: RefCell::new(Vec::new()),
        lingering_refusals: Cell::new(0),
    });
    glommio::spawn_local(ctx.clone().run_sweeper()).detach();
    Core { ctx, store }
}

fn on_executor<T>(test: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(64 * 1024)
        .make()
        .expect("a glommio executor")
        .run(test)
}

/// A core (see [`core`]) and one connection to it, served on its own task.
fn connect<const LENDS: bool>(request_timeout_secs: u64) -> (Core, Client, glommio::Task<()>) {
    let core = core(request_timeout_secs);
    let client = Client::default();
    let task = glommio::spawn_local(super::serve(core.ctx.clone(), client.stream::<LENDS>()));
    (core, client, task)
}

/// Lets the connection's task run until it waits.
async fn settle() {
    for _ in 0..20 {
        futures_lite::future::yield_now().await;
    }
}

/// Waits until `done` holds, checking every 10 ms, for at most `limit`.
async fn eventually(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    true
}

const HEALTH: &str = "GET /api/v1/system/health HTTP/1.1\r\nHost: t\r\n\r\n";

fn statuses(output: &str) -> Vec<&str> {
    output
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|response| &response[..3])
        .collect()
}

#[test]
fn pipelined_requests_are_answered_in_order_with_one_write() {
    on_executor(async {
        let (_core, client, task) = connect::<false>(10);
        let lookup = format!(
            "POST /get_value HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{{}}{HEALTH}GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
        );
        client.send(format!("{HEALTH}{lookup}").as_bytes());
        settle().await;
        let writes = client.writes();
        assert_eq!(writes.len(), 1, "one write for the batch: {writes:?}");
        assert_eq!(statuses(&writes[0]), ["200", "400", "200", "404"]);
        client.close();
        task.await;
    });
}

#[test]
fn a_deep_pipeline_is_written_in_bounded_batches_and_every_request_answered() {
    on_executor(async {
        let (_core, client, task) = connect::<false>(10);
        let requests = 2_000;
        // Sent in pieces no larger than the read buffer, as a socket would deliver them.
        let all = HEALTH.repeat(requests);
        for piece in all.as_bytes().chunks(INITIAL_BUFFER_BYTES) {
            client.send(piece);
        }
        client.close();
        task.await;
        let writes = client.writes();
        let answered: usize = writes.iter().map(|w| statuses(w).len()).sum();
        assert_eq!(answered, requests);
        assert!(writes.len() > 1);
        let one_response = writes[0].len() / statuses(&writes[0]).len();
        for write in &writes {
            assert!(
                write.len() <= MAX_PENDING_OUTPUT_BYTES + one_response,
                "a batch of {} bytes",
                write.len()
            );
        }
    });
}

#[test]
fn continue_is_sent_once_before_the_body_and_the_request_then_answered() {
    on_executor(async {
        let (_core, client, task) = connect::<false>(10);
        client.send(b"POST /get_value HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        settle().await;
        assert_eq!(client.output(), "HTTP/1.1 100 Continue\r\n\r\n");
        // The first byte of the body: still the same request, no second 100.
        client.send(b"{");
        settle().await;
        assert_eq!(client.writes().len(), 1);
        client.send(b"}");
        settle().await;
        let writes = client.writes();
        assert_eq!(writes.len(), 2);
        assert_eq!(statuses(&writes[1]), ["400"], "{{}} has no key");
        client.close();
        task.await;
    });
}

#[test]
fn a_request_not_finished_before_its_deadline_is_answered_408_and_the_close_lingers() {
    on_executor(async {
        let (core, client, task) = connect::<false>(1);
        client.send(b"GET /api/v1/system/health HTTP/1.1\r\nHo");
        // Deadline: the request timeout after its first byte, on the sweeper's coarse clock.
        let answered = eventually(Duration::from_secs(5), || !client.writes().is_empty()).await;
        assert!(answered, "no 408 within 5 s");
        let output = client.output();
        assert_eq!(statuses(&output), ["408"]);
        assert!(output.contains("Connection: close"), "{output}");
        assert!(client.write_side_closed(), "FIN, then linger");
        // Lingering: what the client still sends is read and dropped, then the close.
        client.send(b"st: t\r\n\r\n");
        client.close();
        task.await;
        assert_eq!(client.writes().len(), 1);
        let metrics = core.ctx.app.metrics();
        assert_eq!(metrics.timed_out_connections.get(), 1);
        assert_eq!(metrics.open_connections.get(), 0);
    });
}

#[test]
fn a_malformed_request_is_answered_400_then_the_connection_lingers_and_closes() {
    on_executor(async {
        let (_core, client, task) = connect::<false>(10);
        client.send(format!("{HEALTH}NOT HTTP\r\n\r\n{HEALTH}").as_bytes());
        settle().await;
        let output = client.output();
        assert_eq!(statuses(&output), ["200", "400"], "nothing after the error");
        assert!(client.write_side_closed());
        client.close();
        task.await;
    });
}

#[test]
fn an_idle_connection_gives_its_buffers_back_when_the_sweeper_asks_and_serves_again() {
    on_executor(async {
        let (core, client, task) = connect::<true>(10);
        client.send(HEALTH.as_bytes());
        settle().await;
        assert_eq!(statuses(&client.output()), ["200"]);
        // Idle: a stream that waits without a buffer lends the read buffer back at once.
        assert_eq!(core.ctx.read_buffers.borrow().len(), 1);
        let trims_when_idle = client.trims();
        // The sweeper (once a second) asks idle connections for the rest.
        let trimmed = eventually(Duration::from_secs(3), || client.trims() > trims_when_idle).await;
        assert!(trimmed, "the sweeper's request was not answered");
        client.send(HEALTH.as_bytes());
        settle().await;
        assert_eq!(statuses(&client.output()), ["200", "200"]);
        client.close();
        task.await;
    });
}

#[test]
fn an_increment_is_answered_after_its_commit_in_its_place_in_the_batch() {
    on_executor(async {
        let (_core, client, task) = connect::<false>(10);
        let post = "POST /api/v1/counter HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
        client.send(format!("{HEALTH}{post}{HEALTH}").as_bytes());
        // No database: the commit is refused or times out, and the increment gets a 503; the
        // responses around it wait for it, and all three go out in order in one write.
        let written = eventually(Duration::from_secs(5), || !client.writes().is_empty()).await;
        assert!(written, "the increment was never answered");
        let writes = client.writes();
        assert_eq!(writes.len(), 1, "one write for the whole batch");
        assert_eq!(statuses(&writes[0]), ["200", "503", "200"]);
        assert!(
            writes[0].contains("not confirmed by the store"),
            "{}",
            writes[0]
        );
        client.close();
        task.await;
    });
}
