//! Connecting: the connection string and TLS (see `tls`), the durability checks, the schema
//! and the prepared statements, all within the connect timeout. Returns a [`Connection`];
//! knows nothing of batches or of what the store does with it.

use std::cell::Cell;

use tokio::sync::oneshot;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Socket, Statement};

use super::config::{StoreConfig, CLOSE_TIMEOUT};
use super::error::StoreError;
use super::sql::{
    ADD, ADD_FRESH_KEYS, ADD_KEYED, ADD_KEYED_LEGACY, ADD_NAMED, ADD_NAMED_COUNTS,
    ADD_NAMED_FRESH_KEYS, ADD_NAMED_KEYED, CREATE_INSTANCES, CREATE_KEYS, CREATE_NAMED,
    CREATE_TABLE, DELETE_NAMED, EXISTING_NAMES, FIND_BATCH, FIND_KEYS, FIND_LEGACY_KEYS,
    FIND_NAMED_BATCH, FIND_NAMED_KEYS, INSERT_INSTANCE, INSERT_ROW, LEGACY_KEYS_LEFT,
    LEGACY_KEYS_TABLE, LOCK_NAMED, LOCK_ROW, OLD_KEYS_TIME_INDEX, READ, READ_NAMED,
    SCHEMA_LOCK_KEY, SWEEP_KEYS, SWEEP_LEGACY_KEYS,
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
    pub(super) add_fresh_keys: Statement,
    pub(super) find_keys: Statement,
    pub(super) sweep_keys: Statement,
    pub(super) named: NamedStatements,
    /// Set while `tally_idempotency` (earlier versions' keys, by text) held keys at connect;
    /// see [`LegacyKeys`].
    pub(super) legacy: Option<LegacyKeys>,
    /// Drives the socket; ends when the connection does.
    pub(super) io: tokio::task::JoinHandle<()>,
    /// Fires (or errors) when `io` ends.
    pub(super) closed: oneshot::Receiver<()>,
}

/// The statements for the keys earlier versions stored in `tally_idempotency`, honoured until
/// they expire (docs/api.md, "Idempotency-Key").
pub(super) struct LegacyKeys {
    pub(super) add_keyed: Statement,
    pub(super) find_keys: Statement,
    pub(super) sweep: Statement,
    pub(super) left: Statement,
    /// False once the sweep found the table empty: keyed batches stop looking there (nothing
    /// writes to it any more). Checked again at the next connect.
    pub(super) holds_keys: Cell<bool>,
}

impl Connection {
    /// The legacy statements while `tally_idempotency` may still hold a key.
    pub(super) fn legacy_keys(&self) -> Option<&LegacyKeys> {
        self.legacy
            .as_ref()
            .filter(|legacy| legacy.holds_keys.get())
    }

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
        prepare(client, io, closed, highest_seen).await
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
) -> Result<Connection, StoreError> {
    insist_on_durability(&client).await?;
    create_schema(&client, highest_seen).await?;
    let statements = prepare_statements(&client).await?;
    let legacy = prepare_legacy(&client).await?;
    Ok(Connection {
        client,
        add: statements.add,
        read: statements.read,
        lock_row: statements.lock_row,
        find_batch: statements.find_batch,
        insert_instance: statements.insert_instance,
        add_keyed: statements.add_keyed,
        add_fresh_keys: statements.add_fresh_keys,
        find_keys: statements.find_keys,
        sweep_keys: statements.sweep_keys,
        named: statements.named,
        legacy,
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
         {CREATE_KEYS}; {CREATE_NAMED}; {ADD_NAMED_COUNTS}; COMMIT"
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
    add_fresh_keys: Statement,
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
    pub(super) add_fresh_keys: Statement,
    pub(super) find_keys: Statement,
}

async fn prepare_statements(client: &Client) -> Result<Statements, StoreError> {
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
                Type::UUID_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8,
                Type::FLOAT8,
                Type::INT8,
            ],
            "preparing the keyed increment",
        )
        .await?,
        add_fresh_keys: prepare(
            ADD_FRESH_KEYS,
            &[
                Type::INT8,
                Type::UUID_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8,
                Type::INT8_ARRAY,
                Type::INT8,
                Type::INT8,
            ],
            "preparing the fresh keyed increment",
        )
        .await?,
        find_keys: prepare(FIND_KEYS, &[Type::UUID_ARRAY], "preparing the key lookup").await?,
        sweep_keys: prepare(
            SWEEP_KEYS,
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
            add_fresh_keys: prepare(
                ADD_NAMED_FRESH_KEYS,
                &[
                    Type::TEXT_ARRAY,
                    Type::INT8_ARRAY,
                    Type::INT8,
                    Type::INT8,
                    Type::INT8_ARRAY,
                    Type::TEXT_ARRAY,
                    Type::UUID_ARRAY,
                    Type::INT8_ARRAY,
                    Type::INT8_ARRAY,
                ],
                "preparing the named fresh keys",
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

/// The [`LegacyKeys`] statements, if `tally_idempotency` exists and holds a key.
async fn prepare_legacy(client: &Client) -> Result<Option<LegacyKeys>, StoreError> {
    let exists = client
        .query_one(LEGACY_KEYS_TABLE, &[])
        .await
        .map_err(set_up("looking for tally_idempotency"))?;
    if !exists.try_get::<_, bool>(0).unwrap_or(false) {
        return Ok(None);
    }
    let left = client
        .prepare_typed(LEGACY_KEYS_LEFT, &[])
        .await
        .map_err(set_up("preparing the legacy keys check"))?;
    let holds_keys = client
        .query_one(&left, &[])
        .await
        .map_err(set_up("reading tally_idempotency"))?
        .try_get::<_, bool>(0)
        .unwrap_or(true);
    if !holds_keys {
        log::info!(
            "tally_idempotency (the keys of earlier tally versions) is empty and no longer \
             used; drop it once no earlier tally uses this database: DROP TABLE tally_idempotency"
        );
        return Ok(None);
    }
    log::info!(
        "tally_idempotency holds keys of an earlier tally version: they are honoured until \
         they expire, then deleted"
    );
    let prepare = |text: &'static str, types: &'static [Type], step: &'static str| async move {
        client
            .prepare_typed(text, types)
            .await
            .map_err(set_up(step))
    };
    Ok(Some(LegacyKeys {
        add_keyed: prepare(
            ADD_KEYED_LEGACY,
            &[
                Type::INT8,
                Type::UUID_ARRAY,
                Type::INT8_ARRAY,
                Type::INT8,
                Type::FLOAT8,
                Type::INT8,
                Type::TEXT_ARRAY,
            ],
            "preparing the keyed increment with legacy keys",
        )
        .await?,
        find_keys: prepare(
            FIND_LEGACY_KEYS,
            &[Type::TEXT_ARRAY],
            "preparing the legacy key lookup",
        )
        .await?,
        sweep: prepare(
            SWEEP_LEGACY_KEYS,
            &[Type::INT8, Type::INT8, Type::FLOAT8],
            "preparing the legacy key sweep",
        )
        .await?,
        left,
        holds_keys: Cell::new(true),
    }))
}
