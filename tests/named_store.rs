//! The named counters' store against a real PostgreSQL: a batch whose outcome is lost (reply
//! dropped, statement dropped, old transaction still running) is settled by its batch id and
//! counted once, keyed increments included.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cut_proxy::{Cut, CutProxy};
use common::pg::TestPg;
use tally::counter::store::{
    self, KeyOutcome, NamedCommitted, NamedConfig, NamedKeyed, NamedLimit, NamedWork, StoreConfig,
    StoreHandle,
};

/// A delta no other increment in these tests uses, so the proxy finds its statement.
const MARKED: i64 = 0x5eed_0002;

fn named_store(url: &str) -> StoreHandle {
    store::spawn(StoreConfig {
        url: url.to_owned(),
        commit_timeout: Duration::from_secs(5),
        refresh_interval: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(2),
        cpu: None,
        idempotency_retention: store::DEFAULT_IDEMPOTENCY_RETENTION,
        named: Some(NamedConfig {
            limit: Arc::new(NamedLimit::new(1000)),
            view_capacity: 100,
        }),
    })
    .expect("store thread")
}

async fn connected(handle: &StoreHandle) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if handle.is_connected() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn work(names: &[(&str, i64)], keyed: &[(u32, &str, i64)]) -> NamedWork {
    NamedWork {
        names: names.iter().map(|&(n, d)| (n.into(), d)).collect(),
        keyed: keyed
            .iter()
            .map(|&(name, key, by)| NamedKeyed {
                name,
                key: key.into(),
                by,
            })
            .collect(),
    }
}

async fn count_of(pg: &TestPg, name: &str) -> i64 {
    pg.client()
        .await
        .query_one("SELECT count FROM tally_counters WHERE name = $1", &[&name])
        .await
        .expect("read a named row")
        .get(0)
}

/// A store through the proxy, connected, with "a" at 1.
async fn through_proxy(pg: &TestPg) -> (CutProxy, StoreHandle) {
    let proxy = CutProxy::start(pg);
    let store = named_store(&proxy.url);
    assert!(connected(&store).await, "never connected through the proxy");
    let first = store.add_named(work(&[("a", 1)], &[])).await;
    assert_eq!(first.map(|c| c.counts), Ok(vec![Some(1)]));
    (proxy, store)
}

async fn lost_outcome_is_settled(cut: Cut) {
    let pg = TestPg::start();
    let (proxy, store) = through_proxy(&pg).await;
    proxy.arm(cut, MARKED);
    let committed = store.add_named(work(&[("a", MARKED), ("b", 2)], &[])).await;
    assert_eq!(
        committed,
        Ok(NamedCommitted {
            counts: vec![Some(1 + MARKED), Some(2)],
            keyed: Vec::new(),
        }),
        "{cut:?}: the batch was not settled"
    );
    assert_eq!(
        count_of(&pg, "a").await,
        1 + MARKED,
        "{cut:?}: counted once"
    );
    assert_eq!(count_of(&pg, "b").await, 2, "{cut:?}: counted once");
    let stats = store.stats();
    assert_eq!((stats.disconnects, stats.settled), (1, 1), "{stats:?}");
    store.shutdown();
}

#[tokio::test]
async fn a_named_batch_whose_reply_is_lost_is_settled_as_committed() {
    lost_outcome_is_settled(Cut::DropReply).await;
}

#[tokio::test]
async fn a_named_batch_lost_before_postgres_saw_it_is_run_again_once() {
    lost_outcome_is_settled(Cut::DropStatement).await;
}

#[tokio::test]
async fn a_keyed_named_batch_whose_reply_is_lost_answers_its_keys_and_counts_them_once() {
    let pg = TestPg::start();
    let (proxy, store) = through_proxy(&pg).await;
    proxy.arm(Cut::DropReply, MARKED);
    let keyed = work(
        &[("a", 0), ("c", 1)],
        &[(0, "key-1", MARKED), (1, "key-1", 3)],
    );
    let committed = store.add_named(keyed.clone()).await;
    assert_eq!(
        committed,
        Ok(NamedCommitted {
            counts: vec![Some(1), Some(1)],
            keyed: vec![
                Some(KeyOutcome::Counted(1 + MARKED)),
                Some(KeyOutcome::Counted(4))
            ],
        }),
        "the keyed batch was not settled"
    );
    assert_eq!(store.stats().settled, 1);
    // The same keys again: replays, counted nothing.
    let again = store.add_named(keyed).await.expect("the repeat");
    assert_eq!(
        again.keyed,
        vec![
            Some(KeyOutcome::Replayed(1 + MARKED)),
            Some(KeyOutcome::Replayed(4))
        ]
    );
    assert_eq!(count_of(&pg, "a").await, 1 + MARKED);
    assert_eq!(count_of(&pg, "c").await, 1 + 1 + 3);
    store.shutdown();
}

/// The old session's statement still waits for a row lock when the store reconnects: settling
/// must wait for it rather than conclude "not committed" while it can still commit.
#[tokio::test]
async fn an_in_doubt_named_batch_is_looked_up_only_after_the_old_transaction_ended() {
    let pg = TestPg::start();
    let (proxy, store) = through_proxy(&pg).await;
    let locker = pg.client().await;
    locker
        .batch_execute("BEGIN; SELECT count FROM tally_counters WHERE name = 'a' FOR UPDATE")
        .await
        .expect("lock a row");
    proxy.arm(Cut::CloseAfterStatement, MARKED);
    let adding = {
        let store = store.clone();
        tokio::spawn(async move { store.add_named(work(&[("a", MARKED)], &[])).await })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.stats().disconnects == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.stats().disconnects, 1, "the cut went unnoticed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !adding.is_finished(),
        "answered while the old transaction could still commit"
    );
    locker.batch_execute("COMMIT").await.expect("unlock");
    let committed = adding.await.expect("add task");
    assert_eq!(committed.map(|c| c.counts), Ok(vec![Some(1 + MARKED)]));
    assert_eq!(count_of(&pg, "a").await, 1 + MARKED, "counted once");
    store.shutdown();
}

/// Reads answer what PostgreSQL has (0 without a row), and the store remembers what it read and
/// committed; a delete forgets.
#[tokio::test]
async fn reads_deletes_and_what_the_store_remembers() {
    let pg = TestPg::start();
    let store = named_store(pg.url());
    assert!(connected(&store).await);
    assert_eq!(store.read_named(vec!["x".into()]).await, Ok(vec![0]));
    store
        .add_named(work(&[("x", 5)], &[]))
        .await
        .expect("add x");
    assert_eq!(store.named_count("x", Duration::from_secs(60)), Some(5));
    assert_eq!(store.delete_named("x".into()).await, Ok(Some(5)));
    assert_eq!(store.named_count("x", Duration::from_secs(60)), None);
    assert_eq!(store.delete_named("x".into()).await, Ok(None));
    assert_eq!(
        store.read_named(vec!["x".into(), "y".into()]).await,
        Ok(vec![0, 0])
    );
    store.shutdown();
}
