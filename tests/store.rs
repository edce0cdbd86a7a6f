//! The counter store (`tally::counter::store`) against a real PostgreSQL: exact counts,
//! `highest_seen`, concurrent instances on one row, and faults (server stopped, row locked,
//! database unreachable), where an `add` must fail rather than return an unconfirmed `Ok`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cut_proxy::{Cut, CutProxy};
use common::pg::{TestPg, TlsPg};
use tally::counter::store::{
    self, CommitError, Committed, KeyOutcome, KeyedIncrement, StoreConfig, StoreHandle,
};

fn config(url: &str, commit_timeout: Duration) -> StoreConfig {
    StoreConfig {
        url: url.to_owned(),
        commit_timeout,
        refresh_interval: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(2),
        cpu: None,
        idempotency_retention: store::DEFAULT_IDEMPOTENCY_RETENTION,
        named: None,
    }
}

fn spawn(url: &str, commit_timeout: Duration) -> StoreHandle {
    store::spawn(config(url, commit_timeout)).expect("store thread")
}

async fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

async fn connected(handle: &StoreHandle) -> bool {
    wait_for(Duration::from_secs(15), || handle.is_connected()).await
}

async fn row_count(pg: &TestPg) -> i64 {
    pg.client()
        .await
        .query_one("SELECT count FROM tally_counter WHERE id = 1", &[])
        .await
        .expect("read row")
        .get(0)
}

#[tokio::test]
async fn add_returns_the_count_right_after_its_delta() {
    let pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&store).await, "store never connected");

    let mut count = store.add(1).await.expect("first add");
    assert_eq!(count, 1, "a fresh database starts at 0");
    let started = Instant::now();
    const ADDS: i64 = 500;
    for i in 0..ADDS {
        let delta = i % 7 + 1;
        let next = store.add(delta).await.expect("add");
        assert_eq!(next, count + delta);
        count = next;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{ADDS} sequential add() calls: {:.0} commits/s, mean {:.0} µs",
        ADDS as f64 / elapsed.as_secs_f64(),
        elapsed.as_micros() as f64 / ADDS as f64
    );

    assert_eq!(store.highest_seen(), Some(count));
    assert_eq!(row_count(&pg).await, count);
    let stats = store.stats();
    assert_eq!(stats.commits, ADDS as u64 + 1);
    assert_eq!(stats.committed_delta_sum, count as u64);
    store.shutdown();
}

#[tokio::test]
async fn a_row_lowered_below_a_returned_count_is_refused_until_raised_again() {
    let pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&store).await);
    for _ in 0..3 {
        store.add(1).await.expect("add");
    }
    let sql = pg.client().await;

    // Lowered by less than the next delta: the commit returns more than 3, yet its values
    // 3..=7 include 3, which was returned already.
    sql.batch_execute("UPDATE tally_counter SET count = 2")
        .await
        .expect("lower the row");
    assert_eq!(
        store.add(5).await,
        Err(CommitError::RowLowered {
            row: 7,
            highest_returned: 3
        })
    );
    // That refused commit lifted the row past 3 itself: nothing below 8 can come back.
    assert_eq!(store.add(1).await, Ok(8));

    // Lowered far below: refused, and from then on without touching the row.
    sql.batch_execute("UPDATE tally_counter SET count = 0")
        .await
        .expect("lower the row again");
    assert_eq!(
        store.add(1).await,
        Err(CommitError::RowLowered {
            row: 1,
            highest_returned: 8
        })
    );
    let refused = store.add(1).await;
    assert!(
        matches!(refused, Err(CommitError::RowLowered { row: 1, .. })),
        "{refused:?}"
    );
    assert_eq!(row_count(&pg).await, 1);
    assert!(store.row_lowered().is_some());
    assert_eq!(store.stats().commit_errors_row_lowered, 3);

    // The operator raises it to the highest count returned (docs/operations.md, "When the counter row goes backwards").
    sql.batch_execute("UPDATE tally_counter SET count = GREATEST(count, 8)")
        .await
        .expect("raise the row");
    assert!(
        wait_for(Duration::from_secs(2), || store.row_lowered().is_none()).await,
        "the refresh did not notice the raised row"
    );
    assert_eq!(store.add(1).await, Ok(9));
    store.shutdown();
}

#[tokio::test]
async fn a_raised_row_is_noticed_by_the_next_add_without_waiting_for_a_refresh() {
    let pg = TestPg::start();
    let mut config = config(pg.url(), Duration::from_secs(5));
    config.refresh_interval = Duration::from_secs(3600);
    let store = store::spawn(config).expect("store thread");
    assert!(connected(&store).await);
    assert_eq!(store.add(10).await, Ok(10));
    let sql = pg.client().await;
    sql.batch_execute("UPDATE tally_counter SET count = 1")
        .await
        .expect("lower the row");
    assert!(matches!(
        store.add(1).await,
        Err(CommitError::RowLowered { .. })
    ));
    sql.batch_execute("UPDATE tally_counter SET count = 100")
        .await
        .expect("raise the row");
    assert_eq!(store.add(1).await, Ok(101));
    store.shutdown();
}

#[tokio::test]
async fn highest_seen_follows_another_instance_writing_the_same_row() {
    let pg = TestPg::start();
    let writer = spawn(pg.url(), Duration::from_secs(5));
    let reader = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&writer).await && connected(&reader).await);
    assert!(wait_for(Duration::from_secs(2), || reader.highest_seen() == Some(0)).await);

    let mut last = 0;
    for _ in 0..10 {
        last = writer.add(3).await.expect("add");
    }
    assert_eq!(writer.highest_seen(), Some(last));
    assert!(
        wait_for(Duration::from_secs(2), || reader.highest_seen()
            == Some(last))
        .await,
        "reader saw {:?}, writer reached {last}",
        reader.highest_seen()
    );
    writer.shutdown();
    reader.shutdown();
}

#[tokio::test]
async fn stores_starting_together_create_the_schema_once_and_lose_no_update() {
    let pg = TestPg::start();
    const STORES: usize = 4;
    const ADDS_EACH: usize = 150;
    let stores: Vec<StoreHandle> = (0..STORES)
        .map(|_| spawn(pg.url(), Duration::from_secs(5)))
        .collect();
    for store in &stores {
        assert!(connected(store).await, "a store never connected");
    }

    let mut tasks = Vec::new();
    for store in &stores {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut values = Vec::with_capacity(ADDS_EACH);
            for _ in 0..ADDS_EACH {
                values.push(store.add(1).await.expect("add"));
            }
            values
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        for value in task.await.expect("task") {
            assert!(all.insert(value), "value {value} handed out twice");
        }
    }
    let total = (STORES * ADDS_EACH) as i64;
    assert_eq!(all, (1..=total).collect::<BTreeSet<i64>>());
    assert_eq!(row_count(&pg).await, total);
    for store in &stores {
        store.shutdown();
    }
}

#[tokio::test]
async fn a_stopped_postgres_fails_adds_and_is_reconnected_to_when_back() {
    let mut pg = TestPg::start();
    let commit_timeout = Duration::from_secs(2);
    let store = spawn(pg.url(), commit_timeout);
    assert!(connected(&store).await);
    let before = store.add(1).await.expect("add while up");

    pg.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let result = store.add(1).await;
        assert!(
            result.is_err(),
            "add returned {result:?} with PostgreSQL down"
        );
        assert!(
            started.elapsed() <= commit_timeout + Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
    }
    assert!(wait_for(Duration::from_secs(2), || !store.is_connected()).await);
    assert!(matches!(
        store.add(1).await,
        Err(CommitError::Unavailable(_))
    ));

    pg.start_again();
    assert!(connected(&store).await, "store did not reconnect by itself");
    let after = store.add(1).await.expect("add after restart");
    // Nothing could commit while the server was down.
    assert_eq!(after, before + 1);
    let stats = store.stats();
    assert!(stats.connects >= 2 && stats.disconnects >= 1, "{stats:?}");
    store.shutdown();
}

/// A restart of PostgreSQL shorter than the commit timeout costs no increment: one sent while
/// it is down waits for the reconnection and commits then (docs/api.md, "Endpoints": 503 only when
/// PostgreSQL stays away past the commit timeout).
#[test]
fn an_increment_sent_while_postgres_restarts_waits_for_it_and_commits() {
    let mut pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(5));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    assert!(runtime.block_on(connected(&store)));
    let before = runtime.block_on(store.add(1)).expect("add while up");

    pg.stop();
    assert!(runtime.block_on(wait_for(Duration::from_secs(2), || !store.is_connected())));
    let waiting = {
        let store = store.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = futures_lite::future::block_on(store.add(1));
            (result, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    pg.start_again();
    let (result, waited) = waiting.join().expect("the waiting add");
    assert_eq!(result, Ok(before + 1), "after waiting {waited:?}");
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    // Found within the short pause of a waiting increment, not a doubled back-off.
    assert!(waited < Duration::from_millis(3500), "{waited:?}");
    assert_eq!(runtime.block_on(store.add(1)), Ok(before + 2));
    store.shutdown();
}

/// Past the commit timeout, an outage is reported at once: increments do not pile up waiting
/// for a PostgreSQL that stays away.
#[tokio::test]
async fn an_increment_held_in_an_outage_gets_unavailable_at_its_deadline() {
    let mut pg = TestPg::start();
    let commit_timeout = Duration::from_secs(1);
    let store = spawn(pg.url(), commit_timeout);
    assert!(connected(&store).await);
    store.add(1).await.expect("add while up");
    pg.stop();
    assert!(wait_for(Duration::from_secs(2), || !store.is_connected()).await);
    let started = Instant::now();
    let held = store.add(1).await;
    assert!(matches!(held, Err(CommitError::Unavailable(_))), "{held:?}");
    assert!(started.elapsed() <= commit_timeout + Duration::from_millis(300));
    // The outage is now older than the commit timeout.
    tokio::time::sleep(commit_timeout).await;
    let started = Instant::now();
    assert!(matches!(
        store.add(1).await,
        Err(CommitError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    store.shutdown();
}

#[tokio::test]
async fn an_update_blocked_past_the_commit_timeout_is_a_timeout_not_ok() {
    let pg = TestPg::start();
    let commit_timeout = Duration::from_secs(1);
    let store = spawn(pg.url(), commit_timeout);
    assert!(connected(&store).await);
    let before = store.add(1).await.expect("add");

    let locker = pg.client().await;
    locker
        .batch_execute("BEGIN; SELECT count FROM tally_counter WHERE id = 1 FOR UPDATE")
        .await
        .expect("lock the row");
    let started = Instant::now();
    assert_eq!(store.add(5).await, Err(CommitError::Timeout));
    let waited = started.elapsed();
    assert!(
        waited >= commit_timeout && waited < commit_timeout * 2,
        "{waited:?}"
    );
    locker.batch_execute("ROLLBACK").await.expect("unlock");

    assert!(connected(&store).await, "store did not reconnect");
    // The abandoned UPDATE may still commit (its outcome was unknown, not failed).
    let after = store.add(1).await.expect("add after the lock");
    assert!(after == before + 1 || after == before + 6, "{after}");
    assert_eq!(store.stats().commit_errors_timeout, 1);
    store.shutdown();
}

#[tokio::test]
async fn shutdown_answers_queued_adds_then_refuses_new_ones() {
    let pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&store).await);

    let queued: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.add(1).await })
        })
        .collect();
    // Let every task send its request before the shutdown message.
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    store.shutdown();
    let mut values = BTreeSet::new();
    for task in queued {
        values.insert(task.await.expect("task").expect("queued add answered"));
    }
    assert_eq!(values, (1..=20).collect::<BTreeSet<i64>>());
    assert!(!store.is_connected());
    assert!(matches!(
        store.add(1).await,
        Err(CommitError::Unavailable(_))
    ));
}

#[tokio::test]
async fn an_unreachable_database_refuses_adds_at_once() {
    let store = spawn(
        "host=/tmp/tally-no-such-dir port=5432 user=tally dbname=postgres",
        Duration::from_secs(5),
    );
    let started = Instant::now();
    assert!(matches!(
        store.add(1).await,
        Err(CommitError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(store.add(0).await, Err(CommitError::InvalidDelta(0)));
    assert_eq!(store.add(-3).await, Err(CommitError::InvalidDelta(-3)));
    assert!(!store.is_connected());
    assert_eq!(store.highest_seen(), None);
    assert!(
        wait_for(Duration::from_secs(2), || store.stats().connect_failures
            >= 2)
        .await
    );
    let started = Instant::now();
    store.shutdown();
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_restart_under_load_never_confirms_an_uncommitted_increment() {
    let mut pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(2));
    let load = {
        let store = store.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                assert!(connected(&store).await);
                let mut confirmed = Vec::new();
                let (mut refused, mut unknown) = (0, 0);
                let deadline = Instant::now() + Duration::from_secs(4);
                while Instant::now() < deadline {
                    match store.add(1).await {
                        Ok(value) => confirmed.push(value),
                        Err(error) => {
                            match error {
                                CommitError::Timeout | CommitError::Unknown(_) => unknown += 1,
                                _ => refused += 1,
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                (confirmed, refused, unknown)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    pg.restart();
    let (confirmed, refused, unknown) = load.join().expect("load thread");
    let stats = store.stats();
    store.shutdown();

    let distinct: BTreeSet<i64> = confirmed.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        confirmed.len(),
        "a value was confirmed twice"
    );
    assert!(stats.disconnects >= 1, "the restart went unnoticed");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let row = runtime.block_on(row_count(&pg));
    let highest = confirmed.last().copied().unwrap_or(0);
    // Every confirmed value is durable; only an outcome left unknown may have committed
    // unseen (refusals are known not applied).
    assert!(row >= highest, "row {row} is behind confirmed {highest}");
    assert!(row <= highest + unknown, "row {row} beyond every attempt");
    assert!(confirmed.windows(2).all(|pair| pair[0] < pair[1]));
    if unknown == 0 {
        // The commit cut by the restart was settled: no value was lost either.
        assert_eq!(confirmed, (1..=row).collect::<Vec<i64>>());
    }
    eprintln!(
        "restart under load: {} confirmed, {refused} refused, {unknown} unknown, row {row}",
        confirmed.len()
    );
}

/// A delta no other `add` in these tests uses, so the proxy finds its statement.
const MARKED_DELTA: i64 = 0x5eed_0001;

async fn through_proxy(pg: &TestPg) -> (CutProxy, StoreHandle, i64) {
    let proxy = CutProxy::start(pg);
    let store = spawn(&proxy.url, Duration::from_secs(5));
    assert!(
        connected(&store).await,
        "store never connected through the proxy"
    );
    let before = store.add(1).await.expect("add through the proxy");
    (proxy, store, before)
}

#[tokio::test]
async fn a_commit_whose_reply_is_lost_is_settled_as_committed_and_answered() {
    let pg = TestPg::start();
    let (proxy, store, before) = through_proxy(&pg).await;

    proxy.arm(Cut::DropReply, MARKED_DELTA);
    let count = store.add(MARKED_DELTA).await;

    assert_eq!(
        count,
        Ok(before + MARKED_DELTA),
        "the lost reply was not settled"
    );
    assert_eq!(row_count(&pg).await, before + MARKED_DELTA, "counted once");
    let stats = store.stats();
    assert_eq!(stats.disconnects, 1, "{stats:?}");
    assert_eq!(stats.commit_errors_unknown + stats.commit_errors_timeout, 0);
    assert_eq!(stats.settled, 1);
    assert_eq!(store.add(1).await, Ok(before + MARKED_DELTA + 1));
    store.shutdown();
}

#[tokio::test]
async fn a_statement_lost_before_postgres_saw_it_is_run_again_once() {
    let pg = TestPg::start();
    let (proxy, store, before) = through_proxy(&pg).await;

    proxy.arm(Cut::DropStatement, MARKED_DELTA);
    let count = store.add(MARKED_DELTA).await;

    assert_eq!(count, Ok(before + MARKED_DELTA));
    assert_eq!(row_count(&pg).await, before + MARKED_DELTA, "counted once");
    assert_eq!(store.stats().disconnects, 1);
    store.shutdown();
}

/// The old session's statement is still waiting for the row lock when the store reconnects: the
/// store must not conclude "not committed" while that transaction can still commit.
#[tokio::test]
async fn an_in_doubt_batch_is_looked_up_only_after_the_old_transaction_ended() {
    let pg = TestPg::start();
    let (proxy, store, before) = through_proxy(&pg).await;
    let locker = pg.client().await;
    locker
        .batch_execute("BEGIN; SELECT count FROM tally_counter WHERE id = 1 FOR UPDATE")
        .await
        .expect("lock the row");

    proxy.arm(Cut::CloseAfterStatement, MARKED_DELTA);
    let adding = {
        let store = store.clone();
        tokio::spawn(async move { store.add(MARKED_DELTA).await })
    };
    // The old statement now waits for the lock, and so does the store's settling.
    assert!(
        wait_for(Duration::from_secs(3), || store.stats().disconnects == 1).await,
        "the cut went unnoticed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !adding.is_finished(),
        "answered while the old transaction could still commit"
    );
    locker.batch_execute("COMMIT").await.expect("unlock");

    let count = adding.await.expect("add task");
    assert_eq!(count, Ok(before + MARKED_DELTA));
    assert_eq!(row_count(&pg).await, before + MARKED_DELTA, "counted once");
    store.shutdown();
}

/// Other instances commit while one store's reply is lost: settling reads that store's own
/// record, which their batches do not overwrite.
#[tokio::test]
async fn a_lost_reply_is_settled_while_another_instance_keeps_committing() {
    let pg = TestPg::start();
    let (proxy, store, _) = through_proxy(&pg).await;
    let other = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&other).await);
    let others = {
        let other = other.clone();
        tokio::spawn(async move {
            let mut values = Vec::new();
            for _ in 0..200 {
                values.push(other.add(1).await.expect("the other instance's add"));
            }
            values
        })
    };

    proxy.arm(Cut::DropReply, MARKED_DELTA);
    let count = store.add(MARKED_DELTA).await.expect("settled as committed");
    let others = others.await.expect("other instance's task");

    let ours = count - MARKED_DELTA + 1..=count;
    assert!(
        others.iter().all(|value| !ours.contains(value)),
        "a value was handed out twice"
    );
    assert_eq!(row_count(&pg).await, 1 + MARKED_DELTA + 200, "counted once");
    assert_eq!(store.stats().settled, 1);
    store.shutdown();
    other.shutdown();
}

/// A copy of a settled batch's statement reaching the server late must fail, not count: the
/// store's row refuses a batch id that is not above the last one it recorded.
#[tokio::test]
async fn a_batch_id_already_recorded_cannot_be_recorded_again() {
    let pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&store).await);
    store.add(1).await.expect("add");
    let sql = pg.client().await;
    let row = sql
        .query_one("SELECT id, batch FROM tally_instances", &[])
        .await
        .expect("the store's row");
    let (instance, batch): (i64, i64) = (row.get(0), row.get(1));

    let again = sql
        .execute(
            "UPDATE tally_instances SET previous_batch = batch, batch = $2 WHERE id = $1",
            &[&instance, &batch],
        )
        .await;
    let code = again.expect_err("recorded twice").code().cloned();
    assert_eq!(code, Some(tokio_postgres::error::SqlState::CHECK_VIOLATION));
    store.shutdown();
}

/// A database set up by the previous version (a `tally_batches` row per batch) is used as it is:
/// the count and the keys carry on, and a lost reply is settled through the new record.
#[tokio::test]
async fn a_database_of_the_previous_schema_is_taken_over_with_its_count_and_keys() {
    let pg = TestPg::start();
    pg.client()
        .await
        .batch_execute(
            "CREATE TABLE tally_counter (id int PRIMARY KEY CHECK (id = 1), count bigint NOT NULL); \
             INSERT INTO tally_counter VALUES (1, 41); \
             CREATE TABLE tally_batches (id bigint PRIMARY KEY, count bigint NOT NULL, \
               keyed_delta bigint NOT NULL DEFAULT 0, \
               committed_at timestamptz NOT NULL DEFAULT now()); \
             CREATE INDEX tally_batches_committed_at ON tally_batches (committed_at); \
             INSERT INTO tally_batches (id, count) VALUES (9, 41); \
             CREATE TABLE tally_idempotency (key text PRIMARY KEY, by bigint NOT NULL, \
               count bigint NOT NULL, batch_id bigint NOT NULL, \
               created_at timestamptz NOT NULL DEFAULT now()); \
             CREATE INDEX tally_idempotency_created_at ON tally_idempotency (created_at); \
             INSERT INTO tally_idempotency (key, by, count, batch_id) VALUES ('old', 2, 40, 9)",
        )
        .await
        .expect("the previous schema");

    let (proxy, store, before) = through_proxy(&pg).await;
    assert_eq!(before, 42);
    let replay = store.add_batch(0, vec![keyed("old", 2)]).await;
    assert_eq!(replay.map(|c| c.keyed), Ok(vec![KeyOutcome::Replayed(40)]));

    proxy.arm(Cut::DropReply, MARKED_DELTA);
    assert_eq!(store.add(MARKED_DELTA).await, Ok(42 + MARKED_DELTA));
    assert_eq!(row_count(&pg).await, 42 + MARKED_DELTA, "counted once");
    assert_eq!(store.stats().settled, 1);

    // A lost reply of a batch that replayed an old key is settled key by key, old key included.
    proxy.arm(Cut::DropReply, MARKED_DELTA);
    let end = 42 + 2 * MARKED_DELTA;
    let settled = store
        .add_batch(MARKED_DELTA, vec![keyed("old", 2), keyed("fresh", 1)])
        .await;
    assert_eq!(
        settled,
        Ok(Committed {
            unkeyed_end: end,
            keyed: vec![KeyOutcome::Replayed(40), KeyOutcome::Counted(end + 1)],
        })
    );
    assert_eq!(store.stats().settled, 2);
    store.shutdown();
}

/// The digest a key of `/api/v1/counter` is stored as, computed by PostgreSQL from `key`
/// (an SQL expression): see `key_digest`.
fn digest_sql(key: &str) -> String {
    format!(
        "encode(substr(sha256('\\x00'::bytea || convert_to({key}, 'UTF8')), 1, 16), 'hex')::uuid"
    )
}

/// Upgrading from the text-keyed table: a key the earlier version counted within the
/// retention replays (or is a mismatch) rather than counting again, until it expires; an
/// expired one counts; the sweep then empties the old table and it stops being read.
#[tokio::test]
async fn keys_of_an_earlier_version_are_honoured_until_they_expire_then_swept() {
    let pg = TestPg::start();
    pg.client()
        .await
        .batch_execute(
            "CREATE TABLE tally_counter (id int PRIMARY KEY CHECK (id = 1), count bigint NOT NULL); \
             INSERT INTO tally_counter VALUES (1, 41); \
             CREATE TABLE tally_idempotency (key text PRIMARY KEY, by bigint NOT NULL, \
               count bigint NOT NULL, batch_id bigint NOT NULL, \
               created_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO tally_idempotency (key, by, count, batch_id) VALUES ('old', 2, 40, 9); \
             INSERT INTO tally_idempotency (key, by, count, batch_id, created_at) \
               VALUES ('stale', 1, 3, 8, now() - interval '1 hour')",
        )
        .await
        .expect("the earlier schema, with keys");
    let mut config = config(pg.url(), Duration::from_secs(5));
    config.idempotency_retention = Duration::from_secs(3);
    let store = store::spawn(config).expect("store thread");
    assert!(connected(&store).await);

    let first = store
        .add_batch(0, vec![keyed("old", 2), keyed("stale", 1)])
        .await;
    assert_eq!(
        first.map(|c| c.keyed),
        Ok(vec![KeyOutcome::Replayed(40), KeyOutcome::Counted(42)])
    );
    let changed = store.add_batch(0, vec![keyed("old", 3)]).await;
    assert_eq!(changed.map(|c| c.keyed), Ok(vec![KeyOutcome::Mismatch]));
    let again = store.add_batch(0, vec![keyed("stale", 1)]).await;
    assert_eq!(again.map(|c| c.keyed), Ok(vec![KeyOutcome::Replayed(42)]));

    let sql = pg.client().await;
    let stored = sql
        .query_one(
            &format!(
                "SELECT count FROM tally_keys WHERE digest = {}",
                digest_sql("'stale'")
            ),
            &[],
        )
        .await
        .expect("the counted key, by its digest");
    assert_eq!(stored.get::<_, i64>(0), 42);

    // Once 'old' expires the sweep deletes it, and it counts again like any expired key.
    let old_keys = || async {
        sql.query_one("SELECT count(*) FROM tally_idempotency", &[])
            .await
            .expect("count old keys")
            .get::<_, i64>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while old_keys().await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(old_keys().await, 0, "the old table was not swept");
    let expired = store.add_batch(0, vec![keyed("old", 2)]).await;
    assert_eq!(expired.map(|c| c.keyed), Ok(vec![KeyOutcome::Counted(44)]));
    assert_eq!(row_count(&pg).await, 44);
    store.shutdown();
}

/// An expired key the prune has not reached yet is counted again, with its new `by`, and its
/// row renewed (the upsert path; the sweep reaches 50,000 older keys' pages only slowly).
#[tokio::test]
async fn an_expired_key_still_stored_is_counted_again_and_renewed() {
    let pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&store).await);
    let sql = pg.client().await;
    sql.batch_execute(&format!(
        "INSERT INTO tally_keys (digest, by, count, batch_id, created_at) \
         SELECT {}, 1, n, 1, now() - interval '30 hours' \
         FROM generate_series(1, 50000) n; \
         INSERT INTO tally_keys (digest, by, count, batch_id, created_at) \
         VALUES ({}, 5, 7, 1, now() - interval '25 hours')",
        digest_sql("'older' || n"),
        digest_sql("'k'")
    ))
    .await
    .expect("expired keys");

    let counted = store.add_batch(0, vec![keyed("k", 1)]).await;
    assert_eq!(counted.map(|c| c.keyed), Ok(vec![KeyOutcome::Counted(1)]));
    let row = sql
        .query_one(
            &format!(
                "SELECT by, count, created_at > now() - interval '1 minute' \
                 FROM tally_keys WHERE digest = {}",
                digest_sql("'k'")
            ),
            &[],
        )
        .await
        .expect("the renewed key");
    let renewed: (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(renewed, (1, 1, true));
    let replay = store.add_batch(0, vec![keyed("k", 1)]).await;
    assert_eq!(replay.map(|c| c.keyed), Ok(vec![KeyOutcome::Replayed(1)]));
    store.shutdown();
}

/// Keys `k1` ..= `k50000`, each counted once with value n, as another writer would leave them.
async fn insert_50000_keys(sql: &tokio_postgres::Client) {
    sql.batch_execute(&format!(
        "INSERT INTO tally_keys (digest, by, count, batch_id) \
         SELECT {}, 1, n, 1 FROM generate_series(1, 50000) n",
        digest_sql("'k' || n")
    ))
    .await
    .expect("50,000 keys");
}

/// Rows sequential scans have read from the keys table so far (PostgreSQL's statistics).
async fn keys_table_rows_read(sql: &tokio_postgres::Client) -> i64 {
    sql.query_one(
        "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'tally_keys'",
        &[],
    )
    .await
    .expect("table statistics")
    .get::<_, i64>(0)
}

/// The prune runs every quarter second on the connection that commits: with nothing expired it
/// must not read the table, whatever its size and statistics (a young table has none). The
/// sweep reads 50,000 fresh keys' pages once per 6 hours at the default retention.
#[tokio::test]
async fn pruning_with_nothing_expired_does_not_scan_the_keys_table() {
    let pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&store).await);
    let sql = pg.client().await;
    insert_50000_keys(&sql).await;
    let scans = || keys_table_rows_read(&sql);
    // Statistics reach the view within a second or so of the store's backend going idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = scans().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        scans().await,
        before,
        "a prune read the keys table row by row"
    );
    store.shutdown();
}

/// The keyed statement's plan is cached once it has run a few times, here while the keys
/// table is nearly empty; it must still find keys through the primary key once the table has
/// grown, not read the table.
#[tokio::test]
async fn a_keyed_batch_probes_the_keys_index_even_when_its_plan_was_made_on_an_empty_table() {
    let pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&store).await);
    for n in 0..10 {
        let batch = vec![keyed(&format!("early-{n}"), 1), keyed("also", 1)];
        store
            .add_batch(0, batch)
            .await
            .expect("a batch on a young table");
    }
    let sql = pg.client().await;
    insert_50000_keys(&sql).await;
    let rows_read = || keys_table_rows_read(&sql);
    // Statistics reach the view within a second or so of a backend going idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = rows_read().await;
    for n in 0..10 {
        let batch = vec![keyed(&format!("late-{n}"), 1), keyed("k7", 1)];
        let committed = store.add_batch(0, batch).await.expect("a batch");
        assert_eq!(committed.keyed[1], KeyOutcome::Replayed(7));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read = rows_read().await - before;
    assert!(
        read < 1000,
        "keyed batches read {read} rows of the keys table"
    );
    store.shutdown();
}

fn keyed(key: &str, by: i64) -> KeyedIncrement {
    KeyedIncrement {
        key: key.into(),
        by,
    }
}

#[tokio::test]
async fn a_key_counts_once_then_replays_its_count_and_a_changed_by_is_a_mismatch() {
    let pg = TestPg::start();
    let store = spawn(pg.url(), Duration::from_secs(5));
    assert!(connected(&store).await);

    // Unkeyed values first (1..=2), then the keys in order.
    let first = store.add_batch(2, vec![keyed("a", 3), keyed("b", 1)]).await;
    assert_eq!(
        first,
        Ok(Committed {
            unkeyed_end: 2,
            keyed: vec![KeyOutcome::Counted(5), KeyOutcome::Counted(6)],
        })
    );
    let again = store.add_batch(0, vec![keyed("a", 3)]).await;
    assert_eq!(again.map(|c| c.keyed), Ok(vec![KeyOutcome::Replayed(5)]));
    let changed = store.add_batch(1, vec![keyed("b", 4), keyed("c", 2)]).await;
    assert_eq!(
        changed,
        Ok(Committed {
            unkeyed_end: 7,
            keyed: vec![KeyOutcome::Mismatch, KeyOutcome::Counted(9)],
        })
    );
    assert_eq!(
        row_count(&pg).await,
        9,
        "replays and mismatches count nothing"
    );
    let stats = store.stats();
    assert_eq!((stats.key_replays, stats.key_mismatches), (1, 1));
    assert_eq!(store.add(1).await, Ok(10));
    store.shutdown();
}

#[tokio::test]
async fn two_stores_given_the_same_key_at_once_count_it_once_and_answer_the_same_count() {
    let pg = TestPg::start();
    let (one, two) = (
        spawn(pg.url(), Duration::from_secs(5)),
        spawn(pg.url(), Duration::from_secs(5)),
    );
    assert!(connected(&one).await && connected(&two).await);
    for round in 0..20 {
        let key = format!("shared-{round}");
        let (a, b) = tokio::join!(
            one.add_batch(0, vec![keyed(&key, 1)]),
            two.add_batch(0, vec![keyed(&key, 1)])
        );
        let (a, b) = (a.expect("one").keyed[0], b.expect("two").keyed[0]);
        let value = |outcome| match outcome {
            KeyOutcome::Counted(n) | KeyOutcome::Replayed(n) => n,
            KeyOutcome::Mismatch => panic!("same by, yet a mismatch"),
        };
        assert_eq!(value(a), value(b), "round {round}: {a:?} vs {b:?}");
        assert!(
            matches!(a, KeyOutcome::Counted(_)) != matches!(b, KeyOutcome::Counted(_)),
            "round {round}: counted by exactly one: {a:?} {b:?}"
        );
        assert_eq!(row_count(&pg).await, round + 1);
    }
    one.shutdown();
    two.shutdown();
}

#[tokio::test]
async fn an_expired_key_counts_again_and_is_pruned() {
    let pg = TestPg::start();
    let mut config = config(pg.url(), Duration::from_secs(5));
    config.idempotency_retention = Duration::from_secs(1);
    let store = store::spawn(config).expect("store thread");
    assert!(connected(&store).await);
    let first = store.add_batch(0, vec![keyed("k", 1)]).await;
    assert_eq!(first.map(|c| c.keyed), Ok(vec![KeyOutcome::Counted(1)]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = store.add_batch(0, vec![keyed("k", 1)]).await;
    assert_eq!(later.map(|c| c.keyed), Ok(vec![KeyOutcome::Counted(2)]));

    // Once expired, the background prune deletes it.
    let sql = pg.client().await;
    let keys = || async {
        sql.query_one("SELECT count(*) FROM tally_keys", &[])
            .await
            .expect("count keys")
            .get::<_, i64>(0)
    };
    assert_eq!(keys().await, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while keys().await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(keys().await, 0, "the expired key was not pruned");
    store.shutdown();
}

/// Under a steady stream of keyed batches (each its own fresh keys) the sweep keeps up between
/// them: expired keys go, and every batch counts exactly what it should.
#[tokio::test]
async fn expired_keys_are_swept_while_keyed_batches_keep_coming() {
    let pg = TestPg::start();
    let mut config = config(pg.url(), Duration::from_secs(5));
    config.idempotency_retention = Duration::from_secs(1);
    let store = store::spawn(config).expect("store thread");
    assert!(connected(&store).await);
    let mut expected = 0;
    for n in 0..60 {
        let batch: Vec<KeyedIncrement> = (0..20).map(|k| keyed(&format!("{n}-{k}"), 1)).collect();
        let committed = store.add_batch(1, batch).await.expect("a keyed batch");
        assert_eq!(committed.unkeyed_end, expected + 1);
        let counted = (1..=20).map(|k| KeyOutcome::Counted(expected + 1 + k));
        assert!(committed.keyed.into_iter().eq(counted), "batch {n}");
        expected += 21;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(row_count(&pg).await, expected);
    let stored: i64 = pg
        .client()
        .await
        .query_one("SELECT count(*) FROM tally_keys", &[])
        .await
        .expect("count keys")
        .get(0);
    assert!(
        stored < 60 * 20 / 2,
        "{stored} keys left: the sweep fell behind"
    );
    store.shutdown();
}

#[tokio::test]
async fn a_keyed_batch_whose_reply_or_statement_is_lost_is_settled_key_by_key() {
    let pg = TestPg::start();
    let (proxy, store, before) = through_proxy(&pg).await;
    let replayed = store.add_batch(0, vec![keyed("old", 2)]).await;
    assert_eq!(
        replayed.map(|c| c.keyed),
        Ok(vec![KeyOutcome::Counted(before + 2)])
    );

    proxy.arm(Cut::DropReply, MARKED_DELTA);
    let lost_reply = store
        .add_batch(MARKED_DELTA, vec![keyed("old", 2), keyed("new", 3)])
        .await;
    let end = before + 2 + MARKED_DELTA;
    assert_eq!(
        lost_reply,
        Ok(Committed {
            unkeyed_end: end,
            keyed: vec![
                KeyOutcome::Replayed(before + 2),
                KeyOutcome::Counted(end + 3)
            ],
        })
    );
    assert_eq!(row_count(&pg).await, end + 3);

    proxy.arm(Cut::DropStatement, MARKED_DELTA);
    let lost_statement = store
        .add_batch(MARKED_DELTA, vec![keyed("new", 3), keyed("newer", 1)])
        .await;
    let end = end + 3 + MARKED_DELTA;
    assert_eq!(
        lost_statement,
        Ok(Committed {
            unkeyed_end: end,
            keyed: vec![
                KeyOutcome::Replayed(end - MARKED_DELTA),
                KeyOutcome::Counted(end + 1)
            ],
        })
    );
    assert_eq!(row_count(&pg).await, end + 1);
    assert_eq!(store.stats().disconnects, 2);
    store.shutdown();
}

/// Sessions of application `tally` using TLS, as the server sees them.
async fn tls_sessions(pg: &TlsPg) -> i64 {
    pg.client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'tally'",
            &[],
        )
        .await
        .expect("read pg_stat_ssl")
        .get(0)
}

/// Connects a store with `url`, commits one increment and returns how many TLS sessions the
/// server has from tally meanwhile.
async fn commits_over(pg: &TlsPg, url: &str) -> i64 {
    let store = spawn(url, Duration::from_secs(5));
    assert!(connected(&store).await, "{url}: {:?}", store.add(1).await);
    store.add(1).await.expect("add");
    let sessions = tls_sessions(pg).await;
    store.shutdown();
    sessions
}

/// The reason a store that cannot connect gives its callers, once it has tried.
async fn refusal(url: &str) -> String {
    let store = spawn(url, Duration::from_secs(5));
    assert!(
        wait_for(Duration::from_secs(10), || store.stats().connect_failures
            >= 1)
        .await,
        "{url} never failed"
    );
    assert!(!store.is_connected(), "{url} connected");
    let refused = store.add(1).await;
    store.shutdown();
    match refused {
        Err(CommitError::Unavailable(reason)) => reason,
        other => panic!("{url}: {other:?}"),
    }
}

#[tokio::test]
async fn tls_modes_connect_to_a_server_with_a_self_signed_certificate() {
    let pg = TlsPg::start();
    let root = pg.root_cert().display().to_string();

    assert_eq!(commits_over(&pg, &pg.url("sslmode=require")).await, 1);
    // libpq's default, prefer, uses TLS when the server offers it.
    assert_eq!(commits_over(&pg, &pg.url("")).await, 1);
    assert_eq!(
        commits_over(
            &pg,
            &pg.url(&format!("sslmode=verify-full sslrootcert={root}"))
        )
        .await,
        1
    );
    // The certificate names localhost only: verify-ca checks the chain, not the name.
    let by_address = pg.url_to(
        "127.0.0.1",
        &format!("sslmode=verify-ca sslrootcert={root}"),
    );
    assert_eq!(commits_over(&pg, &by_address).await, 1);
    assert_eq!(commits_over(&pg, &pg.url("sslmode=disable")).await, 0);
    // The URL form, with the root file percent-encoded.
    let url = format!(
        "postgresql://{}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        tally::postgres::SUPERUSER,
        pg.port(),
        root.replace('/', "%2F")
    );
    assert_eq!(commits_over(&pg, &url).await, 1);
}

#[tokio::test]
async fn tls_verification_refuses_a_wrong_root_or_host_name_with_a_clear_error() {
    let pg = TlsPg::start();
    let root = pg.root_cert().display().to_string();
    let wrong = pg.wrong_root_cert().display().to_string();

    let reason = refusal(&pg.url(&format!("sslmode=verify-full sslrootcert={wrong}"))).await;
    assert!(
        reason.contains("TLS handshake")
            && reason.contains("UnknownIssuer")
            && reason.contains("sslmode=verify-full"),
        "{reason}"
    );
    // require with a root file checks the chain, as libpq does.
    let reason = refusal(&pg.url(&format!("sslmode=require sslrootcert={wrong}"))).await;
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    // The right root, but the certificate is not for 127.0.0.1.
    let reason = refusal(&pg.url_to(
        "127.0.0.1",
        &format!("sslmode=verify-full sslrootcert={root}"),
    ))
    .await;
    assert!(reason.contains("not valid for name"), "{reason}");
    let reason = refusal(&pg.url("sslmode=verify-full sslrootcert=/nonexistent/root.crt")).await;
    assert!(reason.contains("/nonexistent/root.crt"), "{reason}");
}
