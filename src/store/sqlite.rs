//! The `db.sql.sqlite` service: one SQLite connection owned by a dedicated thread, fed jobs over a
//! channel and answering through oneshots, so no tokio worker ever blocks on disk I/O or locks.
//!
//! The registry forces `max_open = 1`, so the single connection is also the unit of exclusion: a
//! running transaction owns it, and jobs from everyone else wait (in order) until it ends.

use crate::process::value::{ErrorKind, Value};
use bytes::Bytes;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, ToSql};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long SQLite itself retries on a lock held by another connection (another OS process).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// A transaction nobody has touched for this long is rolled back once other work is waiting for
/// the connection: an abandoned `Tx` (a killed process whose handle the GC has not collected yet)
/// must not stall the whole database forever.
const TX_IDLE_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(30)
};
const STATEMENT_CACHE: usize = 64;

/// A bound parameter; always bound, never interpolated into SQL text.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl ToSql for SqlParam {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlParam::Null => ValueRef::Null,
            SqlParam::Int(i) => ValueRef::Integer(*i),
            SqlParam::Float(f) => ValueRef::Real(*f),
            SqlParam::Text(s) => ValueRef::Text(s.as_bytes()),
            SqlParam::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// One result row: columns in statement order; NULL columns are absent.
pub type Row = Vec<(String, Value)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecResult {
    pub rows_affected: i64,
    pub last_insert_id: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxOptions {
    /// Enforced with `PRAGMA query_only` for the life of the transaction.
    pub read_only: bool,
}

/// Pool statistics in the shape of Go's `sql.DBStats` (what `db:stats()` reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqlStats {
    pub max_open_connections: i64,
    pub open_connections: i64,
    pub in_use: i64,
    pub idle: i64,
    /// Jobs that had to wait for a transaction of someone else to end.
    pub wait_count: i64,
    pub wait_duration: Duration,
    pub max_idle_closed: i64,
    pub max_idle_time_closed: i64,
    pub max_lifetime_closed: i64,
}

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum SqlError {
    #[error("sql syntax error: {0}")]
    Syntax(String),
    /// Bad input from the caller: parameter count, savepoint name, multiple statements …
    #[error("{0}")]
    Invalid(String),
    #[error("transaction is no longer active")]
    TxDone,
    #[error("database is closed")]
    Closed,
    #[error("cannot open database: {0}")]
    Open(String),
    #[error("{0}")]
    Other(String),
}

impl SqlError {
    /// The error kind scripts see (§6.6: syntax ⇒ INVALID, others INTERNAL).
    pub fn kind(&self) -> ErrorKind {
        match self {
            SqlError::Syntax(_) | SqlError::Invalid(_) | SqlError::TxDone => ErrorKind::Invalid,
            SqlError::Closed => ErrorKind::Unavailable,
            SqlError::Open(_) | SqlError::Other(_) => ErrorKind::Internal,
        }
    }
}

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::Error as E;
        match &e {
            E::SqliteFailure(err, msg) => {
                let msg = msg.clone().unwrap_or_else(|| err.to_string());
                if err.code == rusqlite::ErrorCode::Unknown && is_syntax_message(&msg) {
                    SqlError::Syntax(msg)
                } else {
                    SqlError::Other(msg)
                }
            }
            E::SqlInputError { msg, .. } if is_syntax_message(msg) => SqlError::Syntax(msg.clone()),
            E::InvalidParameterCount(given, expected) => {
                SqlError::Invalid(format!("expected {expected} parameters, got {given}"))
            }
            E::MultipleStatement => {
                SqlError::Invalid("multiple statements are not allowed here".into())
            }
            E::NulError(_) => SqlError::Invalid("SQL text contains a NUL byte".into()),
            _ => SqlError::Other(e.to_string()),
        }
    }
}

/// SQLite reports parse failures as plain `SQLITE_ERROR`; only the message tells them apart from,
/// say, a missing table.
fn is_syntax_message(msg: &str) -> bool {
    msg.contains("syntax error")
        || msg.contains("incomplete input")
        || msg.contains("unrecognized token")
}

type Reply<T> = oneshot::Sender<Result<T, SqlError>>;

enum TxCtl {
    Commit,
    Rollback,
    Savepoint(String),
    RollbackTo(String),
    Release(String),
}

enum Op {
    Query {
        sql: String,
        params: Vec<SqlParam>,
        reply: Reply<Vec<Row>>,
    },
    Execute {
        sql: String,
        params: Vec<SqlParam>,
        reply: Reply<ExecResult>,
    },
    Prepare {
        sql: String,
        reply: Reply<()>,
    },
    Begin {
        id: u64,
        opts: TxOptions,
        reply: Reply<()>,
    },
    /// `reply` is `None` for the rollback a dropped `Tx` sends.
    Tx {
        ctl: TxCtl,
        reply: Option<Reply<()>>,
    },
    Close {
        done: Option<mpsc::SyncSender<()>>,
    },
}

struct Job {
    /// `Some(id)`: part of transaction `id`; `None`: needs the connection outside any transaction.
    tx: Option<u64>,
    op: Op,
    deferred_at: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    busy: AtomicBool,
    tx_open: AtomicBool,
    wait_count: AtomicU64,
    wait_nanos: AtomicU64,
}

struct Inner {
    jobs: mpsc::Sender<Job>,
    closed: AtomicBool,
    next_tx: AtomicU64,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn send(&self, tx: Option<u64>, op: Op) -> Result<(), SqlError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SqlError::Closed);
        }
        self.jobs
            .send(Job {
                tx,
                op,
                deferred_at: None,
            })
            .map_err(|_| SqlError::Closed)
    }

    async fn call<T>(
        &self,
        tx: Option<u64>,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<T, SqlError> {
        let (reply, rx) = oneshot::channel();
        self.send(tx, make(reply))?;
        rx.await.unwrap_or(Err(SqlError::Closed))
    }

    /// For callers without a runtime (the CLI); panics inside an async context, like
    /// `oneshot::Receiver::blocking_recv`.
    fn call_blocking<T>(
        &self,
        tx: Option<u64>,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<T, SqlError> {
        let (reply, rx) = oneshot::channel();
        self.send(tx, make(reply))?;
        rx.blocking_recv().unwrap_or(Err(SqlError::Closed))
    }
}

/// A running SQLite database. `Send + Sync`; clone the `Arc` freely.
pub struct Sqlite {
    inner: Arc<Inner>,
    file: String,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite")
            .field("file", &self.file)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Sqlite {
    /// Opens `file` (`":memory:"` or a path relative to `project_root`), creating missing parent
    /// directories (§11 row 19), and starts the connection thread.
    pub fn open(file: &str, project_root: &Path) -> Result<Arc<Self>, SqlError> {
        if file.trim().is_empty() {
            return Err(SqlError::Invalid("sqlite: empty file".into()));
        }
        let conn = if file == ":memory:" {
            Connection::open_in_memory()
        } else {
            let path = project_root.join(file);
            if let Some(parent) = path.parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| SqlError::Open(format!("{}: {e}", parent.display())))?;
                }
            }
            Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        }
        .map_err(|e| SqlError::Open(format!("{file}: {e}")))?;
        configure(&conn).map_err(|e| SqlError::Open(format!("{file}: {e}")))?;

        let (jobs, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            conn: Some(conn),
            active: None,
            deferred: VecDeque::new(),
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("sqlite:{file}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| SqlError::Open(format!("cannot start connection thread: {e}")))?;
        Ok(Arc::new(Sqlite {
            inner: Arc::new(Inner {
                jobs,
                closed: AtomicBool::new(false),
                next_tx: AtomicU64::new(1),
                counters,
                thread: Mutex::new(Some(thread)),
            }),
            file: file.to_string(),
        }))
    }

    /// The `file` it was opened with.
    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    pub async fn query(&self, sql: String, params: Vec<SqlParam>) -> Result<Vec<Row>, SqlError> {
        self.inner
            .call(None, |reply| Op::Query { sql, params, reply })
            .await
    }

    pub async fn execute(
        &self,
        sql: String,
        params: Vec<SqlParam>,
    ) -> Result<ExecResult, SqlError> {
        self.inner
            .call(None, |reply| Op::Execute { sql, params, reply })
            .await
    }

    /// Compiles `sql` (and keeps it in the statement cache) so errors surface at `db:prepare`.
    pub async fn prepare(&self, sql: String) -> Result<(), SqlError> {
        self.inner
            .call(None, |reply| Op::Prepare { sql, reply })
            .await
    }

    /// Starts a transaction; it owns the connection until commit, rollback or drop.
    pub async fn begin(&self, opts: TxOptions) -> Result<Tx, SqlError> {
        let id = self.inner.next_tx.fetch_add(1, Ordering::Relaxed);
        self.inner
            .call(None, |reply| Op::Begin { id, opts, reply })
            .await?;
        Ok(Tx {
            inner: self.inner.clone(),
            id,
            done: AtomicBool::new(false),
        })
    }

    pub fn stats(&self) -> SqlStats {
        let c = &self.inner.counters;
        let open = i64::from(!self.is_closed());
        let in_use = i64::from(
            open == 1 && (c.busy.load(Ordering::Relaxed) || c.tx_open.load(Ordering::Relaxed)),
        );
        SqlStats {
            max_open_connections: 1,
            open_connections: open,
            in_use,
            idle: open - in_use,
            wait_count: c.wait_count.load(Ordering::Relaxed) as i64,
            wait_duration: Duration::from_nanos(c.wait_nanos.load(Ordering::Relaxed)),
            ..SqlStats::default()
        }
    }

    /// Stops accepting jobs; the thread finishes those already queued (rolling back a transaction
    /// still open), then closes the connection. Does not wait.
    pub fn close(&self) {
        self.send_close(None);
    }

    /// `close` and wait until the connection is closed (CLI, tests, shutdown off the runtime).
    pub fn close_blocking(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.send_close(Some(done)) {
            let _ = wait.recv();
        }
        if let Some(handle) = self.inner.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = handle.join();
        }
    }

    fn send_close(&self, done: Option<mpsc::SyncSender<()>>) -> bool {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.inner
            .jobs
            .send(Job {
                tx: None,
                op: Op::Close { done },
                deferred_at: None,
            })
            .is_ok()
    }

    /// Blocking `query` for code without a runtime (the CLI). Panics inside an async context.
    pub fn query_blocking(&self, sql: &str, params: Vec<SqlParam>) -> Result<Vec<Row>, SqlError> {
        let sql = sql.to_string();
        self.inner
            .call_blocking(None, |reply| Op::Query { sql, params, reply })
    }

    /// Blocking `execute` for code without a runtime (the CLI). Panics inside an async context.
    pub fn execute_blocking(
        &self,
        sql: &str,
        params: Vec<SqlParam>,
    ) -> Result<ExecResult, SqlError> {
        let sql = sql.to_string();
        self.inner
            .call_blocking(None, |reply| Op::Execute { sql, params, reply })
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        // Open `Tx`es keep `Inner` (and the channel) alive; they still get to finish.
        self.send_close(None);
    }
}

/// An open transaction. Dropping it without `commit` rolls it back.
pub struct Tx {
    inner: Arc<Inner>,
    id: u64,
    done: AtomicBool,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("id", &self.id)
            .field("done", &self.is_done())
            .finish()
    }
}

impl Tx {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Committed or rolled back (through this handle).
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn check(&self) -> Result<(), SqlError> {
        if self.is_done() {
            Err(SqlError::TxDone)
        } else {
            Ok(())
        }
    }

    pub async fn query(&self, sql: String, params: Vec<SqlParam>) -> Result<Vec<Row>, SqlError> {
        self.check()?;
        self.inner
            .call(Some(self.id), |reply| Op::Query { sql, params, reply })
            .await
    }

    pub async fn execute(
        &self,
        sql: String,
        params: Vec<SqlParam>,
    ) -> Result<ExecResult, SqlError> {
        self.check()?;
        self.inner
            .call(Some(self.id), |reply| Op::Execute { sql, params, reply })
            .await
    }

    pub async fn prepare(&self, sql: String) -> Result<(), SqlError> {
        self.check()?;
        self.inner
            .call(Some(self.id), |reply| Op::Prepare { sql, reply })
            .await
    }

    /// Ends the transaction even when COMMIT fails (it is rolled back then).
    pub async fn commit(&self) -> Result<(), SqlError> {
        self.finish(TxCtl::Commit).await
    }

    pub async fn rollback(&self) -> Result<(), SqlError> {
        self.finish(TxCtl::Rollback).await
    }

    pub async fn savepoint(&self, name: &str) -> Result<(), SqlError> {
        self.savepoint_op(name, TxCtl::Savepoint).await
    }

    pub async fn rollback_to(&self, name: &str) -> Result<(), SqlError> {
        self.savepoint_op(name, TxCtl::RollbackTo).await
    }

    /// Releases (forgets) savepoint `name`, keeping its changes in the transaction.
    pub async fn release(&self, name: &str) -> Result<(), SqlError> {
        self.savepoint_op(name, TxCtl::Release).await
    }

    async fn finish(&self, ctl: TxCtl) -> Result<(), SqlError> {
        if self.done.swap(true, Ordering::AcqRel) {
            return Err(SqlError::TxDone);
        }
        self.inner
            .call(Some(self.id), |reply| Op::Tx {
                ctl,
                reply: Some(reply),
            })
            .await
    }

    async fn savepoint_op(&self, name: &str, make: fn(String) -> TxCtl) -> Result<(), SqlError> {
        self.check()?;
        check_savepoint_name(name)?;
        let ctl = make(name.to_string());
        self.inner
            .call(Some(self.id), |reply| Op::Tx {
                ctl,
                reply: Some(reply),
            })
            .await
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            // Bypasses the `closed` check: a closing database still wants the rollback.
            let _ = self.inner.jobs.send(Job {
                tx: Some(self.id),
                op: Op::Tx {
                    ctl: TxCtl::Rollback,
                    reply: None,
                },
                deferred_at: None,
            });
        }
    }
}

/// Savepoint names cannot be bound as parameters, so they are restricted to identifiers.
fn check_savepoint_name(name: &str) -> Result<(), SqlError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SqlError::Invalid(format!(
            "invalid savepoint name {name:?} (letters, digits and underscore only)"
        )))
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // In-memory databases answer "memory"; that is fine.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

struct ActiveTx {
    id: u64,
    read_only: bool,
    last_used: Instant,
}

enum Flow {
    Continue,
    Stop,
}

/// How long the connection thread keeps looking for the next job (yielding its core between
/// looks) before it sleeps on the channel.
///
/// Why: under load the next query is usually a few tens of microseconds away. Sleeping at once
/// cost a futex wake-up and two context switches per query on the 2-core machine (about a fifth
/// of the token exchange's time); looking for 100 µs first gave +8 % requests/s on
/// `POST /auth/token` in alternating runs. Idle, it costs at most 100 µs of yields per query.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(100);

/// The next job: taken at once if one arrives within `SPIN_BEFORE_SLEEP`, else waited for.
fn recv_soon(rx: &mpsc::Receiver<Job>) -> Result<Job, mpsc::RecvError> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(job) => return Ok(job),
            Err(mpsc::TryRecvError::Disconnected) => return Err(mpsc::RecvError),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if start.elapsed() >= SPIN_BEFORE_SLEEP {
            return rx.recv();
        }
        std::thread::yield_now();
    }
}

/// State owned by the connection thread.
struct Worker {
    conn: Option<Connection>,
    active: Option<ActiveTx>,
    /// Jobs that arrived while someone else's transaction held the connection, in arrival order.
    deferred: VecDeque<Job>,
    counters: Arc<Counters>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            while self.active.is_none() {
                let Some(job) = self.deferred.pop_front() else {
                    break;
                };
                if let Flow::Stop = self.handle(job) {
                    return self.shutdown();
                }
            }
            let job = match &self.active {
                Some(active) if !self.deferred.is_empty() => {
                    let idle = active.last_used.elapsed();
                    if idle >= TX_IDLE_TIMEOUT {
                        tracing::warn!(
                            tx = active.id,
                            "rolling back a transaction idle for {idle:?} while others wait"
                        );
                        let _ = self.end_active(false);
                        continue;
                    }
                    match rx.recv_timeout(TX_IDLE_TIMEOUT - idle) {
                        Ok(job) => job,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match recv_soon(&rx) {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            if let Flow::Stop = self.handle(job) {
                break;
            }
        }
        self.shutdown();
    }

    /// Rolls back a transaction still open, finishes deferred work, closes the connection.
    fn shutdown(&mut self) {
        if self.active.is_some() {
            let _ = self.end_active(false);
        }
        while let Some(job) = self.deferred.pop_front() {
            match job.op {
                // Nobody is left to drive a transaction started now.
                Op::Begin { reply, .. } => {
                    let _ = reply.send(Err(SqlError::Closed));
                }
                Op::Close { done } => {
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                _ => {
                    self.handle(job);
                }
            }
        }
        if let Some(conn) = self.conn.take() {
            if let Err((_, e)) = conn.close() {
                tracing::warn!("closing sqlite connection: {e}");
            }
        }
        self.counters.tx_open.store(false, Ordering::Relaxed);
    }

    fn handle(&mut self, mut job: Job) -> Flow {
        match job.tx {
            None => {
                if let Op::Close { done } = job.op {
                    self.shutdown();
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return Flow::Stop;
                }
                if self.active.is_some() {
                    job.deferred_at.get_or_insert_with(Instant::now);
                    self.deferred.push_back(job);
                    return Flow::Continue;
                }
                if let Some(at) = job.deferred_at {
                    self.counters.wait_count.fetch_add(1, Ordering::Relaxed);
                    let waited = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.counters
                        .wait_nanos
                        .fetch_add(waited, Ordering::Relaxed);
                }
            }
            Some(id) => match &mut self.active {
                Some(active) if active.id == id => active.last_used = Instant::now(),
                _ => {
                    // The transaction already ended (idle rollback, close, failed commit).
                    reply_err(job.op, SqlError::TxDone);
                    return Flow::Continue;
                }
            },
        }
        if self.conn.is_none() {
            reply_err(job.op, SqlError::Closed);
            return Flow::Continue;
        }
        self.counters.busy.store(true, Ordering::Relaxed);
        self.run_op(job.op);
        self.counters.busy.store(false, Ordering::Relaxed);
        Flow::Continue
    }

    fn run_op(&mut self, op: Op) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        match op {
            Op::Query { sql, params, reply } => {
                if !reply.is_closed() {
                    respond(&self.counters, reply, run_query(conn, &sql, &params));
                }
            }
            Op::Execute { sql, params, reply } => {
                if !reply.is_closed() {
                    respond(&self.counters, reply, run_execute(conn, &sql, &params));
                }
            }
            Op::Prepare { sql, reply } => {
                let result = conn.prepare_cached(&sql).map(drop).map_err(SqlError::from);
                respond(&self.counters, reply, result);
            }
            Op::Begin { id, opts, reply } => {
                if reply.is_closed() {
                    return;
                }
                match begin(conn, opts) {
                    Ok(()) => {
                        self.active = Some(ActiveTx {
                            id,
                            read_only: opts.read_only,
                            last_used: Instant::now(),
                        });
                        self.counters.tx_open.store(true, Ordering::Relaxed);
                        // The caller vanished between sending and now: nobody would ever end it.
                        if !respond(&self.counters, reply, Ok(())) {
                            let _ = self.end_active(false);
                        }
                    }
                    Err(e) => {
                        respond(&self.counters, reply, Err(e));
                    }
                }
            }
            Op::Tx { ctl, reply } => {
                let result = match ctl {
                    TxCtl::Commit => self.end_active(true),
                    TxCtl::Rollback => self.end_active(false),
                    TxCtl::Savepoint(n) => exec_sql(conn, &format!("SAVEPOINT {n}")),
                    TxCtl::RollbackTo(n) => exec_sql(conn, &format!("ROLLBACK TO SAVEPOINT {n}")),
                    TxCtl::Release(n) => exec_sql(conn, &format!("RELEASE SAVEPOINT {n}")),
                };
                if let Some(reply) = reply {
                    respond(&self.counters, reply, result);
                }
            }
            Op::Close { .. } => {}
        }
    }

    /// Commits (or rolls back) the active transaction; it is over whatever happens.
    fn end_active(&mut self, commit: bool) -> Result<(), SqlError> {
        let Some(active) = self.active.take() else {
            return Err(SqlError::TxDone);
        };
        self.counters.tx_open.store(false, Ordering::Relaxed);
        let Some(conn) = self.conn.as_ref() else {
            return Err(SqlError::Closed);
        };
        let result = if conn.is_autocommit() {
            // SQLite already rolled it back (some errors do that on their own).
            if commit {
                Err(SqlError::Other(
                    "transaction was rolled back by the database".into(),
                ))
            } else {
                Ok(())
            }
        } else if commit {
            match exec_sql(conn, "COMMIT") {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = exec_sql(conn, "ROLLBACK");
                    Err(e)
                }
            }
        } else {
            exec_sql(conn, "ROLLBACK")
        };
        if active.read_only {
            let _ = exec_sql(conn, "PRAGMA query_only = OFF");
        }
        result
    }
}

/// Marks the connection idle before answering, so a caller reading `stats()` right after its
/// call returns never sees its own job as still running. `false`: the caller is gone.
fn respond<T>(counters: &Counters, reply: Reply<T>, result: Result<T, SqlError>) -> bool {
    counters.busy.store(false, Ordering::Relaxed);
    reply.send(result).is_ok()
}

fn reply_err(op: Op, e: SqlError) {
    match op {
        Op::Query { reply, .. } => drop(reply.send(Err(e))),
        Op::Execute { reply, .. } => drop(reply.send(Err(e))),
        Op::Prepare { reply, .. } | Op::Begin { reply, .. } => drop(reply.send(Err(e))),
        Op::Tx { reply, .. } => {
            if let Some(reply) = reply {
                let _ = reply.send(Err(e));
            }
        }
        Op::Close { done } => {
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    }
}

fn exec_sql(conn: &Connection, sql: &str) -> Result<(), SqlError> {
    conn.execute_batch(sql).map_err(SqlError::from)
}

fn begin(conn: &Connection, opts: TxOptions) -> Result<(), SqlError> {
    if opts.read_only {
        exec_sql(conn, "PRAGMA query_only = ON")?;
        let r = exec_sql(conn, "BEGIN DEFERRED");
        if r.is_err() {
            let _ = exec_sql(conn, "PRAGMA query_only = OFF");
        }
        r
    } else {
        // Take the write lock up front: upgrading a read lock later can fail with SQLITE_BUSY
        // when another OS process writes meanwhile, with no retry possible.
        exec_sql(conn, "BEGIN IMMEDIATE")
    }
}

fn check_param_count(stmt: &rusqlite::Statement<'_>, params: &[SqlParam]) -> Result<(), SqlError> {
    let expected = stmt.parameter_count();
    if expected != params.len() {
        return Err(SqlError::Invalid(format!(
            "expected {expected} parameters, got {}",
            params.len()
        )));
    }
    Ok(())
}

fn run_query(conn: &Connection, sql: &str, params: &[SqlParam]) -> Result<Vec<Row>, SqlError> {
    let mut stmt = conn.prepare_cached(sql)?;
    check_param_count(&stmt, params)?;
    let names: Vec<String> = stmt
        .column_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut row = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let v = match r.get_ref(i)? {
                ValueRef::Null => continue,
                ValueRef::Integer(n) => Value::Int(n),
                ValueRef::Real(f) => Value::Float(f),
                ValueRef::Text(b) | ValueRef::Blob(b) => Value::Str(Bytes::copy_from_slice(b)),
            };
            row.push((name.clone(), v));
        }
        out.push(row);
    }
    Ok(out)
}

fn run_execute(conn: &Connection, sql: &str, params: &[SqlParam]) -> Result<ExecResult, SqlError> {
    let mut stmt = match conn.prepare_cached(sql) {
        Ok(stmt) => stmt,
        // Migration scripts pass several statements at once; without parameters that is safe.
        Err(rusqlite::Error::MultipleStatement) if params.is_empty() => {
            conn.execute_batch(sql)?;
            return Ok(exec_result(conn, false));
        }
        Err(e) => return Err(e.into()),
    };
    check_param_count(&stmt, params)?;
    if stmt.column_count() == 0 {
        stmt.execute(rusqlite::params_from_iter(params))?;
        return Ok(exec_result(conn, false));
    }
    // Statements that return rows (`RETURNING`, pragmas, a stray SELECT): run them to the end.
    let read_only = stmt.readonly();
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    while rows.next()?.is_some() {}
    drop(rows);
    Ok(exec_result(conn, read_only))
}

fn exec_result(conn: &Connection, read_only: bool) -> ExecResult {
    ExecResult {
        // `changes()` is sticky across reads; a read-only statement affected nothing.
        rows_affected: if read_only { 0 } else { conn.changes() as i64 },
        last_insert_id: conn.last_insert_rowid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> SqlParam {
        SqlParam::Text(s.to_string())
    }

    fn get<'a>(row: &'a Row, col: &str) -> Option<&'a Value> {
        row.iter().find(|(c, _)| c == col).map(|(_, v)| v)
    }

    async fn count(db: &Sqlite) -> i64 {
        let rows = db
            .query("SELECT count(*) AS n FROM t".into(), vec![])
            .await
            .unwrap();
        match get(&rows[0], "n") {
            Some(Value::Int(n)) => *n,
            other => panic!("count: {other:?}"),
        }
    }

    async fn setup(dir: &Path) -> Arc<Sqlite> {
        let db = Sqlite::open("data/db/app.db", dir).unwrap();
        db.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, blob BLOB)".into(),
            vec![],
        )
        .await
        .unwrap();
        db
    }

    #[tokio::test]
    async fn open_creates_parent_dirs_and_uses_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open("nested/deeper/app.db", dir.path()).unwrap();
        assert!(dir.path().join("nested/deeper/app.db").exists());
        let rows = db
            .query("PRAGMA journal_mode".into(), vec![])
            .await
            .unwrap();
        assert_eq!(get(&rows[0], "journal_mode"), Some(&Value::str("wal")));
        let rows = db
            .query("PRAGMA foreign_keys".into(), vec![])
            .await
            .unwrap();
        assert_eq!(get(&rows[0], "foreign_keys"), Some(&Value::Int(1)));
    }

    #[tokio::test]
    async fn memory_database_works() {
        let db = Sqlite::open(":memory:", Path::new("/nonexistent")).unwrap();
        let rows = db
            .query("SELECT 1 + ? AS x".into(), vec![SqlParam::Int(2)])
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![("x".to_string(), Value::Int(3))]]);
    }

    #[tokio::test]
    async fn rows_keep_types_order_and_drop_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        let r = db
            .execute(
                "INSERT INTO t (name, score, blob) VALUES (?, ?, ?)".into(),
                vec![
                    text("a"),
                    SqlParam::Float(1.5),
                    SqlParam::Blob(vec![0, 255]),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            ExecResult {
                rows_affected: 1,
                last_insert_id: 1
            }
        );
        let r = db
            .execute(
                "INSERT INTO t (name, score) VALUES (?, ?)".into(),
                vec![SqlParam::Null, SqlParam::Int(7)],
            )
            .await
            .unwrap();
        assert_eq!(r.last_insert_id, 2);

        let rows = db
            .query(
                "SELECT id, name, score, blob FROM t ORDER BY id".into(),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        let cols: Vec<&str> = rows[0].iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(cols, ["id", "name", "score", "blob"]);
        assert_eq!(get(&rows[0], "score"), Some(&Value::Float(1.5)));
        assert_eq!(
            get(&rows[0], "blob"),
            Some(&Value::Str(Bytes::from_static(&[0, 255])))
        );
        assert_eq!(get(&rows[1], "name"), None);
        // REAL column affinity turns the bound integer into a float.
        assert_eq!(get(&rows[1], "score"), Some(&Value::Float(7.0)));
        assert_eq!(get(&rows[1], "blob"), None);

        let r = db
            .execute("UPDATE t SET name = ?".into(), vec![text("z")])
            .await
            .unwrap();
        assert_eq!(r.rows_affected, 2);
        let r = db.execute("SELECT * FROM t".into(), vec![]).await.unwrap();
        assert_eq!(r.rows_affected, 0);
    }

    #[tokio::test]
    async fn error_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        let e = db.query("SELEC nonsense".into(), vec![]).await.unwrap_err();
        assert!(matches!(e, SqlError::Syntax(_)), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = db
            .execute("INSERT INTO t (name VALUES (?)".into(), vec![text("x")])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = db
            .query("SELECT * FROM missing".into(), vec![])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal, "{e:?}");
        let e = db.query("SELECT ?".into(), vec![]).await.unwrap_err();
        assert!(matches!(e, SqlError::Invalid(_)), "{e:?}");
        db.execute("CREATE UNIQUE INDEX u ON t(name)".into(), vec![])
            .await
            .unwrap();
        db.execute("INSERT INTO t (name) VALUES ('dup')".into(), vec![])
            .await
            .unwrap();
        let e = db
            .execute("INSERT INTO t (name) VALUES ('dup')".into(), vec![])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal);
    }

    #[tokio::test]
    async fn execute_accepts_several_statements_without_params() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        db.execute(
            "INSERT INTO t (name) VALUES ('a'); INSERT INTO t (name) VALUES ('b');".into(),
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(count(&db).await, 2);
        let e = db
            .execute(
                "INSERT INTO t (name) VALUES (?); SELECT 1".into(),
                vec![text("c")],
            )
            .await
            .unwrap_err();
        assert!(matches!(e, SqlError::Invalid(_)));
    }

    #[tokio::test]
    async fn transactions_commit_rollback_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;

        let tx = db.begin(TxOptions::default()).await.unwrap();
        tx.execute("INSERT INTO t (name) VALUES (?)".into(), vec![text("a")])
            .await
            .unwrap();
        let rows = tx.query("SELECT name FROM t".into(), vec![]).await.unwrap();
        assert_eq!(rows.len(), 1);
        tx.commit().await.unwrap();
        assert_eq!(tx.commit().await.unwrap_err(), SqlError::TxDone);
        assert_eq!(
            tx.query("SELECT 1".into(), vec![]).await.unwrap_err(),
            SqlError::TxDone
        );
        assert_eq!(count(&db).await, 1);

        let tx = db.begin(TxOptions::default()).await.unwrap();
        tx.execute("INSERT INTO t (name) VALUES ('b')".into(), vec![])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(count(&db).await, 1);

        let tx = db.begin(TxOptions::default()).await.unwrap();
        tx.execute("INSERT INTO t (name) VALUES ('c')".into(), vec![])
            .await
            .unwrap();
        drop(tx);
        assert_eq!(count(&db).await, 1);
    }

    #[tokio::test]
    async fn other_work_waits_for_the_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        let tx = db.begin(TxOptions::default()).await.unwrap();
        tx.execute("INSERT INTO t (name) VALUES ('in-tx')".into(), vec![])
            .await
            .unwrap();
        let db2 = db.clone();
        let outside = tokio::spawn(async move {
            db2.execute("INSERT INTO t (name) VALUES ('outside')".into(), vec![])
                .await
                .unwrap();
            count(&db2).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!outside.is_finished());
        assert_eq!(db.stats().in_use, 1);
        // The outside insert is not part of the transaction: rolling back keeps it.
        tx.rollback().await.unwrap();
        assert_eq!(outside.await.unwrap(), 1);
        let stats = db.stats();
        assert!(stats.wait_count >= 1);
        assert_eq!(
            (
                stats.max_open_connections,
                stats.open_connections,
                stats.in_use
            ),
            (1, 1, 0)
        );
    }

    #[tokio::test]
    async fn abandoned_transaction_is_rolled_back_when_others_wait() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        // A handle nobody uses any more but that is not dropped yet (GC has not run).
        let tx = db.begin(TxOptions::default()).await.unwrap();
        tx.execute("INSERT INTO t (name) VALUES ('abandoned')".into(), vec![])
            .await
            .unwrap();
        let started = Instant::now();
        assert_eq!(count(&db).await, 0);
        assert!(started.elapsed() >= TX_IDLE_TIMEOUT / 2);
        assert_eq!(
            tx.query("SELECT 1".into(), vec![]).await.unwrap_err(),
            SqlError::TxDone
        );
        drop(tx);
        assert_eq!(count(&db).await, 0);
    }

    #[tokio::test]
    async fn savepoints() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        let tx = db.begin(TxOptions::default()).await.unwrap();
        tx.execute("INSERT INTO t (name) VALUES ('keep')".into(), vec![])
            .await
            .unwrap();
        tx.savepoint("sp1").await.unwrap();
        tx.execute("INSERT INTO t (name) VALUES ('undo')".into(), vec![])
            .await
            .unwrap();
        tx.rollback_to("sp1").await.unwrap();
        tx.savepoint("sp2").await.unwrap();
        tx.execute("INSERT INTO t (name) VALUES ('also')".into(), vec![])
            .await
            .unwrap();
        tx.release("sp2").await.unwrap();
        assert!(matches!(
            tx.savepoint("bad name; DROP TABLE t").await,
            Err(SqlError::Invalid(_))
        ));
        assert!(tx.rollback_to("nope").await.is_err());
        tx.commit().await.unwrap();
        let rows = db
            .query("SELECT name FROM t ORDER BY id".into(), vec![])
            .await
            .unwrap();
        let names: Vec<_> = rows
            .iter()
            .map(|r| get(r, "name").unwrap().as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["keep", "also"]);
    }

    #[tokio::test]
    async fn read_only_transaction_rejects_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        let tx = db.begin(TxOptions { read_only: true }).await.unwrap();
        tx.query("SELECT * FROM t".into(), vec![]).await.unwrap();
        assert!(tx
            .execute("INSERT INTO t (name) VALUES ('x')".into(), vec![])
            .await
            .is_err());
        tx.commit().await.unwrap();
        db.execute("INSERT INTO t (name) VALUES ('x')".into(), vec![])
            .await
            .unwrap();
        assert_eq!(count(&db).await, 1);
    }

    #[tokio::test]
    async fn prepare_reports_errors_early() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        db.prepare("SELECT * FROM t WHERE id = ?".into())
            .await
            .unwrap();
        assert!(matches!(
            db.prepare("SELEC".into()).await,
            Err(SqlError::Syntax(_))
        ));
    }

    #[tokio::test]
    async fn data_survives_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        db.execute("INSERT INTO t (name) VALUES ('persist')".into(), vec![])
            .await
            .unwrap();
        db.close();
        assert!(db.is_closed());
        assert_eq!(
            db.query("SELECT 1".into(), vec![]).await.unwrap_err(),
            SqlError::Closed
        );
        assert_eq!(db.stats().open_connections, 0);
        let db = Sqlite::open("data/db/app.db", dir.path()).unwrap();
        let rows = db.query("SELECT name FROM t".into(), vec![]).await.unwrap();
        assert_eq!(get(&rows[0], "name"), Some(&Value::str("persist")));
    }

    #[tokio::test]
    async fn close_finishes_queued_jobs_and_rolls_back_open_tx() {
        let dir = tempfile::tempdir().unwrap();
        let db = setup(dir.path()).await;
        let tx = db.begin(TxOptions::default()).await.unwrap();
        tx.execute("INSERT INTO t (name) VALUES ('lost')".into(), vec![])
            .await
            .unwrap();
        let db2 = db.clone();
        let queued = tokio::spawn(async move {
            db2.execute("INSERT INTO t (name) VALUES ('queued')".into(), vec![])
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        db.close();
        assert!(queued.await.unwrap().is_ok());
        assert_eq!(tx.commit().await.unwrap_err(), SqlError::Closed);
        let db = Sqlite::open("data/db/app.db", dir.path()).unwrap();
        let rows = db.query("SELECT name FROM t".into(), vec![]).await.unwrap();
        assert_eq!(rows, vec![vec![("name".to_string(), Value::str("queued"))]]);
    }

    #[test]
    fn blocking_calls_without_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open("cli.db", dir.path()).unwrap();
        db.execute_blocking("CREATE TABLE k (v TEXT)", vec![])
            .unwrap();
        let r = db
            .execute_blocking("INSERT INTO k VALUES (?)", vec![text("x")])
            .unwrap();
        assert_eq!(r.rows_affected, 1);
        let rows = db.query_blocking("SELECT v FROM k", vec![]).unwrap();
        assert_eq!(rows.len(), 1);
        db.close_blocking();
        assert!(db.query_blocking("SELECT 1", vec![]).is_err());
    }

    #[test]
    fn savepoint_names_are_identifiers() {
        assert!(check_savepoint_name("sp_1").is_ok());
        assert!(check_savepoint_name("_x").is_ok());
        assert!(check_savepoint_name("").is_err());
        assert!(check_savepoint_name("1sp").is_err());
        assert!(check_savepoint_name("a-b").is_err());
    }
}
