//! The registry: one SQLite database (`<state_dir>/stockade.db`, WAL mode,
//! `synchronous=NORMAL`) with a row per sandbox. Every write is committed
//! before the HTTP answer that reports it. Calls block: async code reaches
//! the store through `spawn_blocking`.
//!
//! Durability: in WAL mode `synchronous=NORMAL` syncs the log only at
//! checkpoints, not at every commit. A committed transaction survives the
//! daemon crashing or being `kill -9`ed (it is in the log, in the page
//! cache); only a power loss or kernel crash can lose the last few
//! commits, never corrupt the database. That is acceptable because the
//! registry is reconciled with reality at start (`lifecycle::recover`):
//! a sandbox recorded as running whose shim is gone is marked dead, and
//! after a power loss no sandbox survives anyway. `FULL` cost an `fsync`
//! on every create and destroy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// Why the registry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {} (check that the state directory exists and is writable)", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the state database failed (check free disk space and the state directory's permissions)"
    )]
    Sql(#[from] rusqlite::Error),
    #[error("a running sandbox is already named {0:?}; choose another name or destroy that sandbox first")]
    NameTaken(String),
    #[error("the state database holds a malformed row for sandbox {id}: {message}")]
    Corrupt { id: String, message: String },
}

/// Life state of a sandbox as the registry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Alive (or believed alive after a restart until it is reattached).
    Running,
    /// Destroyed through the API.
    Destroyed,
    /// Ended without being asked to (its supervisor died).
    Dead,
    /// Destroyed because it reached its ttl or time limit.
    Expired,
}

impl SandboxState {
    pub const ALL: [SandboxState; 4] = [
        SandboxState::Running,
        SandboxState::Destroyed,
        SandboxState::Dead,
        SandboxState::Expired,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Destroyed => "destroyed",
            SandboxState::Dead => "dead",
            SandboxState::Expired => "expired",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One sandbox as stored. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxRow {
    pub id: String,
    pub name: Option<String>,
    pub state: SandboxState,
    pub reason: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub policy: serde_json::Value,
    pub created_at: f64,
    pub expires_at: Option<f64>,
    pub ended_at: Option<f64>,
    pub report: Option<serde_json::Value>,
}

/// The open registry.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    id         TEXT PRIMARY KEY,
    name       TEXT,
    state      TEXT NOT NULL,
    reason     TEXT,
    labels     TEXT NOT NULL,
    policy     TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    ended_at   REAL,
    report     TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS sandboxes_live_name
    ON sandboxes(name) WHERE state = 'running' AND name IS NOT NULL;
CREATE INDEX IF NOT EXISTS sandboxes_state ON sandboxes(state);
";

const COLUMNS: &str =
    "id, name, state, reason, labels, policy, created_at, expires_at, ended_at, report";

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable:
        // every statement is its own transaction.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new sandbox; `NameTaken` if a running one has its name.
    pub fn insert(&self, row: &SandboxRow) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&row.labels).expect("labels serialise");
        let report = row.report.as_ref().map(|r| r.to_string());
        let res = self.conn().execute(
            &format!("INSERT INTO sandboxes ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"),
            params![
                row.id,
                row.name,
                row.state.as_str(),
                row.reason,
                labels,
                row.policy.to_string(),
                row.created_at,
                row.expires_at,
                row.ended_at,
                report
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation && row.name.is_some() =>
            {
                Err(StoreError::NameTaken(row.name.clone().unwrap_or_default()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a row (a sandbox whose creation failed).
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Marks a running sandbox as ended. Returns false (and changes
    /// nothing) when the row is not running any more.
    pub fn finish(
        &self,
        id: &str,
        state: SandboxState,
        reason: Option<&str>,
        report: Option<&serde_json::Value>,
        ended_at: f64,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE sandboxes SET state = ?2, reason = ?3, report = ?4, ended_at = ?5
             WHERE id = ?1 AND state = 'running'",
            params![
                id,
                state.as_str(),
                reason,
                report.map(|r| r.to_string()),
                ended_at
            ],
        )?;
        Ok(n == 1)
    }

    /// The sandbox with this id, or else the running one with this name.
    pub fn get(&self, id_or_name: &str) -> Result<Option<SandboxRow>, StoreError> {
        let conn = self.conn();
        let by_id = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"),
                params![id_or_name],
                raw_row,
            )
            .optional()?;
        let raw = match by_id {
            Some(r) => Some(r),
            None => conn
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM sandboxes WHERE name = ?1 AND state = 'running'"
                    ),
                    params![id_or_name],
                    raw_row,
                )
                .optional()?,
        };
        raw.map(RawRow::parse).transpose()
    }

    /// All sandboxes, newest first, optionally only those in `state`.
    pub fn list(&self, state: Option<SandboxState>) -> Result<Vec<SandboxRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE ?1 IS NULL OR state = ?1
             ORDER BY created_at DESC, id"
        ))?;
        let rows = stmt.query_map(params![state.map(|s| s.as_str())], raw_row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?.parse()?);
        }
        Ok(out)
    }

    /// Number of sandboxes in each state (every state present, 0 if none).
    pub fn counts(&self) -> Result<BTreeMap<&'static str, u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, count(*) FROM sandboxes GROUP BY state")?;
        let mut out: BTreeMap<&'static str, u64> =
            SandboxState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for r in rows {
            let (state, n) = r?;
            if let Some(s) = SandboxState::parse(&state) {
                out.insert(s.as_str(), n.max(0) as u64);
            }
        }
        Ok(out)
    }
}

/// A row as read, before its JSON columns are parsed.
struct RawRow {
    id: String,
    name: Option<String>,
    state: String,
    reason: Option<String>,
    labels: String,
    policy: String,
    created_at: f64,
    expires_at: Option<f64>,
    ended_at: Option<f64>,
    report: Option<String>,
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        name: r.get(1)?,
        state: r.get(2)?,
        reason: r.get(3)?,
        labels: r.get(4)?,
        policy: r.get(5)?,
        created_at: r.get(6)?,
        expires_at: r.get(7)?,
        ended_at: r.get(8)?,
        report: r.get(9)?,
    })
}

impl RawRow {
    fn parse(self) -> Result<SandboxRow, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            id: self.id.clone(),
            message,
        };
        let state = SandboxState::parse(&self.state)
            .ok_or_else(|| corrupt(format!("unknown state {:?}", self.state)))?;
        let labels = serde_json::from_str(&self.labels).map_err(|e| corrupt(e.to_string()))?;
        let policy = serde_json::from_str(&self.policy).map_err(|e| corrupt(e.to_string()))?;
        let report = match &self.report {
            Some(r) => Some(serde_json::from_str(r).map_err(|e| corrupt(e.to_string()))?),
            None => None,
        };
        Ok(SandboxRow {
            state,
            labels,
            policy,
            report,
            id: self.id,
            name: self.name,
            reason: self.reason,
            created_at: self.created_at,
            expires_at: self.expires_at,
            ended_at: self.ended_at,
        })
    }
}
