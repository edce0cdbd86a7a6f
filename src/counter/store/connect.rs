//! Connecting: the connection string and TLS (see `tls`), the durability checks, the schema
//! and the prepared statements, all within the connect timeout. Returns a [`Connection`];
//! knows nothing of batches or of what the store does with it.

use tokio::sync::oneshot;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Socket, Statement};

use super::sql::{
    ADD, ADD_KEYED, CREATE_INSTANCES, CREATE_KEYS, CREATE_TABLE, FIND_BATCH, FIND_KEYS,
    INSERT_INSTANCE, INSERT_ROW, LOCK_ROW, OLD_KEYS_TIME_INDEX, READ, SCHEMA_LOCK_KEY, SWEEP_KEYS,
};
use super::tls::{self, Connector};
use super::{StoreConfig, CLOSE_TIMEOUT};

/// One open connection with its prepared statements.
pub(super) struct Connection {
    pub(super) client: Client,
    pub(super) add: Statement,
    pub(super) read: Statement,
    pub(super) lock_row: Statement,
    pub(super) find_batch: Statement,
    pub(super) insert_instance: Statement,
    pub(super) add_keyed: Statement,
    pub(super) find_keys: Statement,
    pub(super) sweep_keys: Statement,
    /// Drives the socket; ends when the connection does.
    pub(super) io: tokio::task::JoinHandle<()>,
    /// Fires (or errors) when `io` ends.
    pub(super) closed: oneshot::Receiver<()>,
}

impl Connection {
    /// Drops the client (which sends Terminate) and gives the I/O task a moment to flush it.
    pub(super) async fn close(self) {
        let Connection { client, io, .. } = self;
        drop(client);
        let abort = io.abort_handle();
        if tokio::time::timeout(CLOSE_TIMEOUT, io).await.is_err() {
            abort.abort();
        }
    }

    /// For a connection whose state is unknown: no goodbye, just close the socket.
    pub(super) fn abandon(self) {
        self.io.abort();
    }
}

/// Connects, checks durability settings, creates the schema if missing and prepares the two
/// statements, all within `connect_timeout`.
pub(super) async fn connect(config: &StoreConfig, highest_seen: i64) -> Result<Connection, String> {
    let (url, tls) = tls::split_connection_string(&config.url)
        .map_err(|error| format!("invalid database URL: {error}"))?;
    let mut pg_config: tokio_postgres::Config = url
        .parse()
        .map_err(|error| format!("invalid database URL: {error}"))?;
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("tally");
    }
    pg_config.connect_timeout(config.connect_timeout);
    let connector = tls.apply(&mut pg_config)?;
    let set_up = async {
        let opened = match connector {
            Connector::Plain => open(&pg_config, NoTls).await,
            Connector::Rustls(rustls) => open(&pg_config, rustls).await,
        };
        let (client, io, closed) = opened.map_err(|error| match error.as_db_error() {
            Some(_) => error.to_string(),
            // Transport and TLS failures: the cause (tokio-postgres's text omits it, e.g. why
            // a certificate was refused) and the TLS settings in force.
            None => {
                let mut text = error.to_string();
                let mut cause = std::error::Error::source(&error);
                while let Some(inner) = cause {
                    text.push_str(&format!(": {inner}"));
                    cause = inner.source();
                }
                format!("{text} ({tls})")
            }
        })?;
        // If set-up fails below, dropping the client ends the I/O task.
        prepare(client, io, closed, highest_seen).await
    };
    tokio::time::timeout(config.connect_timeout, set_up)
        .await
        .map_err(|_| {
            format!(
                "connecting and creating the schema took over {:?}",
                config.connect_timeout
            )
        })?
}

/// Opens a connection with `tls` and spawns the task that drives its socket.
async fn open<T>(
    pg_config: &tokio_postgres::Config,
    tls: T,
) -> Result<(Client, tokio::task::JoinHandle<()>, oneshot::Receiver<()>), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = pg_config.connect(tls).await?;
    let (closed_tx, closed) = oneshot::channel();
    let io = tokio::spawn(async move {
        if let Err(error) = connection.await {
            log::warn!("PostgreSQL connection: {error}");
        }
        let _ = closed_tx.send(());
    });
    Ok((client, io, closed))
}

async fn prepare(
    client: Client,
    io: tokio::task::JoinHandle<()>,
    closed: oneshot::Receiver<()>,
    highest_seen: i64,
) -> Result<Connection, String> {
    let fail = |what: &str| {
        let what = what.to_owned();
        move |error: tokio_postgres::Error| format!("{what}: {error}")
    };
    // Commits must be durable before we answer 200 (README.md, "API"). `off` is the one setting
    // that acknowledges before the WAL is flushed; `local`, `remote_write`... are kept as they are.
    let settings = client
        .query_one(
            "SELECT current_setting('synchronous_commit'), current_setting('fsync')",
            &[],
        )
        .await
        .map_err(fail("reading durability settings"))?;
    let synchronous_commit: String = settings.try_get(0).map_err(fail("synchronous_commit"))?;
    let fsync: String = settings.try_get(1).map_err(fail("fsync"))?;
    if synchronous_commit == "off" {
        log::warn!("the database has synchronous_commit = off; tally sets it on for its session");
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(fail("setting synchronous_commit"))?;
    }
    if fsync == "off" {
        log::warn!("the PostgreSQL server runs with fsync = off: a crash can lose commits");
    }

    // `SET LOCAL`: no "already exists, skipping" notice in the log at every connect.
    let create_schema = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY}); \
         SET LOCAL client_min_messages = warning; {CREATE_TABLE}; {CREATE_INSTANCES}; \
         {CREATE_KEYS}; COMMIT"
    );
    client
        .batch_execute(&create_schema)
        .await
        .map_err(fail("creating table tally_counter"))?;
    // This session's statements all find their rows through an index (the sweep by TID), and
    // the keyed batch must: its plan is cached after five runs, and with a young, small keys
    // table the planner picks a hash join over a sequential scan of it, which the cached plan
    // keeps while the table grows, until autovacuum's ANALYZE invalidates it (37 us of
    // PostgreSQL per key instead of 7 in the first minute of a fresh data directory).
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .map_err(fail("setting enable_seqscan"))?;
    let old_index = client
        .query_one(OLD_KEYS_TIME_INDEX, &[])
        .await
        .map_err(fail("looking for the old keys index"))?;
    if old_index.try_get::<_, bool>(0).unwrap_or(false) {
        log::warn!(
            "the index tally_idempotency_created_at, which earlier tally versions pruned keys \
             through, is no longer needed and slows every keyed increment; once no older tally \
             uses this database: DROP INDEX CONCURRENTLY tally_idempotency_created_at"
        );
    }
    let seed = highest_seen.max(0);
    client
        .execute(INSERT_ROW, &[&seed])
        .await
        .map_err(fail("inserting the counter row"))?;
    let add = client
        .prepare_typed(ADD, &[Type::INT8, Type::INT8, Type::INT8])
        .await
        .map_err(fail("preparing the increment"))?;
    let read = client
        .prepare(READ)
        .await
        .map_err(fail("preparing the read"))?;
    let lock_row = client
        .prepare(LOCK_ROW)
        .await
        .map_err(fail("preparing the row lock"))?;
    let find_batch = client
        .prepare_typed(FIND_BATCH, &[Type::INT8])
        .await
        .map_err(fail("preparing the batch lookup"))?;
    let insert_instance = client
        .prepare_typed(INSERT_INSTANCE, &[Type::INT8])
        .await
        .map_err(fail("preparing the instance row"))?;
    let add_keyed = client
        .prepare_typed(
            ADD_KEYED,
            &[
                Type::INT8,
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8,
                Type::FLOAT8,
                Type::INT8,
            ],
        )
        .await
        .map_err(fail("preparing the keyed increment"))?;
    let find_keys = client
        .prepare_typed(FIND_KEYS, &[Type::TEXT_ARRAY])
        .await
        .map_err(fail("preparing the key lookup"))?;
    let sweep_keys = client
        .prepare_typed(SWEEP_KEYS, &[Type::INT8, Type::INT8, Type::FLOAT8])
        .await
        .map_err(fail("preparing the key sweep"))?;
    Ok(Connection {
        client,
        add,
        read,
        lock_row,
        find_batch,
        insert_instance,
        add_keyed,
        find_keys,
        sweep_keys,
        io,
        closed,
    })
}
