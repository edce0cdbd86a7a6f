//! The ring against real sockets on 127.0.0.1, on a glommio executor: the cases where rings
//! bite (an empty buffer pool, a connection that holds too many buffers, a stream dropped with
//! a send in flight, a send larger than the socket takes, shutdown), and the park hook's
//! promise that every wake-up source still reaches a core sleeping on the ring.
//!
//! Each test ends with [`finish`], which checks the driver's end condition: nothing left in
//! flight and an empty socket table. Time bounds are far above what a healthy core needs, so
//! they catch a lost or parked wake-up, not a slow machine (bench/run.sh measures speed).
//! Touches only loopback sockets, threads of its own and the ring's test-only counters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use std::rc::Rc;

use super::{Ring, TaskRun};
use crate::server::stream::Stream;

fn on_executor<T: 'static>(test: impl std::future::Future<Output = T> + 'static) -> T {
    on_executor_preempting_every(crate::server::executor::PREEMPT_TIMER, test)
}

fn on_executor_preempting_every<T: 'static>(
    preempt: Duration,
    test: impl std::future::Future<Output = T> + 'static,
) -> T {
    glommio::LocalExecutorBuilder::default()
        .preempt_timer(preempt)
        .make()
        .expect("a glommio executor")
        .run(test)
}

/// A ring of `buffers` receive buffers with its driver running, accepting on `listener`.
/// Call on the executor.
fn start_ring(
    taskrun: TaskRun,
    buffers: u16,
    listener: &TcpListener,
) -> (Rc<Ring>, glommio::Task<()>) {
    let ring = Ring::with_buffers(taskrun, buffers).expect("ring");
    let driver = glommio::spawn_local(ring.clone().drive());
    ring.start_accepting(listener.as_raw_fd());
    (ring, driver)
}

/// Asserts that `what` arrived less than `bound` late.
#[track_caller]
fn assert_late_under(late: Duration, bound: Duration, what: impl std::fmt::Display) {
    assert!(late < bound, "{what}: {late:?} late, more than {bound:?}");
}

/// Bytes a client sends: its id first, then a sequence that depends on id and position, so
/// the server can check every byte arrived, in order, on the right connection.
fn pattern(id: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if i == 0 {
                id
            } else {
                (i as u32 * 31 + id as u32) as u8
            }
        })
        .collect()
}

/// Connects `clients` senders of `bytes` each; every one waits for "ok" after sending.
fn senders(addr: SocketAddr, clients: u8, bytes: usize) -> Vec<std::thread::JoinHandle<[u8; 2]>> {
    (0..clients)
        .map(|id| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                s.write_all(&pattern(id, bytes)).expect("send");
                let mut answer = [0; 2];
                s.read_exact(&mut answer).expect("answer");
                answer
            })
        })
        .collect()
}

/// Accepts `clients` connections; each task waits `pause` (not reading, so the kernel fills
/// buffers for it), then reads `bytes` in small pieces, checks them and answers "ok".
async fn receive_all(ring: &Rc<Ring>, clients: u8, bytes: usize, pause: Duration) {
    let all = receive_all_unbounded(ring, clients, bytes, pause);
    let done = futures_lite::future::or(
        async {
            all.await;
            true
        },
        async {
            glommio::timer::sleep(Duration::from_secs(20)).await;
            false
        },
    )
    .await;
    assert!(
        done,
        "the connections did not receive everything within 20 s"
    );
}

async fn receive_all_unbounded(ring: &Rc<Ring>, clients: u8, bytes: usize, pause: Duration) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let fd = ring.accept().await.expect("accept");
        let mut stream = ring.stream(fd);
        tasks.push(glommio::spawn_local(async move {
            glommio::timer::sleep(pause).await;
            let mut got = Vec::with_capacity(bytes);
            let mut piece = [0; 1000];
            while got.len() < bytes {
                let n = stream.read(&mut piece).await.expect("read");
                assert!(n > 0, "end of input after {} of {bytes} bytes", got.len());
                got.extend_from_slice(&piece[..n]);
            }
            assert!(got == pattern(got[0], bytes), "bytes lost or out of order");
            stream.write_all(b"ok").await.expect("answer");
        }));
    }
    for task in tasks {
        task.await;
    }
}

/// Stops the ring and checks that its driver ends (nothing left in flight).
async fn finish(ring: Rc<Ring>, driver: glommio::Task<()>) {
    ring.stop_accepting();
    ring.finish();
    let ended = futures_lite::future::or(
        async {
            driver.await;
            true
        },
        async {
            glommio::timer::sleep(super::FINISH_WAIT).await;
            false
        },
    )
    .await;
    assert!(ended, "the driver still had requests in flight");
    assert_eq!(ring.open_sockets(), 0);
}

#[test]
fn receives_that_run_out_of_buffers_are_rearmed_and_lose_no_byte() {
    for taskrun in [TaskRun::Defer, TaskRun::Coop] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let clients = senders(listener.local_addr().expect("addr"), 8, 256 * 1024);
        let (starved, answered) = on_executor(async move {
            // 4 buffers for 8 clients sending 64 buffers' worth each: ENOBUFS all along.
            let (ring, driver) = start_ring(taskrun, 4, &listener);
            receive_all(&ring, 8, 256 * 1024, Duration::from_millis(50)).await;
            let starved = ring.starvations.get();
            finish(ring, driver).await;
            drop(listener);
            (starved, true)
        });
        assert!(answered);
        assert!(
            starved > 0,
            "{taskrun:?}: the pool never ran dry; the test tests nothing"
        );
        for client in clients {
            assert_eq!(&client.join().expect("client"), b"ok");
        }
    }
}

/// The bound is `MAX_HELD_BUFFERS` plus what the kernel takes before tally sees a completion:
/// a multishot receive runs up to 32 times in a row while its socket has data, and a park
/// can run it once more (re-queued) before it returns, so up to 8 + 2 x 32 buffers; after
/// the cap the connection receives one buffer at a time. A pool of 128 holds that with room.
#[test]
fn a_connection_that_is_not_reading_holds_a_bounded_number_of_buffers() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let clients = senders(listener.local_addr().expect("addr"), 1, 1024 * 1024);
    let (cancels, starved) = on_executor(async move {
        let (ring, driver) = start_ring(TaskRun::Defer, 128, &listener);
        receive_all(&ring, 1, 1024 * 1024, Duration::from_millis(300)).await;
        let counts = (ring.held_cancels.get(), ring.starvations.get());
        finish(ring, driver).await;
        drop(listener);
        counts
    });
    assert!(cancels > 0, "the receive was never cancelled at the cap");
    assert_eq!(starved, 0, "one connection emptied a pool of 128 buffers");
    for client in clients {
        assert_eq!(&client.join().expect("client"), b"ok");
    }
}

#[test]
fn a_stream_dropped_with_a_send_in_flight_is_cancelled_and_its_socket_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // A client that does not read: the server's send of 64 MiB stays in the kernel.
    let client = TcpStream::connect(addr).expect("connect");
    let in_flight = on_executor(async move {
        let (ring, driver) = start_ring(TaskRun::Defer, 16, &listener);
        let mut stream = ring.stream(ring.accept().await.expect("accept"));
        let big = vec![7u8; 64 << 20];
        let finished = futures_lite::future::or(
            async {
                stream.write_all(&big).await.expect("send");
                true
            },
            async {
                glommio::timer::sleep(Duration::from_millis(300)).await;
                false
            },
        )
        .await;
        assert!(!finished, "64 MiB went into a client that does not read");
        drop(big);
        let in_flight = ring.socket(0).map(|s| s.borrow().in_flight).unwrap_or(0);
        drop(stream);
        finish(ring, driver).await;
        drop(listener);
        in_flight
    });
    assert!(
        in_flight > 0,
        "no send was in flight; the test tests nothing"
    );
    // The socket was closed: the client reads what was sent, then the end.
    let mut client = client;
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut sink = vec![0; 1 << 20];
    loop {
        match client.read(&mut sink) {
            Ok(0) | Err(_) if started.elapsed() < Duration::from_secs(10) => break,
            Ok(_) => {}
            Err(err) => panic!("the socket was not closed: {err}"),
        }
    }
}

/// The core sleeps on the ring (glommio's park hook), so glommio's own wake-ups must still
/// reach it: a timer, a message from another thread (the store thread's replies and the owner
/// core's channels work that way), and a client's bytes after both.
/// The bounds are generous: this checks that no wake-up is lost or parked behind the ring,
/// not how fast the machine is (bench/run.sh measures that).
#[test]
fn timers_other_threads_and_clients_all_wake_a_core_whose_ring_is_idle() {
    for taskrun in [TaskRun::Coop, TaskRun::Defer] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (timer_late, message_late) = on_executor(async move {
            let (ring, driver) = start_ring(taskrun, 16, &listener);
            glommio::timer::sleep(Duration::from_millis(50)).await;

            let started = Instant::now();
            glommio::timer::sleep(Duration::from_millis(10)).await;
            let timer_late = started.elapsed().saturating_sub(Duration::from_millis(10));

            let (tx, rx) = flume::bounded(1);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                let _ = tx.send(Instant::now());
            });
            let sent = rx.recv_async().await.expect("message");
            let message_late = sent.elapsed();

            let client = std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(b"ping").expect("send");
                let mut answer = [0; 4];
                s.read_exact(&mut answer).expect("answer");
                answer
            });
            let mut stream = ring.stream(ring.accept().await.expect("accept"));
            let mut got = [0; 4];
            let mut n = 0;
            while n < 4 {
                n += stream.read(&mut got[n..]).await.expect("read");
            }
            stream.write_all(b"pong").await.expect("answer");
            drop(stream);
            assert_eq!(&got, b"ping");
            assert_eq!(&client.join().expect("client"), b"pong");
            finish(ring, driver).await;
            drop(listener);
            (timer_late, message_late)
        });
        let bound = Duration::from_millis(200);
        assert_late_under(
            timer_late,
            bound,
            format_args!("{taskrun:?}: a 10 ms timer"),
        );
        assert_late_under(
            message_late,
            bound,
            format_args!("{taskrun:?}: a message from another thread"),
        );
    }
}

/// How late a 1 ms timer and a message from another thread arrive while a client floods the
/// ring (so its driver always finds completions and yields instead of sleeping), on an
/// executor whose preemption timer is `preempt`.
fn lateness_under_flood(preempt: Duration) -> (Duration, Duration) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        let chunk = [7u8; 512];
        while !flooding.load(std::sync::atomic::Ordering::Relaxed) {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let late = on_executor_preempting_every(preempt, async move {
        let (ring, driver) = start_ring(TaskRun::Coop, 64, &listener);
        let mut stream = ring.stream(ring.accept().await.expect("accept"));
        let reader = glommio::spawn_local(async move {
            // Serving costs more CPU than sending: the ring always has bytes waiting, as under
            // a flood of pipelined requests.
            let mut buf = vec![0; 512];
            while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {
                let served = Instant::now();
                while served.elapsed() < Duration::from_micros(20) {
                    std::hint::spin_loop();
                }
                // A connection yields while its answer is sent.
                futures_lite::future::yield_now().await;
            }
        });
        // Let the flood settle in.
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let mut timer_late = Duration::ZERO;
        let mut message_late = Duration::ZERO;
        for _ in 0..5 {
            let started = Instant::now();
            glommio::timer::sleep(Duration::from_millis(1)).await;
            timer_late = timer_late.max(started.elapsed() - Duration::from_millis(1));

            let (tx, rx) = flume::bounded(1);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(3));
                let _ = tx.send(Instant::now());
            });
            let sent = rx.recv_async().await.expect("message");
            message_late = message_late.max(sent.elapsed());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.await;
        finish(ring, driver).await;
        drop(listener);
        (timer_late, message_late)
    });
    client.join().expect("client");
    late
}

#[test]
fn a_flooded_ring_still_lets_timers_and_other_threads_in_within_the_preemption_period() {
    // With `PREEMPT_TIMER` both arrive within a few periods; with glommio's default period
    // (100 ms) they would wait about a whole period. The bound lies between the two, far from
    // both, so a loaded machine does not make it flaky.
    let bound = Duration::from_millis(50);
    let (timer_late, message_late) = lateness_under_flood(crate::server::executor::PREEMPT_TIMER);
    assert_late_under(timer_late, bound, "a 1 ms timer");
    assert_late_under(message_late, bound, "a message from another thread");
}

/// Trials per wake-up source.
const TRIALS: usize = 5;
/// How long each source waits before it fires: long enough that the core is parked by then.
const PAUSE: Duration = Duration::from_millis(15);

/// `fut`'s output; panics after a second (a lost wake-up, which the test reports as such
/// rather than hanging).
async fn within_a_second<T>(fut: impl std::future::Future<Output = T>) -> T {
    futures_lite::future::or(fut, async {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        panic!("no wake-up within a second: lost");
    })
    .await
}

/// How late each of [`TRIALS`] glommio timers of [`PAUSE`] fired.
async fn timer_lateness() -> Vec<Duration> {
    let mut late = Vec::new();
    for _ in 0..TRIALS {
        let started = Instant::now();
        glommio::timer::sleep(PAUSE).await;
        late.push(started.elapsed().saturating_sub(PAUSE));
    }
    late
}

/// How long each of [`TRIALS`] messages, sent by another thread after [`PAUSE`], took to
/// reach the core.
async fn message_lateness() -> Vec<Duration> {
    let mut late = Vec::new();
    for _ in 0..TRIALS {
        let (tx, rx) = flume::bounded(1);
        std::thread::spawn(move || {
            std::thread::sleep(PAUSE);
            let _ = tx.send(Instant::now());
        });
        let sent = within_a_second(async { rx.recv_async().await.expect("message") }).await;
        late.push(sent.elapsed());
    }
    late
}

/// How long each of [`TRIALS`] connections, made after [`PAUSE`], took to be accepted.
async fn connection_lateness(ring: &Rc<Ring>, addr: SocketAddr) -> Vec<Duration> {
    let mut late = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..TRIALS {
        let (tx, rx) = std::sync::mpsc::channel();
        clients.push(std::thread::spawn(move || {
            std::thread::sleep(PAUSE);
            let _ = tx.send(Instant::now());
            TcpStream::connect(addr).expect("connect")
        }));
        let fd = within_a_second(ring.accept()).await.expect("accept");
        late.push(rx.recv().expect("connect time").elapsed());
        drop(ring.stream(fd));
    }
    for client in clients {
        drop(client.join().expect("client"));
    }
    late
}

/// How long each of [`TRIALS`] bytes, sent by one client [`PAUSE`] apart, took to be read.
async fn client_bytes_lateness(ring: &Rc<Ring>, addr: SocketAddr) -> Vec<Duration> {
    let (tx, rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        for _ in 0..TRIALS {
            std::thread::sleep(PAUSE);
            let _ = tx.send(Instant::now());
            s.write_all(b"x").expect("send");
        }
        s
    });
    let mut stream = ring.stream(ring.accept().await.expect("accept"));
    let mut late = Vec::new();
    let mut byte = [0; 1];
    for _ in 0..TRIALS {
        let n = within_a_second(stream.read(&mut byte)).await.expect("read");
        assert_eq!(n, 1);
        late.push(rx.recv().expect("send time").elapsed());
    }
    drop(stream);
    drop(client.join().expect("client"));
    late
}

/// Every source that can end a parked core's sleep, each measured from the moment it fires
/// to the moment the core runs: a client's bytes, a new connection, a glommio timer, and a
/// message from another thread (how the store thread's replies, the owner core's channels,
/// a reloaded dataset and a stop signal reach a core: flume channels whose wakers go through
/// glommio's eventfd). The best trial must be within 2 ms (the source really wakes the core)
/// and the worst within 100 ms (nothing is left for a later, unrelated wake-up: with no
/// other timer on this executor, a lost wake-up waits for the test's one-second bound).
#[test]
fn every_wake_up_source_reaches_a_parked_core_within_milliseconds() {
    for taskrun in [TaskRun::Coop, TaskRun::Defer] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let results = on_executor(async move {
            let (ring, driver) = start_ring(taskrun, 16, &listener);
            let results = vec![
                ("a timer", timer_lateness().await),
                ("a message from another thread", message_lateness().await),
                ("a new connection", connection_lateness(&ring, addr).await),
                ("a client's bytes", client_bytes_lateness(&ring, addr).await),
            ];
            finish(ring, driver).await;
            drop(listener);
            results
        });
        for (source, late) in results {
            let best = late.iter().min().copied().unwrap_or_default();
            let worst = late.iter().max().copied().unwrap_or_default();
            assert_late_under(
                best,
                Duration::from_millis(2),
                format_args!("{taskrun:?}: {source} woke the core, at best ({late:?})"),
            );
            assert_late_under(
                worst,
                Duration::from_millis(100),
                format_args!("{taskrun:?}: {source} woke the core, at worst ({late:?})"),
            );
        }
    }
}

/// A response larger than the socket can take: its quiet first send (MSG_DONTWAIT) must end
/// within the kernel entry that issued it, with the bytes it took, and the rest go as plain
/// sends that wait for the client to read. Checks every byte arrives in order, and that no
/// send posted a completion after the ring had counted it over (which would mean the kernel
/// kept a quiet send waiting, and used its buffer, after tally took it back).
#[test]
fn a_response_larger_than_the_socket_takes_arrives_whole_after_a_quiet_first_send() {
    const BYTES: usize = 8 * 1024 * 1024;
    for taskrun in [TaskRun::Coop, TaskRun::Defer] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            // Not reading yet: the server's first send fills the socket and stops short.
            std::thread::sleep(Duration::from_millis(200));
            let mut got = Vec::with_capacity(BYTES);
            s.read_to_end(&mut got).expect("read");
            got
        });
        let late = on_executor(async move {
            let (ring, driver) = start_ring(taskrun, 16, &listener);
            let mut stream = ring.stream(ring.accept().await.expect("accept"));
            stream.write_all(&pattern(9, BYTES)).await.expect("write");
            drop(stream);
            let late = ring.late_sends.get();
            finish(ring, driver).await;
            drop(listener);
            late
        });
        let got = client.join().expect("client");
        assert_eq!(got.len(), BYTES, "{taskrun:?}: bytes received");
        assert!(got == pattern(9, BYTES), "{taskrun:?}: the bytes differ");
        assert_eq!(
            late, 0,
            "{taskrun:?}: a send completed after it was counted over"
        );
    }
}
