//! The schema migrator: numbered SQL files, embedded in the binary, applied in order at open.
//!
//! `pikett_schema_migrations` records each applied version (pikett's tables carry its name:
//! other tools keep a `schema_migrations` of their own). Every migration runs in a transaction
//! of its own that first lifts the session's `lock_timeout` and `statement_timeout` (a
//! collector starting while another migrates waits for it, and a long migration can finish)
//! and then takes `pg_advisory_xact_lock(SCHEMA_LOCK)`: collectors starting at
//! once apply each version exactly once (the second waits, then finds it applied), and the
//! lock ends with the transaction, so a collector killed mid-migration leaves no lock behind
//! and its migration rolled back. A database whose version is newer than this binary's is
//! refused: an older collector must not write a schema it does not know.

use tokio_postgres::Client;

use super::PgError;

/// One schema step. Versions are 1, 2, 3, … with no gaps; a released migration never changes.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "kv", sql: include_str!("migrations/0001_kv.sql") },
    Migration { version: 2, name: "cluster", sql: include_str!("migrations/0002_cluster.sql") },
    Migration { version: 3, name: "batches", sql: include_str!("migrations/0003_batches.sql") },
];

/// The advisory lock key of schema changes ("pikett" in ASCII).
pub(super) const SCHEMA_LOCK: i64 = 0x7069_6b65_7474;

/// The schema version this binary brings.
pub const LATEST: i32 = MIGRATIONS.len() as i32;

/// What a run of the migrator did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The version found (0 for an empty database).
    pub from: i32,
    /// The versions this run applied, in order (empty when the schema was current).
    pub applied: Vec<i32>,
}

/// Brings the database's schema to [`LATEST`], one migration per transaction.
pub async fn migrate(client: &mut Client) -> Result<Migrated, PgError> {
    let mut from = None;
    let mut applied = Vec::new();
    loop {
        let tx = client.transaction().await.map_err(db("starting a migration"))?;
        // No timeouts here: waiting for another collector's migration, or a migration that
        // takes long, is not a failure.
        tx.batch_execute("SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0")
            .await
            .map_err(db("starting a migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await.map_err(db("locking the schema"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS pikett_schema_migrations (
                 version int PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db("creating pikett_schema_migrations"))?;
        let row = tx
            .query_one("SELECT coalesce(max(version), 0) FROM pikett_schema_migrations", &[])
            .await
            .map_err(|source| not_ours(source, "pikett_schema_migrations", "reading the schema version"))?;
        let current: i32 =
            row.try_get(0).map_err(|source| PgError::NotOurs { table: "pikett_schema_migrations", source })?;
        from.get_or_insert(current);
        if current > LATEST {
            return Err(PgError::SchemaTooNew { found: current, known: LATEST });
        }
        let Some(next) = MIGRATIONS.iter().find(|m| m.version == current + 1) else {
            tx.commit().await.map_err(db("ending the migration check"))?;
            return Ok(Migrated { from: from.unwrap_or(current), applied });
        };
        tx.batch_execute(next.sql).await.map_err(|source| PgError::Migration { version: next.version, source })?;
        tx.execute(
            "INSERT INTO pikett_schema_migrations (version, name) VALUES ($1, $2)",
            &[&next.version, &next.name],
        )
        .await
        .map_err(|source| PgError::Migration { version: next.version, source })?;
        tx.commit().await.map_err(|source| PgError::Migration { version: next.version, source })?;
        tracing::info!(version = next.version, name = next.name, "PostgreSQL schema migrated");
        applied.push(next.version);
    }
}

fn db(what: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |source| PgError::Db { what, source }
}

/// A query on one of pikett's tables failed: when because a column is missing or of another
/// type, the table is someone else's.
fn not_ours(source: tokio_postgres::Error, table: &'static str, what: &'static str) -> PgError {
    use tokio_postgres::error::SqlState;
    match source.code() {
        Some(code) if *code == SqlState::UNDEFINED_COLUMN || *code == SqlState::DATATYPE_MISMATCH => {
            PgError::NotOurs { table, source }
        }
        _ => PgError::Db { what, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "migration {}", m.name);
            assert!(!m.sql.trim().is_empty(), "migration {} is empty", m.name);
        }
    }
}
