//! The SQL the store sends, as text, with the schema it keeps. Nothing here runs a
//! statement: `connect` prepares these, the other rooms run them. Each statement's comment
//! says what it relies on (locks, snapshots, indexes); only this file and `connect` (which
//! creates the schema) may change what the tables look like.

/// Serialises concurrent schema creation by several tally processes: `CREATE TABLE IF NOT
/// EXISTS` alone can still fail with a unique violation on `pg_type` when two run at once.
/// The value is "tally" in ASCII.
pub(super) const SCHEMA_LOCK_KEY: i64 = 0x74_61_6c_6c_79;
pub(super) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS tally_counter \
     (id int PRIMARY KEY CHECK (id = 1), count bigint NOT NULL)";
/// One row per store (`id`, random per start): its last committed batch, how an in-doubt batch
/// is settled. `count` is the counter right after that batch; `keyed_delta` the part its keyed
/// increments added. Batch ids only grow per store, so the `CHECK` refuses a batch run twice.
/// (Earlier versions inserted a row per batch into `tally_batches`, a table no longer read.)
pub(super) const CREATE_INSTANCES: &str = "CREATE TABLE IF NOT EXISTS tally_instances \
     (id bigint PRIMARY KEY, batch bigint, previous_batch bigint, \
     count bigint NOT NULL DEFAULT 0, keyed_delta bigint NOT NULL DEFAULT 0, \
     seen_at timestamptz NOT NULL DEFAULT now(), CHECK (batch > previous_batch))";
/// Run when no batch of this store is in doubt (a row recreated while one was could make a
/// committed batch look uncommitted).
pub(super) const INSERT_INSTANCE: &str =
    "INSERT INTO tally_instances (id) VALUES ($1) ON CONFLICT (id) DO NOTHING";
/// `$1` is the highest count this instance has seen (0 at first), so a row deleted behind our
/// back does not restart below values already handed out.
pub(super) const INSERT_ROW: &str =
    "INSERT INTO tally_counter (id, count) VALUES (1, $1) ON CONFLICT (id) DO NOTHING";
/// One statement, its own transaction: the row lock serialises all writers, instances included.
/// `$2` is the batch id, recorded in this store's row `$3` in the same transaction (a
/// data-modifying CTE always runs). The second column says whether that row was there.
pub(super) const ADD: &str = "WITH counted AS \
     (UPDATE tally_counter SET count = count + $1 WHERE id = 1 RETURNING count), \
     marked AS (UPDATE tally_instances i SET previous_batch = i.batch, batch = $2, \
       count = c.count, keyed_delta = 0, seen_at = now() FROM counted c WHERE i.id = $3 \
       RETURNING 1) \
     SELECT count, EXISTS (SELECT FROM marked) FROM counted";
pub(super) const READ: &str = "SELECT count FROM tally_counter WHERE id = 1";
/// Run inside a transaction: returns once every transaction that held the row lock has ended.
pub(super) const LOCK_ROW: &str = "SELECT count FROM tally_counter WHERE id = 1 FOR UPDATE";
/// A separate statement after [`LOCK_ROW`]: under READ COMMITTED it takes a new snapshot, so it
/// sees what the old session committed while we waited (one statement would not).
pub(super) const FIND_BATCH: &str =
    "SELECT batch, count, keyed_delta FROM tally_instances WHERE id = $1";
/// Rows of stores gone for [`INSTANCE_RETENTION`](super::sweep::INSTANCE_RETENTION) (a small table:
/// one row per store start).
pub(super) const PRUNE_INSTANCES: &str = "DELETE FROM tally_instances \
     WHERE seen_at < now() - make_interval(secs => $1)";
/// Keeps an idle store's row from being pruned: at most once per
/// [`INSTANCE_TOUCH_INTERVAL`](super::sweep::INSTANCE_TOUCH_INTERVAL).
pub(super) const TOUCH_INSTANCE: &str = "UPDATE tally_instances SET seen_at = now() WHERE id = $1";

/// Idempotency keys and what their first request got (docs/api.md, "Idempotency-Key"), by
/// [`key_digest`](super::digest::key_digest): a fixed 16-byte `uuid` whatever the key's length.
/// `batch_id` tells a settling store whether its in-doubt batch is the one that counted a key.
/// The primary key is the table's only index: the expired keys are found by a sweep of the
/// heap ([`SWEEP_KEYS`]), not through an index on `created_at`, which made every keyed batch
/// dearer: one more index entry and WAL record per key (pgbench figures in commit 8423579).
/// Earlier versions kept the key's text in `tally_idempotency` ([`LEGACY_KEYS_TABLE`]).
pub(super) const CREATE_KEYS: &str = "CREATE TABLE IF NOT EXISTS tally_keys \
     (digest uuid PRIMARY KEY, by bigint NOT NULL, count bigint NOT NULL, \
     batch_id bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())";

/// The head of [`ADD_KEYED`]: the batch's keys (by digest, with their `by`, in order) and the
/// ones stored within the retention or expired but still there.
macro_rules! add_keyed_head {
    () => {
        "WITH input AS (SELECT digest, by, pos \
           FROM unnest($2::uuid[], $3::bigint[]) WITH ORDINALITY AS t(digest, by, pos)), \
         present AS (SELECT i.pos, k.by, k.count, \
           k.created_at > now() - make_interval(secs => $5) AS live \
           FROM input i JOIN tally_keys k ON k.digest = i.digest), "
    };
}

/// The rest of [`ADD_KEYED`], after `present`.
macro_rules! add_keyed_tail {
    () => {
        "fresh AS (SELECT i.digest, i.by, i.pos, \
           (sum(i.by) OVER (ORDER BY i.pos))::bigint AS running, p.pos IS NOT NULL AS expired \
           FROM input i LEFT JOIN present p ON p.pos = i.pos WHERE p.live IS NOT TRUE), \
         total AS (SELECT COALESCE(sum(by), 0)::bigint AS keyed FROM fresh), \
         counted AS (UPDATE tally_counter SET count = count + $1 + total.keyed FROM total \
           WHERE id = 1 RETURNING tally_counter.count - total.keyed AS unkeyed_end, total.keyed), \
         inserted AS (INSERT INTO tally_keys (digest, by, count, batch_id) \
           SELECT f.digest, f.by, c.unkeyed_end + f.running, $4 FROM fresh f, counted c \
           WHERE NOT f.expired), \
         renewed AS (INSERT INTO tally_keys (digest, by, count, batch_id) \
           SELECT f.digest, f.by, c.unkeyed_end + f.running, $4 FROM fresh f, counted c \
           WHERE f.expired \
           ON CONFLICT (digest) DO UPDATE SET by = excluded.by, count = excluded.count, \
           batch_id = excluded.batch_id, created_at = now()), \
         marked AS (UPDATE tally_instances i SET previous_batch = i.batch, batch = $4, \
           count = c.unkeyed_end + c.keyed, keyed_delta = c.keyed, seen_at = now() \
           FROM counted c WHERE i.id = $6 RETURNING 1) \
         SELECT c.unkeyed_end, EXISTS (SELECT FROM marked), p.pos, p.by, p.count \
         FROM counted c LEFT JOIN present p ON p.live ORDER BY p.pos"
    };
}

/// A batch with keyed increments, run after [`LOCK_ROW`] in the same transaction. Every writer
/// takes the row lock first, so this statement's snapshot (taken after it) holds every key
/// committed before: no key can be counted twice, by this instance or another. Keys seen
/// within the retention are not counted; the fresh ones count after the unkeyed delta `$1`, in
/// the order given. Keys (`$2`, digests) are unique. A fresh key absent from the table is a
/// plain `INSERT` (no other writer can insert it while we hold the lock; `ON CONFLICT` would
/// cost a speculative insertion, one more WAL record per key: pgbench figures in commit
/// 97aa6ec); an expired key still present is overwritten by an upsert, which also covers a
/// prune deleting it meanwhile.
/// Returns `unkeyed_end` and whether this store's row `$6` recorded the batch `$4`, then, for
/// each key seen within the retention, its position (from 1) and what it got then: one row
/// with a NULL position when there is none. The counts of fresh keys follow from the order
/// (`unkeyed_end` plus the running sum of their `by`), so they are not sent back.
pub(super) const ADD_KEYED: &str = concat!(add_keyed_head!(), add_keyed_tail!());

/// The common case of [`ADD_KEYED`], tried first: every key of the batch is fresh and absent
/// from `tally_keys`, so each counts, in order: `$5` are the running sums of the `by`s `$3`
/// (computed by the store), `$7` their total. It does not look the keys up: the primary key
/// does, as it inserts them, and a key already there (seen within the retention, or expired
/// but not yet swept) fails the statement with a unique violation, which rolls the transaction
/// back; the batch then runs again as [`ADD_KEYED`]. That saves a probe of the index per key
/// and the window, sort and joins of the general statement (docs/benchmarks.md, "Idempotency
/// keys"). Run after [`LOCK_ROW`] like it; returns `unkeyed_end` and whether this store's row
/// `$6` recorded the batch `$4`.
pub(super) const ADD_FRESH_KEYS: &str = "WITH \
     counted AS (UPDATE tally_counter SET count = count + $1 + $7 WHERE id = 1 \
       RETURNING count - $7 AS unkeyed_end), \
     inserted AS (INSERT INTO tally_keys (digest, by, count, batch_id) \
       SELECT t.digest, t.by, c.unkeyed_end + t.running, $4 \
       FROM unnest($2::uuid[], $3::bigint[], $5::bigint[]) AS t(digest, by, running), counted c), \
     marked AS (UPDATE tally_instances i SET previous_batch = i.batch, batch = $4, \
       count = c.unkeyed_end + $7, keyed_delta = $7, seen_at = now() \
       FROM counted c WHERE i.id = $6 RETURNING 1) \
     SELECT c.unkeyed_end, EXISTS (SELECT FROM marked) FROM counted c";

/// Whether `tally_idempotency`, the table earlier versions stored keys in by their text,
/// exists. Keys still there within the retention are honoured (replayed, never counted again)
/// until they expire; the sweep drains it ([`SWEEP_LEGACY_KEYS`]); nothing writes to it now.
pub(super) const LEGACY_KEYS_TABLE: &str = "SELECT to_regclass('tally_idempotency') IS NOT NULL";
/// Whether `tally_idempotency` still holds a row: only then does a keyed batch look there too
/// ([`ADD_KEYED_LEGACY`]). Read at connect and whenever its sweep has gone round.
pub(super) const LEGACY_KEYS_LEFT: &str = "SELECT EXISTS (SELECT FROM tally_idempotency)";
/// [`ADD_KEYED`] while `tally_idempotency` holds keys: `$7` are the keys' text, in the order
/// of `$2`. A key live there and absent from `tally_keys` is present (replayed or a mismatch);
/// an expired one there is fresh, and goes into `tally_keys` like any other.
pub(super) const ADD_KEYED_LEGACY: &str = concat!(
    "WITH input AS (SELECT digest, by, pos, key \
       FROM unnest($2::uuid[], $3::bigint[], $7::text[]) WITH ORDINALITY AS t(digest, by, key, pos)), \
     present AS (SELECT i.pos, k.by, k.count, \
       k.created_at > now() - make_interval(secs => $5) AS live \
       FROM input i JOIN tally_keys k ON k.digest = i.digest \
       UNION ALL SELECT i.pos, o.by, o.count, true \
       FROM input i JOIN tally_idempotency o ON o.key = i.key \
       WHERE o.created_at > now() - make_interval(secs => $5) \
       AND NOT EXISTS (SELECT FROM tally_keys k WHERE k.digest = i.digest)), ",
    add_keyed_tail!()
);
/// Settling a keyed batch found committed: what each of its keys got.
pub(super) const FIND_KEYS: &str =
    "SELECT digest, by, count, batch_id FROM tally_keys WHERE digest = ANY($1::uuid[])";
/// The same in `tally_idempotency` while it holds keys; a row in `tally_keys` comes first (a
/// key of the batch absent there was replayed from here).
pub(super) const FIND_LEGACY_KEYS: &str =
    "SELECT key, by, count, batch_id FROM tally_idempotency WHERE key = ANY($1::text[])";

/// [`SWEEP_KEYS`] for a table.
macro_rules! sweep {
    ($table:literal) => {
        concat!(
            "WITH gone AS (DELETE FROM ",
            $table,
            " WHERE ctid >= format('(%s,0)', $1)::tid AND ctid < format('(%s,0)', $2)::tid \
             AND created_at < now() - make_interval(secs => $3) RETURNING 1) \
             SELECT (SELECT count(*) FROM gone), pg_relation_size('",
            $table,
            "') / current_setting('block_size')::bigint"
        )
    };
}
/// One slice of the sweep over `tally_keys`: deletes the expired keys stored in pages `$1` to
/// `$2` (exclusive) and returns how many, and the table's size in pages. A TID range scan: it
/// reads those pages and nothing else, whatever the table's size and statistics, so a sweep
/// that finds nothing expired costs a few page reads, and an empty range none. The time
/// condition is checked again on a row a batch renewed meanwhile, which is then kept. Run in a
/// transaction of its own with `synchronous_commit = off` ([`SWEEP_BEGIN`]).
pub(super) const SWEEP_KEYS: &str = sweep!("tally_keys");
/// [`SWEEP_KEYS`] over `tally_idempotency`, while it holds keys.
pub(super) const SWEEP_LEGACY_KEYS: &str = sweep!("tally_idempotency");
/// A sweep's transaction need not wait for its commit to reach the disk: a delete a crash
/// loses is of keys already expired, which [`ADD_KEYED`] treats as absent, and the next sweep
/// deletes them again. Without it every slice cost a WAL flush, an fsync, between two
/// commits (docs/benchmarks.md, "Idempotency keys").
pub(super) const SWEEP_BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = off";
/// The index earlier versions pruned through. Still there in a database they created (and
/// used by their prune while one of them runs): docs/api.md, "Idempotency-Key", says when to
/// drop it.
pub(super) const OLD_KEYS_TIME_INDEX: &str =
    "SELECT to_regclass('tally_idempotency_created_at') IS NOT NULL";

/// Named counters (`/api/v1/counters/{name}`): one row per name, created by its first
/// increment. Collation "C": names compare as bytes, as the owner core sorts them, and every
/// writer locks a batch's rows in that one order (see [`ADD_NAMED`]).
pub(super) const CREATE_NAMED: &str = "CREATE TABLE IF NOT EXISTS tally_counters \
     (name text COLLATE \"C\" PRIMARY KEY, count bigint NOT NULL) WITH (fillfactor = 50)";
/// The counts a named batch got, in the order it sent its names: how an in-doubt named batch
/// found committed is answered (the single counter's batches use `count`).
/// Checked first: `ALTER TABLE` would take the table's strongest lock at every connect.
pub(super) const ADD_NAMED_COUNTS: &str = "DO $$ BEGIN IF NOT EXISTS (SELECT FROM \
     information_schema.columns WHERE table_schema = current_schema() \
     AND table_name = 'tally_instances' AND column_name = 'named_counts') THEN \
     ALTER TABLE tally_instances ADD COLUMN named_counts bigint[]; END IF; END $$";
/// Adds `$2[i]` to the counter named `$1[i]`, creating it, and records the batch `$4` with its
/// counts in this store's row `$3`: one statement, its own transaction for an unkeyed batch,
/// as [`ADD`] is for the single counter. The rows are inserted or locked in name order (the
/// `ORDER BY` feeds the insertion), so two batches sharing names, from any instances, lock
/// them in the same order and cannot deadlock; this store's row comes last. Returns, in the
/// order given, each count, whether the row was created (`xmax = 0`: inserted, not updated by
/// `ON CONFLICT`), and whether this store's row recorded the batch.
pub(super) const ADD_NAMED: &str = "WITH input AS (SELECT name, delta, pos \
       FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(name, delta, pos)), \
     counted AS (INSERT INTO tally_counters AS c (name, count) \
       SELECT name, delta FROM input ORDER BY name COLLATE \"C\" \
       ON CONFLICT (name) DO UPDATE SET count = c.count + excluded.count \
       RETURNING c.name, c.count, (c.xmax = 0) AS created), \
     marked AS (UPDATE tally_instances SET previous_batch = batch, batch = $4, \
       named_counts = (SELECT array_agg(k.count ORDER BY i.pos) \
       FROM input i JOIN counted k ON k.name = i.name), seen_at = now() WHERE id = $3 \
       RETURNING 1) \
     SELECT k.count, k.created, EXISTS (SELECT FROM marked) \
     FROM input i JOIN counted k ON k.name = i.name ORDER BY i.pos";
/// Settling an in-doubt named batch, first: waits for every transaction holding a lock on the
/// batch's rows to end, taking them in name order as [`ADD_NAMED`] does.
pub(super) const LOCK_NAMED: &str = "SELECT 1 FROM tally_counters \
     WHERE name = ANY($1::text[]) ORDER BY name COLLATE \"C\" FOR UPDATE";
/// Settling an in-doubt named batch, then (after [`LOCK_NAMED`]): waits for this store's row,
/// which the old batch's statement updates last, and says which batch committed last and its
/// counts. A statement of the old session still on its way finds the row locked, and once
/// this transaction commits, fails the row's `CHECK` (see the `store` module comment).
pub(super) const FIND_NAMED_BATCH: &str =
    "SELECT batch, named_counts FROM tally_instances WHERE id = $1 FOR UPDATE";
/// Which of the names `$1` have a row (before a batch that could pass the counter limit).
pub(super) const EXISTING_NAMES: &str =
    "SELECT name FROM tally_counters WHERE name = ANY($1::text[])";
/// The counts of the names `$1` that have a row.
pub(super) const READ_NAMED: &str =
    "SELECT name, count FROM tally_counters WHERE name = ANY($1::text[])";
pub(super) const DELETE_NAMED: &str = "DELETE FROM tally_counters WHERE name = $1 RETURNING count";
pub(super) const COUNT_NAMED: &str = "SELECT count(*) FROM tally_counters";

/// The keyed increments of a named batch, run after [`ADD_NAMED`] in the same transaction,
/// which locked (or created) the row of every name here: no other writer can count these
/// keys meanwhile. As [`ADD_KEYED`] does for the single counter: keys seen within the retention
/// `$4` are not counted; fresh ones count after their name's unkeyed delta, in the order given,
/// recorded with the batch id `$5`. Returns per increment, in order: whether its key was seen
/// live, the `by` it was seen with, and its count (then, or now).
pub(super) const ADD_NAMED_KEYED: &str = "WITH input AS (SELECT name, digest, by, pos \
       FROM unnest($1::text[], $2::uuid[], $3::bigint[]) WITH ORDINALITY AS t(name, digest, by, pos)), \
     present AS (SELECT i.pos, k.by, k.count, \
       k.created_at > now() - make_interval(secs => $4) AS live \
       FROM input i JOIN tally_keys k ON k.digest = i.digest), \
     fresh AS (SELECT i.name, i.digest, i.by, i.pos, \
       (sum(i.by) OVER (PARTITION BY i.name ORDER BY i.pos))::bigint AS running, \
       p.pos IS NOT NULL AS expired \
       FROM input i LEFT JOIN present p ON p.pos = i.pos WHERE p.live IS NOT TRUE), \
     totals AS (SELECT name, sum(by)::bigint AS keyed FROM fresh GROUP BY name), \
     counted AS (UPDATE tally_counters c SET count = c.count + t.keyed FROM totals t \
       WHERE c.name = t.name RETURNING c.name, c.count - t.keyed AS base), \
     inserted AS (INSERT INTO tally_keys (digest, by, count, batch_id) \
       SELECT f.digest, f.by, c.base + f.running, $5 FROM fresh f JOIN counted c \
       ON c.name = f.name WHERE NOT f.expired), \
     renewed AS (INSERT INTO tally_keys (digest, by, count, batch_id) \
       SELECT f.digest, f.by, c.base + f.running, $5 FROM fresh f JOIN counted c \
       ON c.name = f.name WHERE f.expired \
       ON CONFLICT (digest) DO UPDATE SET by = excluded.by, count = excluded.count, \
       batch_id = excluded.batch_id, created_at = now()) \
     SELECT p.pos IS NOT NULL, COALESCE(p.by, i.by), COALESCE(p.count, c.base + f.running) \
     FROM input i LEFT JOIN present p ON p.pos = i.pos AND p.live \
     LEFT JOIN fresh f ON f.pos = i.pos LEFT JOIN counted c ON c.name = f.name ORDER BY i.pos";
/// Settling a keyed named batch found committed: what each of its keys got, and by which batch.
pub(super) const FIND_NAMED_KEYS: &str =
    "SELECT digest, by, count, batch_id FROM tally_keys WHERE digest = ANY($1::uuid[])";

/// A keyed named batch when every key is new, tried first: ONE statement, its own transaction,
/// that adds to each name its unkeyed delta `$2` and its keyed increments' sum `$5` at once
/// (each row updated once), stores the keys (`$6` names, `$7` digests, `$8` `by`s, `$9` running
/// sums of the `by`s per name, in order) without looking them up, and records the batch `$4`
/// with each name's count after its unkeyed part in this store's row `$3`. A key already stored
/// fails it on the primary key: nothing is applied, and the batch runs again as
/// `BEGIN; ADD_NAMED; ADD_NAMED_KEYED; COMMIT` (as [`ADD_FRESH_KEYS`] is for the single
/// counter). Returns what [`ADD_NAMED`] does, the count being the one after the unkeyed part.
pub(super) const ADD_NAMED_FRESH_KEYS: &str = "WITH input AS (SELECT name, delta, keyed, pos \
       FROM unnest($1::text[], $2::bigint[], $5::bigint[]) WITH ORDINALITY AS t(name, delta, keyed, pos)), \
     counted AS (INSERT INTO tally_counters AS c (name, count) \
       SELECT name, delta + keyed FROM input ORDER BY name COLLATE \"C\" \
       ON CONFLICT (name) DO UPDATE SET count = c.count + excluded.count \
       RETURNING c.name, c.count, (c.xmax = 0) AS created), \
     ends AS (SELECT i.pos, i.name, k.count - i.keyed AS unkeyed_end, k.created \
       FROM input i JOIN counted k ON k.name = i.name), \
     inserted AS (INSERT INTO tally_keys (digest, by, count, batch_id) \
       SELECT t.digest, t.by, e.unkeyed_end + t.running, $4 \
       FROM unnest($6::text[], $7::uuid[], $8::bigint[], $9::bigint[]) AS t(name, digest, by, running) \
       JOIN ends e ON e.name = t.name), \
     marked AS (UPDATE tally_instances SET previous_batch = batch, batch = $4, \
       named_counts = (SELECT array_agg(unkeyed_end ORDER BY pos) FROM ends), seen_at = now() \
       WHERE id = $3 RETURNING 1) \
     SELECT e.unkeyed_end, e.created, EXISTS (SELECT FROM marked) FROM ends e ORDER BY e.pos";
