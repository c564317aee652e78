//! The schema migrator: numbered SQL files, embedded in the binary, applied in order at open.
//!
//! `schema_migrations` records each applied version. Every migration runs in a transaction
//! of its own that first takes `pg_advisory_xact_lock(SCHEMA_LOCK)`: collectors starting at
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

const MIGRATIONS: &[Migration] = &[Migration { version: 1, name: "kv", sql: include_str!("migrations/0001_kv.sql") }];

/// The advisory lock key of schema changes ("pikett" in ASCII).
const SCHEMA_LOCK: i64 = 0x7069_6b65_7474;

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
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await.map_err(db("locking the schema"))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version int PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db("creating schema_migrations"))?;
        let row = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])
            .await
            .map_err(db("reading the schema version"))?;
        let current: i32 = row.get(0);
        from.get_or_insert(current);
        if current > LATEST {
            return Err(PgError::SchemaTooNew { found: current, known: LATEST });
        }
        let Some(next) = MIGRATIONS.iter().find(|m| m.version == current + 1) else {
            tx.commit().await.map_err(db("ending the migration check"))?;
            return Ok(Migrated { from: from.unwrap_or(current), applied });
        };
        tx.batch_execute(next.sql).await.map_err(|source| PgError::Migration { version: next.version, source })?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&next.version, &next.name])
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
