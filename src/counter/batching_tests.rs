//! Per-core batching (`CounterCore`, `Ticket`) without PostgreSQL: the test plays the owner
//! core, reading each `CoreBatch` from the `OwnerPort` and answering it with a base of its
//! choosing, or an error. Runs on a real glommio executor, as the cores do.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::wiring::{BatchAnswer, BatchReply, CoreBatch};
use super::*;

/// Locked memory for the test executor's registered buffers: these tests do no I/O, and
/// glommio's 10 MiB default exceeds the common 8 MiB `ulimit -l` (tests run in parallel).
const IO_MEMORY_BYTES: usize = 64 * 1024;
/// A test that waits longer than this for a batch or a ticket has hung: fail it instead.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `test` on a fresh glommio executor on this thread.
fn on_executor<T>(test: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .io_memory(IO_MEMORY_BYTES)
        .make()
        .expect("a glommio executor (needs io_uring and ulimit -l >= 512 KiB)")
        .run(test)
}

/// The deadline is polled first, so a step that only completes because the timer woke its
/// task (a lost wake-up) fails too.
async fn within_step_timeout<T>(what: &str, step: impl Future<Output = T>) -> T {
    let deadline = async {
        glommio::timer::sleep(STEP_TIMEOUT).await;
        panic!("waited over {STEP_TIMEOUT:?} for {what}");
    };
    futures_lite::future::or(deadline, step).await
}

/// A core's side, running its batcher and reply tasks as `server` does.
fn start_core(port: CorePort, max_batch: usize) -> Rc<CounterCore> {
    let core = CounterCore::new(port, max_batch);
    glommio::spawn_local(core.clone().run_batcher()).detach();
    glommio::spawn_local(core.clone().run_replies()).detach();
    core
}

/// Stands in for `run_owner` and the store: the count lives here, and each commit answers
/// with the count just before the batch, as the real owner does.
struct FakeOwner {
    port: OwnerPort,
    count: i64,
}

impl FakeOwner {
    fn new(port: OwnerPort, count: i64) -> Self {
        FakeOwner { port, count }
    }

    /// The next batch any core sent; `None` once every core closed and the queue is drained.
    async fn receive(&self) -> Option<CoreBatch> {
        within_step_timeout("a batch", self.port.batches.recv_async())
            .await
            .ok()
    }

    async fn receive_batch(&self) -> CoreBatch {
        self.receive().await.expect("a batch, not a closed queue")
    }

    /// Counts the unkeyed increments, then every key (the fake remembers none).
    fn commit(&mut self, batch: &CoreBatch) {
        let base = self.count;
        self.count += batch.delta;
        let keyed = batch
            .keyed
            .iter()
            .map(|k| {
                self.count += k.by;
                KeyOutcome::Counted(self.count)
            })
            .collect();
        self.reply(batch, Ok(BatchAnswer { base, keyed }));
    }

    fn fail(&self, batch: &CoreBatch, error: CommitError) {
        self.reply(batch, Err(error));
    }

    fn reply(&self, batch: &CoreBatch, reply: BatchReply) {
        self.port.replies[batch.core]
            .send(reply)
            .expect("the core's reply task is running");
    }
}

/// What the owner sees of a batch: (core, requests, delta).
fn shape(batch: &CoreBatch) -> (usize, u32, i64) {
    (batch.core, batch.requests, batch.delta)
}

async fn values(tickets: Vec<Ticket>) -> Vec<Result<i64, CommitError>> {
    let mut values = Vec::with_capacity(tickets.len());
    for ticket in tickets {
        values.push(within_step_timeout("a ticket", ticket).await);
    }
    values
}

#[test]
fn tickets_of_consecutive_batches_get_contiguous_values_in_request_order() {
    on_executor(async {
        let wiring = wire(1);
        let mut owner = FakeOwner::new(wiring.owner, 100);
        let core = start_core(wiring.cores.into_iter().next().unwrap(), 0);

        // Increments made in one round of work share one batch, sent as one message.
        let mut tickets = vec![core.increment(1), core.increment(5), core.increment(2)];
        let first = owner.receive_batch().await;
        assert_eq!(shape(&first), (0, 3, 8));
        // Made while the first batch is in flight: a second batch, behind it.
        tickets.extend([core.increment(3), core.increment(1)]);
        let second = owner.receive_batch().await;
        assert_eq!(shape(&second), (0, 2, 4));
        assert_eq!(core.in_flight(), 2);

        owner.commit(&first);
        owner.commit(&second);
        // Base 100 then 108; each value is the one before plus its own `by`: 1, 5, 2 | 3, 1.
        assert_eq!(
            values(tickets).await,
            [Ok(101), Ok(106), Ok(108), Ok(111), Ok(112)]
        );
        assert_eq!(core.in_flight(), 0);
    });
}

#[test]
fn each_core_gets_the_base_of_its_own_batch() {
    on_executor(async {
        let wiring = wire(2);
        let mut owner = FakeOwner::new(wiring.owner, 0);
        let mut ports = wiring.cores.into_iter();
        let core0 = start_core(ports.next().unwrap(), 0);
        let core1 = start_core(ports.next().unwrap(), 0);

        let on0 = vec![core0.increment(2), core0.increment(2)];
        let on1 = vec![core1.increment(10)];
        let mut batches = [owner.receive_batch().await, owner.receive_batch().await];
        batches.sort_by_key(|batch| batch.core);
        assert_eq!(shape(&batches[0]), (0, 2, 4));
        assert_eq!(shape(&batches[1]), (1, 1, 10));

        // Core 1's batch commits first: it gets the lower values.
        owner.commit(&batches[1]);
        owner.commit(&batches[0]);
        assert_eq!(values(on1).await, [Ok(10)]);
        assert_eq!(values(on0).await, [Ok(12), Ok(14)]);
    });
}

#[test]
fn a_failed_batch_fails_each_of_its_tickets_and_the_next_batch_still_commits() {
    on_executor(async {
        let wiring = wire(1);
        let mut owner = FakeOwner::new(wiring.owner, 7);
        let core = start_core(wiring.cores.into_iter().next().unwrap(), 0);

        let failed = vec![core.increment(1), core.increment(2)];
        let first = owner.receive_batch().await;
        let committed = vec![core.increment(4), core.increment(1)];
        let second = owner.receive_batch().await;

        owner.fail(&first, CommitError::Timeout);
        owner.commit(&second);
        assert_eq!(
            values(failed).await,
            [Err(CommitError::Timeout), Err(CommitError::Timeout)]
        );
        // The failed delta never reached the count: the next batch starts where it stood.
        assert_eq!(values(committed).await, [Ok(11), Ok(12)]);
    });
}

#[test]
fn max_batch_splits_a_round_of_increments_into_batches_of_at_most_that_many() {
    on_executor(async {
        let wiring = wire(1);
        let mut owner = FakeOwner::new(wiring.owner, 0);
        let core = start_core(wiring.cores.into_iter().next().unwrap(), 2);

        let tickets: Vec<Ticket> = (1..=5).map(|by| core.increment(by)).collect();
        let mut shapes = Vec::new();
        for _ in 0..3 {
            let batch = owner.receive_batch().await;
            shapes.push(shape(&batch));
            owner.commit(&batch);
        }
        assert_eq!(shapes, [(0, 2, 3), (0, 2, 7), (0, 1, 5)]);
        assert_eq!(values(tickets).await, [Ok(1), Ok(3), Ok(6), Ok(10), Ok(15)]);
        assert!(owner.port.batches.is_empty());
    });
}

#[test]
fn close_sends_what_is_open_and_in_flight_tickets_still_resolve() {
    on_executor(async {
        let wiring = wire(1);
        let mut owner = FakeOwner::new(wiring.owner, 20);
        let core = start_core(wiring.cores.into_iter().next().unwrap(), 0);

        let sent = core.increment(1);
        let first = owner.receive_batch().await;
        // Still open when `close` runs (the batcher has not had a turn): `close` sends it.
        let open = core.increment(2);
        core.close();
        let second = owner.receive_batch().await;
        assert_eq!(shape(&second), (0, 1, 2));
        // The only core dropped its sender and the queue is drained: the owner's loop ends.
        assert!(owner.receive().await.is_none());

        owner.commit(&first);
        owner.commit(&second);
        assert_eq!(values(vec![sent, open]).await, [Ok(21), Ok(23)]);
    });
}

#[test]
fn an_increment_after_close_is_refused_without_reaching_the_owner() {
    on_executor(async {
        let wiring = wire(1);
        let owner = FakeOwner::new(wiring.owner, 0);
        let core = start_core(wiring.cores.into_iter().next().unwrap(), 0);

        core.close();
        let late = core.increment(1);
        assert!(matches!(
            within_step_timeout("the late ticket", late).await,
            Err(CommitError::Unavailable(_))
        ));
        assert!(owner.receive().await.is_none());
        assert_eq!(core.in_flight(), 0);
    });
}

#[test]
fn the_owner_queue_stays_open_until_every_core_has_closed() {
    on_executor(async {
        let wiring = wire(2);
        let owner = FakeOwner::new(wiring.owner, 0);
        let mut ports = wiring.cores.into_iter();
        let core0 = start_core(ports.next().unwrap(), 0);
        let core1 = start_core(ports.next().unwrap(), 0);

        core0.close();
        assert_eq!(
            owner.port.batches.try_recv().err(),
            Some(flume::TryRecvError::Empty)
        );
        core1.close();
        assert_eq!(
            owner.port.batches.try_recv().err(),
            Some(flume::TryRecvError::Disconnected)
        );
    });
}

#[test]
fn when_the_owner_loop_ends_in_flight_and_new_increments_fail_at_once() {
    on_executor(async {
        let wiring = wire(1);
        let owner = FakeOwner::new(wiring.owner, 0);
        let core = start_core(wiring.cores.into_iter().next().unwrap(), 0);

        let in_flight = core.increment(1);
        owner.receive_batch().await;
        assert_eq!(core.in_flight(), 1);
        // The owner's loop ended without answering: its port goes with it.
        drop(owner);

        let started = std::time::Instant::now();
        let answer = within_step_timeout("the in-flight ticket", in_flight).await;
        assert!(matches!(answer, Err(CommitError::Unknown(_))), "{answer:?}");
        let late = within_step_timeout("a new ticket", core.increment(1)).await;
        assert!(matches!(late, Err(CommitError::Unavailable(_))), "{late:?}");
        assert!(started.elapsed() < store::DEFAULT_COMMIT_TIMEOUT);
        assert_eq!(core.in_flight(), 0);
    });
}

#[test]
fn when_the_owner_core_dies_its_lease_fails_increments_and_readiness_turns_false() {
    on_executor(async {
        let store = store::spawn(store::StoreConfig::new(
            "host=/nonexistent/tally-test user=tally",
        ))
        .expect("store thread");
        let shared = Arc::new(CounterShared::new(store.clone(), 0));
        let mut wiring = wire(2);
        // As the owner core's thread does; its loop never runs here.
        let lease = wiring.owner.lease(&shared);
        let owner_stopped = |shared: &CounterShared| {
            shared
                .unavailable_reason()
                .is_some_and(|reason| reason.contains("owner core stopped"))
        };
        assert!(!owner_stopped(&shared));
        // A panic elsewhere on the owner core: glommio leaks the owner's task, so its port
        // (held here) is never dropped; only the lease on the thread's stack is.
        let owner = FakeOwner::new(wiring.owner, 0);
        let mut ports = wiring.cores.into_iter();
        let core0 = start_core(ports.next().unwrap(), 0);
        let core1 = start_core(ports.next().unwrap(), 0);

        let in_flight = [core0.increment(1), core1.increment(2)];
        owner.receive_batch().await;
        owner.receive_batch().await;
        drop(lease);

        let started = std::time::Instant::now();
        for ticket in in_flight {
            let answer = within_step_timeout("an in-flight ticket", ticket).await;
            assert!(matches!(answer, Err(CommitError::Unknown(_))), "{answer:?}");
        }
        for core in [&core0, &core1] {
            let late = within_step_timeout("a new ticket", core.increment(1)).await;
            assert!(matches!(late, Err(CommitError::Unavailable(_))), "{late:?}");
        }
        assert!(started.elapsed() < store::DEFAULT_COMMIT_TIMEOUT);
        assert!(owner_stopped(&shared), "{:?}", shared.unavailable_reason());
        assert!(
            owner.port.batches.is_empty(),
            "nothing is sent to a dead owner"
        );
        store.shutdown();
    });
}

#[test]
fn keyed_increments_ride_the_core_batch_and_a_repeated_key_goes_in_the_next() {
    on_executor(async {
        let wiring = wire(1);
        let mut owner = FakeOwner::new(wiring.owner, 10);
        let core = start_core(wiring.cores.into_iter().next().unwrap(), 0);

        let plain = core.increment(2);
        let a = core.increment_keyed(3, "a");
        let b = core.increment_keyed(1, "b");
        let a_again = core.increment_keyed(3, "a");
        let first = owner.receive_batch().await;
        let second = owner.receive_batch().await;
        assert_eq!(shape(&first), (0, 3, 2));
        assert_eq!(first.keyed.len(), 2);
        assert_eq!(shape(&second), (0, 1, 0));
        assert_eq!(&*second.keyed[0].key, "a");

        owner.commit(&first);
        owner.commit(&second);
        assert_eq!(plain.await, Ok(12));
        assert_eq!(a.await, Ok(KeyOutcome::Counted(15)));
        assert_eq!(b.await, Ok(KeyOutcome::Counted(16)));
        // The fake owner remembers no key; the store would answer Replayed(15).
        assert_eq!(a_again.await, Ok(KeyOutcome::Counted(19)));
    });
}
