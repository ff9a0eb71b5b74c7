//! The `sql` module (§6.6): `sql.get`, the DB / Stmt / Tx userdata over `store::sqlite`, typed
//! parameters (`sql.NULL`, `sql.as.*`) and the `sql.type` / `sql.isolation` constants.
//!
//! The module table is shared by every process on the worker, so nothing here captures process
//! state: who is calling is read from `context` at call time. DB calls are async functions, so
//! the calling coroutine suspends while the connection thread works.

use crate::lua::context;
use crate::lua::errors::{fail, ok};
use crate::lua::sandbox::read_only;
use crate::lua::wait::Waiting;
use crate::process::value::ErrorKind;
use crate::registry::kinds::EntryId;
use crate::store::sqlite::{ExecResult, Row, SqlError, SqlParam, Sqlite, Tx, TxOptions};
use mlua::{Lua, MetaMethod, MultiValue, Table, UserData, UserDataMethods, UserDataRef};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

type Ret = mlua::Result<(mlua::Value, mlua::Value)>;

/// SQLite's default `SQLITE_MAX_VARIABLE_NUMBER`; also caps what a sparse table can allocate.
const MAX_PARAMS: usize = 32766;

const DB_TYPES: [(&str, &str); 6] = [
    ("POSTGRES", "postgres"),
    ("MYSQL", "mysql"),
    ("SQLITE", "sqlite"),
    ("MSSQL", "mssql"),
    ("ORACLE", "oracle"),
    ("UNKNOWN", "unknown"),
];

const ISOLATION: [(&str, &str); 6] = [
    ("DEFAULT", "default"),
    ("READ_UNCOMMITTED", "read_uncommitted"),
    ("READ_COMMITTED", "read_committed"),
    ("WRITE_COMMITTED", "write_committed"),
    ("REPEATABLE_READ", "repeatable_read"),
    ("SERIALIZABLE", "serializable"),
];

/// Builds the `sql` module table (the caller caches it per Lua state and makes it read-only).
pub fn loader(lua: &Lua) -> mlua::Result<Table> {
    let sql = lua.create_table()?;
    sql.set("get", lua.create_function(get)?)?;
    sql.set("NULL", Typed(SqlParam::Null))?;

    let as_ = lua.create_table()?;
    as_.set(
        "null",
        lua.create_function(|_, _: MultiValue| Ok(Typed(SqlParam::Null)))?,
    )?;
    as_.set(
        "int",
        lua.create_function(|_, v: mlua::Value| as_int(v).map(Typed))?,
    )?;
    as_.set(
        "float",
        lua.create_function(|lua, v: mlua::Value| as_float(lua, v).map(Typed))?,
    )?;
    as_.set(
        "text",
        lua.create_function(|lua, v: mlua::Value| {
            let s = coerce(lua, v, "sql.as.text")?;
            Ok(Typed(match String::from_utf8(s) {
                Ok(t) => SqlParam::Text(t),
                Err(e) => SqlParam::Text(String::from_utf8_lossy(e.as_bytes()).into_owned()),
            }))
        })?,
    )?;
    as_.set(
        "binary",
        lua.create_function(|lua, v: mlua::Value| {
            Ok(Typed(SqlParam::Blob(coerce(lua, v, "sql.as.binary")?)))
        })?,
    )?;
    sql.set("as", read_only(lua, as_)?)?;

    sql.set("type", constants(lua, &DB_TYPES)?)?;
    sql.set("isolation", constants(lua, &ISOLATION)?)?;
    Ok(sql)
}

fn constants(lua: &Lua, pairs: &[(&str, &str)]) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (k, v) in pairs {
        t.set(*k, *v)?;
    }
    read_only(lua, t)
}

// ---------------------------------------------------------------------------------------------
// sql.get

#[cfg(test)]
thread_local! {
    /// Databases `sql.get` finds in unit tests, which run without a node.
    static TEST_DBS: RefCell<Vec<(EntryId, Arc<Sqlite>)>> = const { RefCell::new(Vec::new()) };
    /// Declared entry kinds unit tests pretend the registry holds.
    static TEST_KINDS: RefCell<Vec<(EntryId, &'static str)>> = const { RefCell::new(Vec::new()) };
    /// `db.get` resources unit tests deny.
    static TEST_DENY: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn lookup(id: &EntryId) -> Option<Arc<Sqlite>> {
    #[cfg(test)]
    if let Some(db) = TEST_DBS.with(|t| {
        t.borrow()
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, db)| db.clone())
    }) {
        return Some(db);
    }
    context::lookup_db(id)
}

/// The kind of a declared entry: tells "no such entry" from "not a database" when no running
/// database answers to `id`.
fn declared_kind(id: &EntryId) -> Option<&'static str> {
    #[cfg(test)]
    if let Some(kind) = TEST_KINDS.with(|t| {
        t.borrow()
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, kind)| *kind)
    }) {
        return Some(kind);
    }
    context::with_current(|c| c.node.snapshot().registry.get(id).map(|e| e.kind_name())).flatten()
}

fn permitted(resource: &str) -> bool {
    #[cfg(test)]
    if TEST_DENY.with(|d| d.borrow().iter().any(|r| r == resource)) {
        return false;
    }
    context::allowed("db.get", resource)
}

fn get(lua: &Lua, id: mlua::Value) -> Ret {
    let id = match &id {
        mlua::Value::String(s) => s.to_str()?.to_string(),
        other => {
            return Err(mlua::Error::runtime(format!(
                "sql.get: id must be a string, got {}",
                other.type_name()
            )))
        }
    };
    if id.trim().is_empty() {
        return fail(lua, ErrorKind::Invalid, "sql.get: database id is empty");
    }
    let Some(entry) = EntryId::resolve(&id, &context::current_namespace()) else {
        return fail(
            lua,
            ErrorKind::Invalid,
            format!("sql.get: invalid database id {id:?}"),
        );
    };
    let resource = entry.to_string();
    if !permitted(&resource) {
        return fail(
            lua,
            ErrorKind::PermissionDenied,
            format!("permission denied: db.get on {resource}"),
        );
    }
    let found = lookup(&entry);
    if let Some(db) = found.as_ref().filter(|db| !db.is_closed()) {
        let handle = DbHandle {
            id: resource,
            db: RefCell::new(Some(db.clone())),
        };
        return ok(lua, LuaDb(Rc::new(handle)));
    }
    match (found, declared_kind(&entry)) {
        (Some(_), _) | (None, Some("db.sql.sqlite")) => fail(
            lua,
            ErrorKind::Unavailable,
            format!("database {resource} is not running"),
        ),
        (None, Some(kind)) => fail(
            lua,
            ErrorKind::Invalid,
            format!("{resource} is a {kind}, not a database"),
        ),
        (None, None) => fail(
            lua,
            ErrorKind::NotFound,
            format!("database not found: {resource}"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters

/// A value with a forced SQL type (`sql.NULL`, `sql.as.int(v)` …).
#[derive(Clone, Debug)]
struct Typed(SqlParam);

impl UserData for Typed {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(match &this.0 {
                SqlParam::Null => "sql.NULL".to_string(),
                SqlParam::Int(i) => format!("sql.int({i})"),
                SqlParam::Float(f) => format!("sql.float({f})"),
                SqlParam::Text(s) => format!("sql.text({s:?})"),
                SqlParam::Blob(b) => format!("sql.binary({} bytes)", b.len()),
            })
        });
        methods.add_meta_method(MetaMethod::Eq, |_, this, other: mlua::AnyUserData| {
            Ok(other
                .borrow::<Typed>()
                .map(|o| o.0 == this.0)
                .unwrap_or(false))
        });
    }
}

fn bad_arg(func: &str, v: &mlua::Value) -> mlua::Error {
    mlua::Error::runtime(format!("{func}: cannot convert a {} value", v.type_name()))
}

fn as_int(v: mlua::Value) -> mlua::Result<SqlParam> {
    let n = match &v {
        mlua::Value::Integer(i) => return Ok(SqlParam::Int(*i)),
        mlua::Value::Boolean(b) => return Ok(SqlParam::Int(i64::from(*b))),
        mlua::Value::Number(n) => *n,
        mlua::Value::String(s) => {
            let text = s.to_str()?;
            let text = text.trim();
            if let Ok(i) = text.parse::<i64>() {
                return Ok(SqlParam::Int(i));
            }
            text.parse::<f64>().map_err(|_| bad_arg("sql.as.int", &v))?
        }
        _ => return Err(bad_arg("sql.as.int", &v)),
    };
    if !n.is_finite() {
        return Err(mlua::Error::runtime("sql.as.int: value is not finite"));
    }
    // Truncation toward zero, as Go's int64(float64).
    Ok(SqlParam::Int(n.trunc() as i64))
}

fn as_float(lua: &Lua, v: mlua::Value) -> mlua::Result<SqlParam> {
    match &v {
        mlua::Value::Integer(i) => Ok(SqlParam::Float(*i as f64)),
        mlua::Value::Number(n) => Ok(SqlParam::Float(*n)),
        mlua::Value::Boolean(b) => Ok(SqlParam::Float(f64::from(u8::from(*b)))),
        mlua::Value::String(_) => match lua.coerce_number(v.clone())? {
            Some(n) => Ok(SqlParam::Float(n)),
            None => Err(bad_arg("sql.as.float", &v)),
        },
        _ => Err(bad_arg("sql.as.float", &v)),
    }
}

/// Strings pass through byte-exact; numbers and booleans get their Lua text form.
fn coerce(lua: &Lua, v: mlua::Value, func: &str) -> mlua::Result<Vec<u8>> {
    match &v {
        mlua::Value::Boolean(b) => Ok(b.to_string().into_bytes()),
        mlua::Value::String(s) => Ok(s.as_bytes().to_vec()),
        mlua::Value::Integer(_) | mlua::Value::Number(_) => match lua.coerce_string(v.clone())? {
            Some(s) => Ok(s.as_bytes().to_vec()),
            None => Err(bad_arg(func, &v)),
        },
        _ => Err(bad_arg(func, &v)),
    }
}

fn to_param(v: &mlua::Value) -> Result<SqlParam, SqlError> {
    Ok(match v {
        mlua::Value::Nil => SqlParam::Null,
        // Go drivers store booleans as 0/1 in SQLite.
        mlua::Value::Boolean(b) => SqlParam::Int(i64::from(*b)),
        mlua::Value::Integer(i) => SqlParam::Int(*i),
        mlua::Value::Number(n) => SqlParam::Float(*n),
        mlua::Value::String(s) => match s.to_str() {
            Ok(t) => SqlParam::Text(t.to_string()),
            // Not UTF-8: it is binary data, keep every byte.
            Err(_) => SqlParam::Blob(s.as_bytes().to_vec()),
        },
        mlua::Value::UserData(ud) => match ud.borrow::<Typed>() {
            Ok(t) => t.0.clone(),
            Err(_) => {
                return Err(SqlError::Invalid(
                    "unsupported SQL parameter: userdata".into(),
                ))
            }
        },
        other => {
            return Err(SqlError::Invalid(format!(
                "unsupported SQL parameter: {}",
                other.type_name()
            )))
        }
    })
}

/// `params?` is an array table (holes and `sql.NULL` bind NULL) or scalar varargs (§11 row 29).
fn params_from(args: MultiValue) -> Result<Vec<SqlParam>, SqlError> {
    let args: Vec<mlua::Value> = args.into_iter().collect();
    match args.as_slice() {
        [] | [mlua::Value::Nil] => Ok(Vec::new()),
        [mlua::Value::Table(t)] => table_params(t),
        many => many
            .iter()
            .map(|v| match v {
                mlua::Value::Table(_) => Err(SqlError::Invalid(
                    "SQL parameters: pass one array table or scalar values, not both".into(),
                )),
                v => to_param(v),
            })
            .collect(),
    }
}

fn table_params(t: &Table) -> Result<Vec<SqlParam>, SqlError> {
    let mut slots: Vec<(usize, SqlParam)> = Vec::new();
    for pair in t.pairs::<mlua::Value, mlua::Value>() {
        let (k, v) = pair.map_err(|e| SqlError::Invalid(e.to_string()))?;
        let index = match k {
            mlua::Value::Integer(i) if i >= 1 && (i as u64) <= MAX_PARAMS as u64 => i as usize,
            _ => {
                return Err(SqlError::Invalid(
                    "SQL parameters must be an array (named parameters are not supported)".into(),
                ))
            }
        };
        slots.push((index, to_param(&v)?));
    }
    let len = slots.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let mut params = vec![SqlParam::Null; len];
    for (i, p) in slots {
        params[i - 1] = p;
    }
    Ok(params)
}

// ---------------------------------------------------------------------------------------------
// Results

fn rows_to_lua(lua: &Lua, rows: Vec<Row>) -> mlua::Result<Table> {
    let out = lua.create_table_with_capacity(rows.len(), 0)?;
    for (i, row) in rows.into_iter().enumerate() {
        let t = lua.create_table_with_capacity(0, row.len())?;
        for (col, v) in &row {
            t.raw_set(col.as_str(), crate::lua::convert::to_lua(lua, v)?)?;
        }
        out.raw_set(i + 1, t)?;
    }
    Ok(out)
}

fn exec_to_lua(lua: &Lua, r: ExecResult) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 2)?;
    t.raw_set("last_insert_id", r.last_insert_id)?;
    t.raw_set("rows_affected", r.rows_affected)?;
    Ok(t)
}

fn sql_fail(lua: &Lua, e: SqlError) -> Ret {
    fail(lua, e.kind(), e.to_string())
}

fn released() -> SqlError {
    SqlError::Invalid("sql: database handle was released".into())
}

// ---------------------------------------------------------------------------------------------
// DB, Stmt and Tx userdata

/// What `db:release()` clears; statements prepared on the handle share it.
struct DbHandle {
    id: String,
    db: RefCell<Option<Arc<Sqlite>>>,
}

impl DbHandle {
    fn db(&self) -> Result<Arc<Sqlite>, SqlError> {
        self.db.borrow().clone().ok_or_else(released)
    }
}

/// Where a statement runs: on the database, or inside one transaction.
#[derive(Clone)]
enum Owner {
    Db(Rc<DbHandle>),
    Tx(Rc<Tx>),
}

impl Owner {
    async fn query(&self, sql: String, params: Vec<SqlParam>) -> Result<Vec<Row>, SqlError> {
        match self {
            Owner::Db(h) => h.db()?.query(sql, params).await,
            Owner::Tx(tx) => tx.query(sql, params).await,
        }
    }

    async fn execute(&self, sql: String, params: Vec<SqlParam>) -> Result<ExecResult, SqlError> {
        match self {
            Owner::Db(h) => h.db()?.execute(sql, params).await,
            Owner::Tx(tx) => tx.execute(sql, params).await,
        }
    }

    async fn prepare(&self, sql: String) -> Result<(), SqlError> {
        match self {
            Owner::Db(h) => h.db()?.prepare(sql).await,
            Owner::Tx(tx) => tx.prepare(sql).await,
        }
    }
}

async fn query_ret(
    lua: Lua,
    owner: Owner,
    sql: String,
    params: Result<Vec<SqlParam>, SqlError>,
) -> Ret {
    let params = match params {
        Ok(p) => p,
        Err(e) => return sql_fail(&lua, e),
    };
    match owner.query(sql, params).await {
        Ok(rows) => ok(&lua, rows_to_lua(&lua, rows)?),
        Err(e) => sql_fail(&lua, e),
    }
}

async fn execute_ret(
    lua: Lua,
    owner: Owner,
    sql: String,
    params: Result<Vec<SqlParam>, SqlError>,
) -> Ret {
    let params = match params {
        Ok(p) => p,
        Err(e) => return sql_fail(&lua, e),
    };
    match owner.execute(sql, params).await {
        Ok(r) => ok(&lua, exec_to_lua(&lua, r)?),
        Err(e) => sql_fail(&lua, e),
    }
}

async fn prepare_ret(lua: Lua, owner: Owner, sql: String) -> Ret {
    match owner.prepare(sql.clone()).await {
        Ok(()) => ok(
            &lua,
            LuaStmt {
                sql,
                owner,
                closed: Cell::new(false),
            },
        ),
        Err(e) => sql_fail(&lua, e),
    }
}

trait HasOwner {
    fn owner(&self) -> Owner;
}

/// `query`, `execute` and `prepare`, common to DB and Tx. Every call that waits for the
/// database is a `wait::Waiting` field (a synchronous wait, see `wait.rs`), not an mlua async
/// method: the queries are what HTTP handlers wait for most, and an mlua async call cost a
/// second step per wait.
fn add_statement_fields<T: HasOwner + 'static, F: mlua::UserDataFields<T>>(fields: &mut F) {
    type Statement<T> = (UserDataRef<T>, String, MultiValue);
    fields.add_field(
        "query",
        Waiting::new(|lua: &Lua, (this, sql, args): Statement<T>| {
            query_ret(lua.clone(), this.owner(), sql, params_from(args))
        }),
    );
    fields.add_field(
        "execute",
        Waiting::new(|lua: &Lua, (this, sql, args): Statement<T>| {
            execute_ret(lua.clone(), this.owner(), sql, params_from(args))
        }),
    );
    fields.add_field(
        "prepare",
        Waiting::new(|lua: &Lua, (this, sql): (UserDataRef<T>, String)| {
            prepare_ret(lua.clone(), this.owner(), sql)
        }),
    );
}

/// The handle `sql.get` returns.
struct LuaDb(Rc<DbHandle>);

impl HasOwner for LuaDb {
    fn owner(&self) -> Owner {
        Owner::Db(self.0.clone())
    }
}

impl UserData for LuaDb {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        add_statement_fields(fields);
        fields.add_field(
            "begin",
            Waiting::new(
                |lua: &Lua, (this, opts): (UserDataRef<Self>, Option<Table>)| {
                    let (lua, db, opts) = (lua.clone(), this.0.db(), tx_options(opts));
                    async move {
                        let result = match (db, opts) {
                            (Ok(db), Ok(opts)) => db.begin(opts).await,
                            (Err(e), _) | (_, Err(e)) => Err(e),
                        };
                        match result {
                            Ok(tx) => ok(&lua, LuaTx(Rc::new(tx))),
                            Err(e) => sql_fail(&lua, e),
                        }
                    }
                },
            ),
        );
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("type", |lua, _, ()| ok(lua, "sqlite"));
        methods.add_method("stats", |lua, this, ()| {
            let db = match this.0.db() {
                Ok(db) => db,
                Err(e) => return sql_fail(lua, e),
            };
            let s = db.stats();
            let t = lua.create_table()?;
            t.set("max_open_connections", s.max_open_connections)?;
            t.set("open_connections", s.open_connections)?;
            t.set("in_use", s.in_use)?;
            t.set("idle", s.idle)?;
            t.set("wait_count", s.wait_count)?;
            // Nanoseconds, like every bare duration number in `time.*` (§0.2).
            t.set(
                "wait_duration",
                i64::try_from(s.wait_duration.as_nanos()).unwrap_or(i64::MAX),
            )?;
            t.set("max_idle_closed", s.max_idle_closed)?;
            t.set("max_idle_time_closed", s.max_idle_time_closed)?;
            t.set("max_lifetime_closed", s.max_lifetime_closed)?;
            ok(lua, t)
        });
        methods.add_method("release", |lua, this, ()| {
            this.0.db.borrow_mut().take();
            ok(lua, true)
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            let state = if this.0.db.borrow().is_some() {
                ""
            } else {
                ", released"
            };
            Ok(format!("sql.DB({}{state})", this.0.id))
        });
    }
}

fn tx_options(opts: Option<Table>) -> Result<TxOptions, SqlError> {
    let Some(opts) = opts else {
        return Ok(TxOptions::default());
    };
    let bad = |e: mlua::Error| SqlError::Invalid(format!("begin options: {e}"));
    let isolation: Option<String> = opts.get("isolation").map_err(bad)?;
    if let Some(level) = isolation {
        let level = level.to_ascii_lowercase();
        // SQLite transactions are serializable, which satisfies every weaker level.
        if !ISOLATION.iter().any(|(_, v)| *v == level) {
            return Err(SqlError::Invalid(format!(
                "unknown isolation level {level:?}"
            )));
        }
    }
    let read_only: Option<bool> = opts.get("read_only").map_err(bad)?;
    Ok(TxOptions {
        read_only: read_only.unwrap_or(false),
    })
}

/// `db:prepare` / `tx:prepare` result: the SQL text plus where it runs (compiled statements
/// live in the connection's statement cache).
struct LuaStmt {
    sql: String,
    owner: Owner,
    closed: Cell<bool>,
}

impl LuaStmt {
    fn owner(&self) -> Result<Owner, SqlError> {
        if self.closed.get() {
            Err(SqlError::Invalid("sql: statement is closed".into()))
        } else {
            Ok(self.owner.clone())
        }
    }
}

impl UserData for LuaStmt {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        for (name, execute) in [("query", false), ("execute", true)] {
            fields.add_field(
                name,
                Waiting::new(
                    move |lua: &Lua, (this, args): (UserDataRef<Self>, MultiValue)| {
                        let (lua, sql) = (lua.clone(), this.sql.clone());
                        let target = this.owner().and_then(|o| Ok((o, params_from(args)?)));
                        async move {
                            match target {
                                Ok((owner, params)) if execute => {
                                    execute_ret(lua, owner, sql, Ok(params)).await
                                }
                                Ok((owner, params)) => query_ret(lua, owner, sql, Ok(params)).await,
                                Err(e) => sql_fail(&lua, e),
                            }
                        }
                    },
                ),
            );
        }
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("close", |lua, this, ()| {
            this.closed.set(true);
            ok(lua, true)
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("sql.Stmt({:?})", this.sql))
        });
    }
}

/// `db:begin()` result. Collected without commit ⇒ rolled back (`Tx` drop).
struct LuaTx(Rc<Tx>);

impl HasOwner for LuaTx {
    fn owner(&self) -> Owner {
        Owner::Tx(self.0.clone())
    }
}

/// The savepoint methods of a Tx.
#[derive(Clone, Copy)]
enum Savepoint {
    Create,
    RollbackTo,
    Release,
}

impl Savepoint {
    fn method(self) -> &'static str {
        match self {
            Savepoint::Create => "savepoint",
            Savepoint::RollbackTo => "rollback_to",
            Savepoint::Release => "release",
        }
    }
}

fn bool_ret(lua: &Lua, r: Result<(), SqlError>) -> Ret {
    match r {
        Ok(()) => ok(lua, true),
        Err(e) => sql_fail(lua, e),
    }
}

impl UserData for LuaTx {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        add_statement_fields(fields);
        for (name, commit) in [("commit", true), ("rollback", false)] {
            fields.add_field(
                name,
                Waiting::new(move |lua: &Lua, this: UserDataRef<Self>| {
                    let (lua, tx) = (lua.clone(), this.0.clone());
                    async move {
                        let ended = if commit {
                            tx.commit().await
                        } else {
                            tx.rollback().await
                        };
                        bool_ret(&lua, ended)
                    }
                }),
            );
        }
        for op in [Savepoint::Create, Savepoint::RollbackTo, Savepoint::Release] {
            fields.add_field(
                op.method(),
                Waiting::new(
                    move |lua: &Lua, (this, name): (UserDataRef<Self>, String)| {
                        let (lua, tx) = (lua.clone(), this.0.clone());
                        async move {
                            let done = match op {
                                Savepoint::Create => tx.savepoint(&name).await,
                                Savepoint::RollbackTo => tx.rollback_to(&name).await,
                                Savepoint::Release => tx.release(&name).await,
                            };
                            bool_ret(&lua, done)
                        }
                    },
                ),
            );
        }
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("db_type", |lua, _, ()| ok(lua, "sqlite"));
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            let state = if this.0.is_done() { "done" } else { "open" };
            Ok(format!("sql.Tx({}, {state})", this.0.id()))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Harness {
        lua: Lua,
        db: Arc<Sqlite>,
        _dir: tempfile::TempDir,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open("db/app.db", dir.path()).unwrap();
        TEST_DBS.with(|t| t.borrow_mut().push((EntryId::new("app", "db"), db.clone())));
        let lua = Lua::new();
        crate::lua::errors::register(&lua, &lua.globals()).unwrap();
        let module = read_only(&lua, loader(&lua).unwrap()).unwrap();
        lua.register_module("sql", module).unwrap();
        Harness { lua, db, _dir: dir }
    }

    fn run(lua: &Lua, code: &str) -> mlua::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let f = lua.load(code).into_function().unwrap();
            f.call_async::<mlua::Value>(()).await
        })
        .unwrap_or_else(|e| panic!("lua failed: {e}"))
    }

    fn run_ok(lua: &Lua, code: &str) {
        let v = run(lua, code);
        let text = v
            .as_string()
            .and_then(|s| s.to_str().ok().map(|s| s.to_string()));
        assert_eq!(text.as_deref(), Some("ok"), "{v:?}");
    }

    #[test]
    fn tutorial_migrate_and_auth_flow() {
        let h = harness();
        // migrate.lua and auth_token.lua, with crypto/logger replaced by literals.
        run_ok(
            &h.lua,
            r#"
            local sql = require("sql")
            local db, err = sql.get("app:db")
            assert(db and err == nil)
            local _, exec_err = db:execute([[
                CREATE TABLE IF NOT EXISTS api_keys (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    api_key TEXT UNIQUE NOT NULL,
                    user_id TEXT NOT NULL,
                    role TEXT NOT NULL DEFAULT 'user',
                    created_at INTEGER NOT NULL
                )
            ]])
            assert(exec_err == nil, tostring(exec_err))
            local rows, _ = db:query("SELECT api_key FROM api_keys WHERE user_id = ?", {"demo"})
            assert(#rows == 0)
            db:execute(
                "INSERT INTO api_keys (api_key, user_id, role, created_at) VALUES (?, ?, ?, ?)",
                {"k123", "demo", "user", os.time()}
            )
            rows = db:query("SELECT api_key FROM api_keys WHERE user_id = ?", {"demo"})
            assert(#rows == 1 and rows[1].api_key == "k123")
            assert(db:release() == true)

            local db2, db_err = sql.get("app:db")
            assert(not db_err)
            local rows2, query_err = db2:query(
                "SELECT user_id, role FROM api_keys WHERE api_key = ?",
                {"k123"}
            )
            db2:release()
            assert(not query_err and #rows2 == 1)
            assert(rows2[1].user_id == "demo" and rows2[1].role == "user")
            return "ok"
            "#,
        );
    }

    #[test]
    fn sql_test_script_passes() {
        let h = harness();
        run_ok(
            &h.lua,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/lua/sql_test.lua"
            )),
        );
        // It leaves no transaction behind.
        assert_eq!(h.db.stats().in_use, 0);
    }

    #[test]
    fn get_errors() {
        let h = harness();
        TEST_DENY.with(|d| d.borrow_mut().push("app:secret".into()));
        TEST_KINDS.with(|k| {
            let mut k = k.borrow_mut();
            k.push((EntryId::new("app", "policy"), "security.policy"));
            k.push((EntryId::new("app", "stopped"), "db.sql.sqlite"));
        });
        TEST_DBS.with(|t| {
            t.borrow_mut()
                .push((EntryId::new("app", "secret"), h.db.clone()))
        });
        run_ok(
            &h.lua,
            r#"
            local sql = require("sql")
            local db, err = sql.get("")
            assert(db == nil and errors.is(err, errors.INVALID))
            db, err = sql.get("app:")
            assert(db == nil and errors.is(err, errors.INVALID))
            db, err = sql.get("app:nope")
            assert(db == nil and errors.is(err, errors.NOT_FOUND), tostring(err))
            db, err = sql.get("app:policy")
            assert(db == nil and errors.is(err, errors.INVALID), tostring(err))
            db, err = sql.get("app:stopped")
            assert(db == nil and errors.is(err, errors.UNAVAILABLE), tostring(err))
            db, err = sql.get("app:secret")
            assert(db == nil and errors.is(err, errors.PERMISSION_DENIED))
            assert(not pcall(sql.get, nil))
            assert(not pcall(sql.get, {}))
            return "ok"
            "#,
        );
    }

    #[test]
    fn bare_name_resolves_in_current_namespace() {
        // Outside a process the current namespace is empty.
        let h = harness();
        TEST_DBS.with(|t| {
            t.borrow_mut()
                .push((EntryId::new("", "local"), h.db.clone()))
        });
        run_ok(
            &h.lua,
            r#"
            local db, err = require("sql").get("local")
            assert(db and not err, tostring(err))
            return "ok"
            "#,
        );
    }

    #[test]
    fn params_types_and_errors() {
        let h = harness();
        run_ok(
            &h.lua,
            r#"
            local sql = require("sql")
            local db = sql.get("app:db")
            db:execute("CREATE TABLE v (a, b, c, d)")
            -- Table form with a hole and sql.NULL; scalar varargs form.
            local r = db:execute("INSERT INTO v VALUES (?, ?, ?, ?)", {1, nil, sql.NULL, "x"})
            assert(r.rows_affected == 1 and r.last_insert_id == 1)
            r = db:execute("INSERT INTO v VALUES (?, ?, ?, ?)", 2, 2.5, true, "\0\255")
            assert(r.last_insert_id == 2)
            r = db:execute("INSERT INTO v VALUES (?, ?, ?, ?)",
                sql.as.int("42"), sql.as.float(3), sql.as.text(7), sql.as.binary("bin"))
            local rows = db:query("SELECT a, b, c, d, typeof(d) AS td FROM v ORDER BY rowid")
            assert(#rows == 3)
            assert(math.type(rows[1].a) == "integer" and rows[1].b == nil and rows[1].c == nil)
            assert(rows[1].d == "x" and rows[1].td == "text")
            assert(math.type(rows[2].b) == "float" and rows[2].b == 2.5 and rows[2].c == 1)
            assert(rows[2].d == "\0\255" and rows[2].td == "blob")
            assert(rows[3].a == 42 and math.type(rows[3].a) == "integer")
            assert(rows[3].b == 3.0 and math.type(rows[3].b) == "float")
            assert(rows[3].c == "7" and rows[3].d == "bin" and rows[3].td == "blob")
            assert(tostring(sql.NULL) == "sql.NULL" and sql.as.null() == sql.NULL)
            assert(sql.as.int(3.9) == sql.as.int(3))

            -- No params at all, and an explicit nil.
            assert(#db:query("SELECT 1 AS one") == 1)
            assert(db:query("SELECT 1 AS one", nil)[1].one == 1)

            local rows2, err = db:query("SELECT * FROM v WHERE a = ?", {a = 1})
            assert(rows2 == nil and errors.is(err, errors.INVALID))
            rows2, err = db:query("SELECT ?, ?", 1, {2})
            assert(rows2 == nil and errors.is(err, errors.INVALID))
            rows2, err = db:query("SELECT ?", function() end)
            assert(rows2 == nil and errors.is(err, errors.INVALID))
            rows2, err = db:query("SELECT ?, ?", {1})
            assert(rows2 == nil and errors.is(err, errors.INVALID))
            rows2, err = db:query("SELEC 1")
            assert(rows2 == nil and errors.is(err, errors.INVALID))
            rows2, err = db:query("SELECT * FROM nowhere")
            assert(rows2 == nil and errors.is(err, errors.INTERNAL))
            assert(not pcall(sql.as.int, {}))
            assert(not pcall(sql.as.int, "abc"))
            assert(not pcall(db.query, db))
            return "ok"
            "#,
        );
    }

    #[test]
    fn constants_and_module_are_read_only() {
        let h = harness();
        run_ok(
            &h.lua,
            r#"
            local sql = require("sql")
            assert(sql.type.SQLITE == "sqlite" and sql.type.POSTGRES == "postgres")
            assert(sql.type.MSSQL == "mssql" and sql.type.UNKNOWN == "unknown")
            assert(sql.isolation.DEFAULT == "default")
            assert(sql.isolation.SERIALIZABLE == "serializable")
            assert(sql.isolation.WRITE_COMMITTED == "write_committed")
            assert(not pcall(function() sql.type.SQLITE = "x" end))
            assert(not pcall(function() sql.as.int = nil end))
            local db = sql.get("app:db")
            assert(db:type() == sql.type.SQLITE)
            local s = db:stats()
            assert(s.max_open_connections == 1 and s.open_connections == 1 and s.in_use == 0)
            assert(s.idle == 1 and s.wait_count == 0 and s.wait_duration == 0)
            return "ok"
            "#,
        );
    }

    #[test]
    fn release_is_idempotent_and_blocks_later_use() {
        let h = harness();
        run_ok(
            &h.lua,
            r#"
            local sql = require("sql")
            local db = sql.get("app:db")
            local stmt = db:prepare("SELECT 1 AS x")
            assert(db:release() == true and db:release() == true)
            local rows, err = db:query("SELECT 1")
            assert(rows == nil and errors.is(err, errors.INVALID))
            local r, err2 = db:execute("SELECT 1")
            assert(r == nil and err2)
            local tx, err3 = db:begin()
            assert(tx == nil and err3)
            local s, err4 = db:stats()
            assert(s == nil and err4)
            local rows2, err5 = stmt:query()
            assert(rows2 == nil and err5)
            assert(db:type() == "sqlite")
            -- A fresh handle works.
            assert(sql.get("app:db"):query("SELECT 1 AS x")[1].x == 1)
            return "ok"
            "#,
        );
    }

    #[test]
    fn statements() {
        let h = harness();
        run_ok(
            &h.lua,
            r#"
            local sql = require("sql")
            local db = sql.get("app:db")
            db:execute("CREATE TABLE s (id INTEGER PRIMARY KEY, name TEXT)")
            local ins, err = db:prepare("INSERT INTO s (name) VALUES (?)")
            assert(ins and not err)
            assert(ins:execute({"a"}).last_insert_id == 1)
            assert(ins:execute("b").last_insert_id == 2)
            local sel = db:prepare("SELECT name FROM s WHERE id = ?")
            assert(sel:query({2})[1].name == "b")
            assert(sel:close() == true)
            local rows, err2 = sel:query({1})
            assert(rows == nil and errors.is(err2, errors.INVALID))
            local bad, err3 = db:prepare("SELEC oops")
            assert(bad == nil and errors.is(err3, errors.INVALID))
            return "ok"
            "#,
        );
    }

    #[test]
    fn transactions() {
        let h = harness();
        run_ok(
            &h.lua,
            r#"
            local sql = require("sql")
            local db = sql.get("app:db")
            db:execute("CREATE TABLE t (n INTEGER)")
            local function count() return db:query("SELECT count(*) AS c FROM t")[1].c end

            local tx, err = db:begin({isolation = sql.isolation.SERIALIZABLE, read_only = false})
            assert(tx and not err, tostring(err))
            assert(tx:db_type() == "sqlite")
            tx:execute("INSERT INTO t VALUES (?)", {1})
            assert(tx:savepoint("sp1") == true)
            tx:execute("INSERT INTO t VALUES (?)", 2)
            assert(tx:rollback_to("sp1") == true)
            assert(tx:savepoint("sp2") == true)
            tx:execute("INSERT INTO t VALUES (3)")
            assert(tx:release("sp2") == true)
            local ok_, e = tx:savepoint("bad name")
            assert(ok_ == nil and errors.is(e, errors.INVALID))
            local st = tx:prepare("SELECT count(*) AS c FROM t")
            assert(st:query()[1].c == 2)
            assert(tx:query("SELECT count(*) AS c FROM t")[1].c == 2)
            assert(tx:commit() == true)
            local again, e2 = tx:commit()
            assert(again == nil and errors.is(e2, errors.INVALID))
            local rows, e3 = st:query()
            assert(rows == nil and e3)
            assert(count() == 2)

            tx = db:begin()
            tx:execute("INSERT INTO t VALUES (9)")
            assert(tx:rollback() == true)
            assert(count() == 2)

            -- Dropped without commit: rolled back when collected.
            tx = db:begin()
            tx:execute("INSERT INTO t VALUES (10)")
            tx = nil
            collectgarbage()
            collectgarbage()
            assert(count() == 2)

            local ro = db:begin({read_only = true})
            assert(ro:query("SELECT 1 AS x")[1].x == 1)
            local r, e4 = ro:execute("INSERT INTO t VALUES (11)")
            assert(r == nil and e4)
            ro:rollback()

            local bad, e5 = db:begin({isolation = "chaotic"})
            assert(bad == nil and errors.is(e5, errors.INVALID))
            assert(not pcall(db.begin, db, "not a table"))
            assert(count() == 2)
            return "ok"
            "#,
        );
    }

    #[test]
    fn coroutine_suspends_while_waiting_for_the_connection() {
        // B holds a transaction and sleeps; A's query must wait for B's commit. Were the DB call
        // blocking the worker thread, B could never resume to commit: deadlock (caught by the
        // timeout).
        let h = harness();
        let lua = &h.lua;
        let sleep = lua
            .create_async_function(|_, ms: u64| async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                Ok(())
            })
            .unwrap();
        lua.globals().set("sleep", sleep).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let setup = r#"trace = {}
                require("sql").get("app:db"):execute("CREATE TABLE c (n)")"#;
            lua.load(setup).exec_async().await.unwrap();
            let b = lua.load(
                r#"local db = require("sql").get("app:db")
                local tx = db:begin()
                tx:execute("INSERT INTO c VALUES (1)")
                trace[#trace + 1] = "b-began"
                sleep(50)
                trace[#trace + 1] = "b-commit"
                assert(tx:commit())"#,
            );
            let a = lua.load(
                r#"local db = require("sql").get("app:db")
                while trace[1] == nil do sleep(1) end
                trace[#trace + 1] = "a-start"
                local rows = db:query("SELECT count(*) AS c FROM c")
                trace[#trace + 1] = "a-done" .. rows[1].c"#,
            );
            let both = async { tokio::join!(b.exec_async(), a.exec_async()) };
            let (rb, ra) = tokio::time::timeout(std::time::Duration::from_secs(5), both)
                .await
                .expect("deadlock: a DB call blocked the worker");
            rb.unwrap();
            ra.unwrap();
        });
        let trace: Vec<String> = lua.load("return trace").eval().unwrap();
        assert_eq!(trace, ["b-began", "a-start", "b-commit", "a-done1"]);
    }
}
