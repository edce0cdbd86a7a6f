//! Connecting: the connection string and TLS (see `tls`), the durability checks, the schema
//! and the prepared statements, all within the connect timeout. Returns a [`Connection`];
//! knows nothing of batches or of what the store does with it.

use tokio::sync::oneshot;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Socket, Statement};

use super::config::{StoreConfig, CLOSE_TIMEOUT};
use super::error::StoreError;
use super::sql::{
    ADD, ADD_KEYED, ADD_NAMED, ADD_NAMED_COUNTS, ADD_NAMED_KEYED, CREATE_INSTANCES, CREATE_KEYS,
    CREATE_NAMED, CREATE_NAMED_KEYS, CREATE_TABLE, DELETE_NAMED, EXISTING_NAMES, FIND_BATCH,
    FIND_KEYS, FIND_NAMED_BATCH, FIND_NAMED_KEYS, INSERT_INSTANCE, INSERT_ROW, LOCK_NAMED,
    LOCK_ROW, OLD_KEYS_TIME_INDEX, READ, READ_NAMED, SCHEMA_LOCK_KEY, SWEEP_KEYS, SWEEP_NAMED_KEYS,
};
use super::tls::{self, Connector};

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
    pub(super) named: NamedStatements,
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

/// Connects, checks durability settings, creates the schema if missing and prepares the
/// statements, all within `connect_timeout`.
pub(super) async fn connect(
    config: &StoreConfig,
    highest_seen: i64,
) -> Result<Connection, StoreError> {
    let (url, tls) =
        tls::split_connection_string(&config.url).map_err(StoreError::InvalidTlsOptions)?;
    let mut pg_config: tokio_postgres::Config = url.parse().map_err(StoreError::InvalidUrl)?;
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("tally");
    }
    pg_config.connect_timeout(config.connect_timeout);
    let connector = tls.apply(&mut pg_config).map_err(StoreError::Tls)?;
    let set_up = async {
        let opened = match connector {
            Connector::Plain => open(&pg_config, NoTls).await,
            Connector::Rustls(rustls) => open(&pg_config, rustls).await,
        };
        let (client, io, closed) = opened.map_err(|source| StoreError::Open {
            source,
            tls: tls.clone(),
        })?;
        // If set-up fails below, dropping the client ends the I/O task.
        prepare(client, io, closed, highest_seen, config.named.is_some()).await
    };
    tokio::time::timeout(config.connect_timeout, set_up)
        .await
        .map_err(|_elapsed| StoreError::ConnectTimeout(config.connect_timeout))?
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

/// Makes a fresh session fit to commit: durable, with the schema and its statements.
async fn prepare(
    client: Client,
    io: tokio::task::JoinHandle<()>,
    closed: oneshot::Receiver<()>,
    highest_seen: i64,
    named: bool,
) -> Result<Connection, StoreError> {
    insist_on_durability(&client).await?;
    create_schema(&client, highest_seen).await?;
    let statements = prepare_statements(&client, named).await?;
    Ok(Connection {
        client,
        add: statements.add,
        read: statements.read,
        lock_row: statements.lock_row,
        find_batch: statements.find_batch,
        insert_instance: statements.insert_instance,
        add_keyed: statements.add_keyed,
        find_keys: statements.find_keys,
        sweep_keys: statements.sweep_keys,
        named: statements.named,
        io,
        closed,
    })
}

/// The context for a failed set-up statement.
fn set_up(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::SetUp { step, source }
}

/// Commits must be durable before we answer 200 (docs/api.md, "Endpoints"). `off` is the one setting
/// that acknowledges before the WAL is flushed; `local`, `remote_write`... are kept as they are.
async fn insist_on_durability(client: &Client) -> Result<(), StoreError> {
    let settings = client
        .query_one(
            "SELECT current_setting('synchronous_commit'), current_setting('fsync')",
            &[],
        )
        .await
        .map_err(set_up("reading durability settings"))?;
    let synchronous_commit: String = settings.try_get(0).map_err(set_up("synchronous_commit"))?;
    let fsync: String = settings.try_get(1).map_err(set_up("fsync"))?;
    if synchronous_commit == "off" {
        log::warn!("the database has synchronous_commit = off; tally sets it on for its session");
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(set_up("setting synchronous_commit"))?;
    }
    if fsync == "off" {
        log::warn!("the PostgreSQL server runs with fsync = off: a crash can lose commits");
    }
    Ok(())
}

/// Creates the tables if missing (serialised between processes), sets the session's planner
/// rule and makes sure the counter row exists, never below `highest_seen`.
async fn create_schema(client: &Client, highest_seen: i64) -> Result<(), StoreError> {
    // `SET LOCAL`: no "already exists, skipping" notice in the log at every connect.
    let create_schema = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY}); \
         SET LOCAL client_min_messages = warning; {CREATE_TABLE}; {CREATE_INSTANCES}; \
         {CREATE_KEYS}; {CREATE_NAMED}; {ADD_NAMED_COUNTS}; {CREATE_NAMED_KEYS}; COMMIT"
    );
    client
        .batch_execute(&create_schema)
        .await
        .map_err(set_up("creating table tally_counter"))?;
    // This session's statements all find their rows through an index (the sweep by TID), and
    // the keyed batch must: its plan is cached after five runs, and with a young, small keys
    // table the planner picks a hash join over a sequential scan of it, which the cached plan
    // keeps while the table grows, until autovacuum's ANALYZE invalidates it (several times
    // the PostgreSQL time per key until then: measured in commit 786db6f).
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .map_err(set_up("setting enable_seqscan"))?;
    let old_index = client
        .query_one(OLD_KEYS_TIME_INDEX, &[])
        .await
        .map_err(set_up("looking for the old keys index"))?;
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
        .map_err(set_up("inserting the counter row"))?;
    Ok(())
}

/// The statements a [`Connection`] holds, prepared once per session.
struct Statements {
    add: Statement,
    read: Statement,
    lock_row: Statement,
    find_batch: Statement,
    insert_instance: Statement,
    add_keyed: Statement,
    find_keys: Statement,
    sweep_keys: Statement,
    named: NamedStatements,
}

/// The named counters' statements (`sql`: [`ADD_NAMED`] and its neighbours).
pub(super) struct NamedStatements {
    pub(super) lock: Statement,
    pub(super) add: Statement,
    pub(super) find_batch: Statement,
    pub(super) existing: Statement,
    pub(super) read: Statement,
    pub(super) delete: Statement,
    pub(super) add_keyed: Statement,
    pub(super) find_keys: Statement,
}

/// `named`: a named counters' store, whose sweep goes over their keys' table.
async fn prepare_statements(client: &Client, named: bool) -> Result<Statements, StoreError> {
    let prepare = |text: &'static str, types: &'static [Type], step: &'static str| async move {
        client
            .prepare_typed(text, types)
            .await
            .map_err(set_up(step))
    };
    Ok(Statements {
        add: prepare(
            ADD,
            &[Type::INT8, Type::INT8, Type::INT8],
            "preparing the increment",
        )
        .await?,
        read: prepare(READ, &[], "preparing the read").await?,
        lock_row: prepare(LOCK_ROW, &[], "preparing the row lock").await?,
        find_batch: prepare(FIND_BATCH, &[Type::INT8], "preparing the batch lookup").await?,
        insert_instance: prepare(INSERT_INSTANCE, &[Type::INT8], "preparing the instance row")
            .await?,
        add_keyed: prepare(
            ADD_KEYED,
            &[
                Type::INT8,
                Type::TEXT_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8,
                Type::FLOAT8,
                Type::INT8,
            ],
            "preparing the keyed increment",
        )
        .await?,
        find_keys: prepare(FIND_KEYS, &[Type::TEXT_ARRAY], "preparing the key lookup").await?,
        sweep_keys: prepare(
            if named { SWEEP_NAMED_KEYS } else { SWEEP_KEYS },
            &[Type::INT8, Type::INT8, Type::FLOAT8],
            "preparing the key sweep",
        )
        .await?,
        named: NamedStatements {
            lock: prepare(LOCK_NAMED, &[Type::TEXT_ARRAY], "preparing the named lock").await?,
            add: prepare(
                ADD_NAMED,
                &[Type::TEXT_ARRAY, Type::INT8_ARRAY, Type::INT8, Type::INT8],
                "preparing the named increment",
            )
            .await?,
            find_batch: prepare(
                FIND_NAMED_BATCH,
                &[Type::INT8],
                "preparing the named batch lookup",
            )
            .await?,
            existing: prepare(
                EXISTING_NAMES,
                &[Type::TEXT_ARRAY],
                "preparing the named lookup",
            )
            .await?,
            read: prepare(READ_NAMED, &[Type::TEXT_ARRAY], "preparing the named read").await?,
            delete: prepare(DELETE_NAMED, &[Type::TEXT], "preparing the named delete").await?,
            add_keyed: prepare(
                ADD_NAMED_KEYED,
                &[
                    Type::TEXT_ARRAY,
                    Type::UUID_ARRAY,
                    Type::INT8_ARRAY,
                    Type::FLOAT8,
                    Type::INT8,
                ],
                "preparing the named keyed increment",
            )
            .await?,
            find_keys: prepare(
                FIND_NAMED_KEYS,
                &[Type::UUID_ARRAY],
                "preparing the named key lookup",
            )
            .await?,
        },
    })
}
