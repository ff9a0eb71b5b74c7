-- sql module acceptance script (§6.6): run inside the runtime with an `app:db` entry
-- (db.sql.sqlite) and `modules: [sql]`. Uses its own table, dropped at the end, so it can run
-- against the tutorial database. Returns "ok" or raises.

local sql = require("sql")

local db, err = sql.get("app:db")
assert(db and err == nil, "sql.get: " .. tostring(err))
assert(db:type() == sql.type.SQLITE and db:type() == "sqlite")

local T = "moonwire_sql_test"
local function count()
    local rows, e = db:query("SELECT count(*) AS c FROM " .. T)
    assert(rows, tostring(e))
    return rows[1].c
end

assert(db:execute("DROP TABLE IF EXISTS " .. T))
local res, e = db:execute("CREATE TABLE " .. T .. [[ (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL,
    score REAL,
    n INTEGER,
    data BLOB
)]])
assert(res and e == nil, tostring(e))

-- execute: {last_insert_id, rows_affected}; params as a table and as scalar varargs.
res, e = db:execute("INSERT INTO " .. T .. " (name, score, n) VALUES (?, ?, ?)", {"alice", 1.5, 10})
assert(res and not e, tostring(e))
assert(res.rows_affected == 1 and math.type(res.last_insert_id) == "integer")
local alice_id = res.last_insert_id
res = db:execute("INSERT INTO " .. T .. " (name, score, n) VALUES (?, ?, ?)", "bob", sql.NULL, 20)
assert(res.rows_affected == 1 and res.last_insert_id == alice_id + 1)
res = db:execute("INSERT INTO " .. T .. " (name, n, data) VALUES (?, ?, ?)",
    {sql.as.text("carol"), sql.as.int("30"), sql.as.binary("\0\1\255")})
assert(res.rows_affected == 1)

-- query: array of rows; NULL columns absent; INTEGER → integer, REAL → float, TEXT/BLOB → string.
local rows = db:query("SELECT id, name, score, n, data FROM " .. T .. " ORDER BY id")
assert(#rows == 3)
assert(rows[1].name == "alice" and rows[1].score == 1.5 and math.type(rows[1].score) == "float")
assert(rows[1].n == 10 and math.type(rows[1].n) == "integer" and rows[1].data == nil)
assert(rows[2].name == "bob" and rows[2].score == nil)
assert(rows[3].n == 30 and rows[3].data == "\0\1\255")

rows = db:query("SELECT name FROM " .. T .. " WHERE n > ? AND n < ?", {15, 35})
assert(#rows == 2 and rows[1].name == "bob")
rows = db:query("SELECT name FROM " .. T .. " WHERE name = ?", {"nobody"})
assert(type(rows) == "table" and #rows == 0)

res = db:execute("UPDATE " .. T .. " SET n = n + 1 WHERE n >= ?", {20})
assert(res.rows_affected == 2)

-- Errors: syntax ⇒ INVALID, others (constraint, missing table) ⇒ INTERNAL.
local r, qerr = db:query("SELEC name FROM " .. T)
assert(r == nil and errors.is(qerr, errors.INVALID), tostring(qerr))
r, qerr = db:execute("INSERT INTO " .. T .. " (name) VALUES (?)", {"alice"})
assert(r == nil and errors.is(qerr, errors.INTERNAL), tostring(qerr))
r, qerr = db:query("SELECT * FROM moonwire_sql_test_missing")
assert(r == nil and errors.is(qerr, errors.INTERNAL))
r, qerr = db:query("SELECT * FROM " .. T .. " WHERE id = ?", {id = 1})
assert(r == nil and errors.is(qerr, errors.INVALID))

-- Prepared statements.
local stmt, serr = db:prepare("SELECT name FROM " .. T .. " WHERE id = ?")
assert(stmt and not serr, tostring(serr))
assert(stmt:query({alice_id})[1].name == "alice")
assert(stmt:query(alice_id + 1)[1].name == "bob")
assert(stmt:close() == true)
r, qerr = stmt:query({alice_id})
assert(r == nil and qerr)
local bad
bad, serr = db:prepare("SELEC")
assert(bad == nil and errors.is(serr, errors.INVALID))

-- Transactions: commit, rollback, savepoints.
local tx, terr = db:begin({isolation = sql.isolation.DEFAULT, read_only = false})
assert(tx and not terr, tostring(terr))
assert(tx:db_type() == "sqlite")
assert(tx:execute("INSERT INTO " .. T .. " (name) VALUES (?)", {"dave"}).rows_affected == 1)
assert(tx:savepoint("sp1") == true)
tx:execute("INSERT INTO " .. T .. " (name) VALUES (?)", {"erin"})
assert(#tx:query("SELECT id FROM " .. T) == 5)
assert(tx:rollback_to("sp1") == true)
assert(tx:release("sp1") == true)
local tstmt = tx:prepare("SELECT count(*) AS c FROM " .. T)
assert(tstmt:query()[1].c == 4)
assert(tx:commit() == true)
local again, cerr = tx:commit()
assert(again == nil and errors.is(cerr, errors.INVALID))
assert(count() == 4)

tx = db:begin()
tx:execute("DELETE FROM " .. T)
assert(tx:query("SELECT count(*) AS c FROM " .. T)[1].c == 0)
assert(tx:rollback() == true)
assert(count() == 4)

local ro = db:begin({read_only = true})
assert(ro:query("SELECT count(*) AS c FROM " .. T)[1].c == 4)
r, qerr = ro:execute("DELETE FROM " .. T)
assert(r == nil and qerr)
assert(ro:rollback() == true)
assert(count() == 4)

-- Pool statistics.
local stats = db:stats()
assert(stats.max_open_connections == 1 and stats.open_connections == 1)
assert(type(stats.wait_count) == "number" and type(stats.in_use) == "number")

assert(db:execute("DROP TABLE " .. T))

-- release: idempotent; later use is an error return.
assert(db:release() == true)
assert(db:release() == true)
r, qerr = db:query("SELECT 1")
assert(r == nil and qerr ~= nil)

-- sql.get failures.
local none, gerr = sql.get("")
assert(none == nil and errors.is(gerr, errors.INVALID))
none, gerr = sql.get("app:moonwire_no_such_db")
assert(none == nil and errors.is(gerr, errors.NOT_FOUND))

return "ok"
