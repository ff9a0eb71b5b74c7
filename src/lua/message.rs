//! Received messages as Lua objects: `msg:topic()`, `msg:from()`, `msg:payload()`, and, since a
//! message with one payload is its own payload view, `msg:data()` and `msg:get_format()`.
//!
//! Why raw: these are the hottest calls a process makes (a ping-pong round trip creates two
//! messages and calls five of their methods). As mlua userdata each method went through mlua's
//! callback machinery and a typed borrow, about 1,300 instructions; here a method is a C closure
//! that checks its `self` against the metatable it holds as an upvalue and reads the message in
//! place.
//!
//! Two kinds of object, each with its own metatable (the methods accept both):
//! - plain: a message with at most one payload that is nil, a boolean, a number or a string,
//!   from a runtime pid (nearly every message). Its block holds only plain data (`Plain`); the
//!   topic and a string payload are Lua strings in its user values, so it needs no finalizer.
//!   Lua runs finalizers one by one in protected calls: a `__gc` per message was a tenth of
//!   the instructions of a delivery.
//! - owned: any other message, kept whole in the block and dropped by `__gc`.
//!
//! Audit:
//! - An owned block holds a `Block`: a `live` flag and the `Message`, written once when the
//!   object is made and dropped once by `__gc`, which clears `live`. Every method refuses a block
//!   that is not live (a script's own finalizer may still reach a collected message). A plain
//!   block holds a `Plain` (`Copy`, nothing to drop), written once; with no `__gc` it is never
//!   freed while anything can reach it.
//! - The metatables are hidden (`__metatable`), so no script can call `__gc` itself or swap them.
//! - Lua may raise (a `longjmp`) only where the frames it skips hold no value with a destructor:
//!   allocations done while a Rust value is owned go through mlua (protected when mlua thinks a
//!   memory error possible) or through `lua.exec_raw`, which is a protected call; raw calls that
//!   allocate (`lua_pushlstring`, and `lua_rawsetp` for the registry's last-string slot) happen
//!   only in frames that hold plain borrows.
//! - Errors are raised at the outermost frame, after every Rust value is dropped.
#![allow(unsafe_code)]

use crate::lua::c_function::push_made;
use crate::lua::convert;
use crate::process::pid::{Message, Pid};
use crate::process::value::Value;
use mlua::{ffi, Lua};
use std::ffi::{c_int, c_void};
use std::mem::ManuallyDrop;

struct Block {
    live: bool,
    message: ManuallyDrop<Message>,
}

/// A plain message: everything but its topic (user value 1) and a string payload (user value 2).
#[derive(Clone, Copy)]
struct Plain {
    /// The sender's id and interned host label.
    from: Option<(u64, &'static str)>,
    data: Scalar,
}

#[derive(Clone, Copy)]
enum Scalar {
    /// No payload at all.
    Absent,
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string payload, in user value 2.
    Str,
}

/// The user value slots of a plain block.
const TOPIC_SLOT: c_int = 1;
const STRING_SLOT: c_int = 2;

impl Plain {
    /// `m` as a plain message, if it is one.
    fn of(m: &Message) -> Option<Plain> {
        let from = match &m.from {
            None => None,
            Some(pid) => Some((pid.id(), pid.interned_host()?)),
        };
        let data = match m.payloads.as_slice() {
            [] => Scalar::Absent,
            [Value::Nil] => Scalar::Nil,
            [Value::Bool(b)] => Scalar::Bool(*b),
            [Value::Int(i)] => Scalar::Int(*i),
            [Value::Float(f)] => Scalar::Float(*f),
            [Value::Str(_)] => Scalar::Str,
            _ => return None,
        };
        Some(Plain { from, data })
    }
}

// Lua aligns userdata blocks to 8 bytes (`LUAI_MAXALIGN` on this platform).
const _: () = assert!(std::mem::align_of::<Block>() <= 8);
const _: () = assert!(std::mem::align_of::<Plain>() <= 8);

/// Their addresses key the two metatables in the Lua registry.
static METATABLE_KEY: u8 = 0;
static PLAIN_METATABLE_KEY: u8 = 0;

/// Its address keys, in the Lua registry, the long string `data` pushed last: the same bytes
/// delivered to many processes of a worker become one Lua string (the raw counterpart of
/// `convert::lua_string`'s cache).
static LAST_STRING_KEY: u8 = 0;

fn metatable_key() -> *const c_void {
    std::ptr::addr_of!(METATABLE_KEY).cast()
}

fn plain_metatable_key() -> *const c_void {
    std::ptr::addr_of!(PLAIN_METATABLE_KEY).cast()
}

type Method = unsafe extern "C-unwind" fn(*mut ffi::lua_State) -> c_int;

const METHODS: [(&std::ffi::CStr, Method); 5] = [
    (c"topic", topic),
    (c"from", from),
    (c"payload", payload),
    (c"data", data),
    (c"get_format", get_format),
];

/// Pushes the metatable of owned (`plain` false) or plain messages, building both on first use
/// in this state. Protected context.
unsafe fn push_metatable(state: *mut ffi::lua_State, plain: bool) {
    ffi::luaL_checkstack(state, 8, std::ptr::null());
    let key = if plain {
        plain_metatable_key()
    } else {
        metatable_key()
    };
    if ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, key) == ffi::LUA_TTABLE {
        return;
    }
    ffi::lua_pop(state, 1);
    // [owned, plain, methods]; every method holds both metatables (upvalues 1 and 2).
    ffi::lua_createtable(state, 0, 4);
    ffi::lua_createtable(state, 0, 3);
    ffi::lua_createtable(state, 0, METHODS.len() as c_int);
    for (name, method) in METHODS {
        ffi::lua_pushvalue(state, -3);
        ffi::lua_pushvalue(state, -3);
        ffi::lua_pushcclosure(state, method, 2);
        ffi::lua_setfield(state, -2, name.as_ptr());
    }
    for mt in [-3, -2] {
        ffi::lua_pushvalue(state, -1);
        ffi::lua_setfield(state, mt - 1, c"__index".as_ptr());
        ffi::lua_pushboolean(state, 0);
        ffi::lua_setfield(state, mt - 1, c"__metatable".as_ptr());
        ffi::lua_pushstring(state, c"Message".as_ptr());
        ffi::lua_setfield(state, mt - 1, c"__name".as_ptr());
    }
    ffi::lua_pop(state, 1);
    ffi::lua_pushcfunction(state, collect);
    ffi::lua_setfield(state, -3, c"__gc".as_ptr());
    ffi::lua_pushvalue(state, -1);
    ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, plain_metatable_key());
    ffi::lua_pushvalue(state, -2);
    ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, metatable_key());
    // Leave the one asked for.
    if plain {
        ffi::lua_remove(state, -2);
    } else {
        ffi::lua_pop(state, 1);
    }
}

/// Pushes a new message object onto `state`. A plain message is read in place and dropped once
/// its object is complete; any other is moved out of `slot` once its block exists. The caller
/// holds nothing with a destructor but `slot`'s target, which stays where it is if Lua raises
/// before then (out of memory), so that it drops normally.
unsafe fn make(state: *mut ffi::lua_State, slot: *mut Option<Message>) {
    let Some(message) = (*slot).as_ref() else {
        return ffi::lua_pushnil(state);
    };
    if let Some(plain) = Plain::of(message) {
        let slots = if matches!(plain.data, Scalar::Str) {
            2
        } else {
            1
        };
        let block = ffi::lua_newuserdatauv(state, std::mem::size_of::<Plain>(), slots);
        block.cast::<Plain>().write(plain);
        let topic: &str = &message.topic;
        ffi::lua_pushlstring(state, topic.as_ptr().cast(), topic.len());
        ffi::lua_setiuservalue(state, -2, TOPIC_SLOT);
        if let [Value::Str(b)] = message.payloads.as_slice() {
            push_string(state, b);
            ffi::lua_setiuservalue(state, -2, STRING_SLOT);
        }
        push_metatable(state, true);
        ffi::lua_setmetatable(state, -2);
        drop((*slot).take());
        return;
    }
    let block = ffi::lua_newuserdatauv(state, std::mem::size_of::<Block>(), 0);
    if let Some(message) = (*slot).take() {
        block.cast::<Block>().write(Block {
            live: true,
            message: ManuallyDrop::new(message),
        });
    }
    push_metatable(state, false);
    ffi::lua_setmetatable(state, -2);
}

/// `m` as a Lua message object.
pub fn to_lua(lua: &Lua, m: Message) -> mlua::Result<mlua::Value> {
    let mut slot = Some(m);
    let slot_ptr: *mut Option<Message> = &mut slot;
    if crate::lua::memory::installed() {
        // Allocations can fail on this worker: a protected call (mlua's `exec_raw`) catches
        // the memory error.
        // SAFETY: `make`'s contract; the closure holds only the raw pointer.
        unsafe { lua.exec_raw::<mlua::Value>((), |state| make(state, slot_ptr)) }
    } else {
        // Otherwise a failure would be the process running out of memory, which mlua's own
        // userdata treat the same way: unprotected, as mlua does when it sees no memory limit.
        lua.exec_raw_lua(|raw| unsafe {
            let state = raw.state();
            if ffi::lua_checkstack(state, 8) == 0 {
                return Err(mlua::Error::StackError);
            }
            make(state, slot_ptr);
            Ok(raw.pop_value())
        })
    }
}

/// Pushes `m` as a message object onto the stack of a running C function, without going
/// through mlua; `Err(m)` hands it back when this worker has memory caps (then only a
/// protected call may allocate it: use `to_lua`).
pub(crate) unsafe fn push(state: *mut ffi::lua_State, m: Message) -> Result<(), Message> {
    if crate::lua::memory::installed() {
        return Err(m);
    }
    let mut slot = Some(m);
    // A C function has LUA_MINSTACK (20) free slots; `make` uses at most 11 when it builds the
    // metatables, 4 after that.
    make(state, &mut slot);
    Ok(())
}

/// The message behind `v` if it is a message object: forwarding `msg:payload()` sends the
/// message's one payload.
pub fn single_payload(lua: &Lua, v: &mlua::Value) -> Option<Value> {
    let mlua::Value::UserData(_) = v else {
        return None;
    };
    // SAFETY: compares the metatable of `v` with the registry's without allocating (two more
    // slots) and reads the block only when the metatable is ours; nothing here raises.
    unsafe {
        crate::lua::c_function::read_pushed(lua, v, 3, |state| {
            let received = received_at(state, -1, |plain| {
                let key = if plain {
                    plain_metatable_key()
                } else {
                    metatable_key()
                };
                ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, key);
            })?;
            match received {
                Received::Owned(message) => match message.payloads.as_slice() {
                    [only] => Some(only.clone()),
                    _ => None,
                },
                Received::Plain(plain) => match plain.data {
                    Scalar::Absent => None,
                    Scalar::Nil => Some(Value::Nil),
                    Scalar::Bool(b) => Some(Value::Bool(b)),
                    Scalar::Int(i) => Some(Value::Int(i)),
                    Scalar::Float(f) => Some(Value::Float(f)),
                    Scalar::Str => {
                        // Copied as any string argument is (a long one equal to the last
                        // copied is shared, not copied again).
                        ffi::lua_getiuservalue(state, -1, STRING_SLOT);
                        let value = crate::lua::raw_copy::value_at(state, -1);
                        ffi::lua_pop(state, 1);
                        value
                    }
                },
            }
        })
    }
}

/// A message object's content, as its methods read it.
enum Received<'a> {
    Owned(&'a Message),
    Plain(Plain),
}

/// The message at `idx` if its metatable is one of the two `push_reference(plain)` pushes (a
/// live owned block, or a plain one). Uses two stack slots, restored. The borrow lasts while
/// the value stays on the stack.
unsafe fn received_at<'a>(
    state: *mut ffi::lua_State,
    idx: c_int,
    push_reference: impl Fn(bool),
) -> Option<Received<'a>> {
    if ffi::lua_type(state, idx) != ffi::LUA_TUSERDATA {
        return None;
    }
    let idx = ffi::lua_absindex(state, idx);
    if ffi::lua_getmetatable(state, idx) == 0 {
        return None;
    }
    let data = ffi::lua_touserdata(state, idx);
    let mut found = None;
    for plain in [true, false] {
        push_reference(plain);
        let ours = ffi::lua_rawequal(state, -1, -2) != 0;
        ffi::lua_pop(state, 1);
        if ours {
            found = Some(plain);
            break;
        }
    }
    ffi::lua_pop(state, 1);
    match found? {
        true => Some(Received::Plain(*data.cast::<Plain>())),
        false => {
            let block = data.cast::<Block>();
            (*block)
                .live
                .then(|| Received::Owned(&*std::ptr::addr_of!((*block).message).cast::<Message>()))
        }
    }
}

/// `self` of a method call, checked against the metatables in upvalues 1 (owned) and 2 (plain).
unsafe fn this<'a>(state: *mut ffi::lua_State) -> Option<Received<'a>> {
    // A C function has LUA_MINSTACK (20) free slots; this uses 2. The block outlives the call:
    // argument 1 keeps it reachable until the method returns.
    received_at(state, 1, |plain| {
        ffi::lua_pushvalue(state, ffi::lua_upvalueindex(if plain { 2 } else { 1 }));
    })
}

/// Raises "bad self" for a method called on something that is not a live message.
unsafe fn bad_self(state: *mut ffi::lua_State, method: &std::ffi::CStr) -> c_int {
    ffi::lua_pushfstring(
        state,
        c"bad argument #1 to '%s' (a received message expected; call it as msg:%s())".as_ptr(),
        method.as_ptr(),
        method.as_ptr(),
    );
    ffi::lua_error(state)
}

unsafe extern "C-unwind" fn topic(state: *mut ffi::lua_State) -> c_int {
    match this(state) {
        Some(Received::Owned(m)) => {
            let t: &str = &m.topic;
            ffi::lua_pushlstring(state, t.as_ptr().cast(), t.len());
        }
        Some(Received::Plain(_)) => {
            ffi::lua_getiuservalue(state, 1, TOPIC_SLOT);
        }
        None => return bad_self(state, c"topic"),
    }
    1
}

unsafe extern "C-unwind" fn from(state: *mut ffi::lua_State) -> c_int {
    let pid = match this(state) {
        Some(Received::Owned(m)) => m.from.clone(),
        Some(Received::Plain(p)) => p.from.map(|(id, host)| Pid::new(id, host)),
        None => return bad_self(state, c"from"),
    };
    match pid {
        None => {
            ffi::lua_pushnil(state);
            1
        }
        Some(pid) => push_made(state, move |lua| {
            Ok(vec![mlua::Value::String(
                crate::lua::modules::process::pid_string(lua, &pid)?,
            )])
        }),
    }
}

unsafe extern "C-unwind" fn payload(state: *mut ffi::lua_State) -> c_int {
    let m = match this(state) {
        Some(Received::Owned(m)) => m,
        Some(Received::Plain(p)) => {
            match p.data {
                Scalar::Absent => ffi::lua_pushnil(state),
                _ => ffi::lua_pushvalue(state, 1),
            }
            return 1;
        }
        None => return bad_self(state, c"payload"),
    };
    match m.payloads.as_slice() {
        [] => ffi::lua_pushnil(state),
        [_] => ffi::lua_pushvalue(state, 1),
        many => {
            return push_made(state, |lua| {
                let t = lua.create_table_with_capacity(many.len(), 0)?;
                for (i, p) in many.iter().enumerate() {
                    t.raw_set(i + 1, crate::lua::modules::process::Payload(p.clone()))?;
                }
                Ok(vec![mlua::Value::Table(t)])
            })
        }
    }
    1
}

/// `data, nil` as `Payload:data()` answers: a fresh copy of the first payload.
unsafe extern "C-unwind" fn data(state: *mut ffi::lua_State) -> c_int {
    let m = match this(state) {
        Some(Received::Owned(m)) => m,
        Some(Received::Plain(p)) => {
            match p.data {
                Scalar::Absent | Scalar::Nil => ffi::lua_pushnil(state),
                Scalar::Bool(b) => ffi::lua_pushboolean(state, b as c_int),
                Scalar::Int(i) => ffi::lua_pushinteger(state, i),
                Scalar::Float(f) => ffi::lua_pushnumber(state, f),
                Scalar::Str => {
                    ffi::lua_getiuservalue(state, 1, STRING_SLOT);
                }
            }
            ffi::lua_pushnil(state);
            return 2;
        }
        None => return bad_self(state, c"data"),
    };
    match m.payloads.first() {
        None | Some(Value::Nil) => ffi::lua_pushnil(state),
        Some(Value::Bool(b)) => ffi::lua_pushboolean(state, *b as c_int),
        Some(Value::Int(i)) => ffi::lua_pushinteger(state, *i),
        Some(Value::Float(f)) => ffi::lua_pushnumber(state, *f),
        // Only a borrow of the message is held here, so the allocation may raise.
        Some(Value::Str(b)) if ffi::lua_checkstack(state, 3) != 0 => push_string(state, b),
        Some(other) => {
            return push_made(state, |lua| {
                Ok(vec![convert::to_lua(lua, other)?, mlua::Value::Nil])
            })
        }
    }
    ffi::lua_pushnil(state);
    2
}

/// Pushes `b` as a Lua string. A long one equal to the string this state pushed last is that
/// string again; equal content makes sharing it invisible, whichever state made it.
///
/// # Safety
/// Three free stack slots; may raise a memory error, so the caller holds nothing with a
/// destructor.
unsafe fn push_string(state: *mut ffi::lua_State, b: &[u8]) {
    if b.len() < convert::SHARE_MIN {
        ffi::lua_pushlstring(state, b.as_ptr().cast(), b.len());
        return;
    }
    let key = std::ptr::addr_of!(LAST_STRING_KEY).cast::<c_void>();
    if ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, key) == ffi::LUA_TSTRING {
        let mut len = 0usize;
        let ptr = ffi::lua_tolstring(state, -1, &mut len);
        if std::slice::from_raw_parts(ptr.cast::<u8>(), len) == b {
            return;
        }
    }
    ffi::lua_pop(state, 1);
    ffi::lua_pushlstring(state, b.as_ptr().cast(), b.len());
    ffi::lua_pushvalue(state, -1);
    ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, key);
}

unsafe extern "C-unwind" fn get_format(state: *mut ffi::lua_State) -> c_int {
    if this(state).is_none() {
        return bad_self(state, c"get_format");
    }
    ffi::lua_pushstring(state, c"lua".as_ptr());
    1
}

/// `__gc`: drops the message once. Only Lua calls it (the metatable is hidden).
unsafe extern "C-unwind" fn collect(state: *mut ffi::lua_State) -> c_int {
    let block = ffi::lua_touserdata(state, 1).cast::<Block>();
    if !block.is_null() && (*block).live {
        (*block).live = false;
        ManuallyDrop::drop(&mut (*block).message);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::value::Table;
    use std::sync::Arc;

    fn message(payloads: Vec<Value>) -> Message {
        Message {
            from: None,
            topic: Arc::from("greet"),
            payloads,
        }
    }

    fn run(lua: &Lua, m: Message, src: &str) -> mlua::Value {
        let msg = to_lua(lua, m).unwrap();
        lua.load(src).call::<mlua::Value>(msg).unwrap()
    }

    #[test]
    fn methods_read_the_message() {
        let lua = Lua::new();
        let v = run(
            &lua,
            message(vec![Value::Int(7)]),
            "local m = ... local d, err = m:data()
             return table.concat({type(m), m:topic(), tostring(m:from()), d, tostring(err),
                 m:get_format(), tostring(rawequal(m:payload(), m))}, ' ')",
        );
        assert_eq!(v.to_string().unwrap(), "userdata greet nil 7 nil lua true");
        let t = Value::Table(Arc::new(Table {
            array: vec![Value::Str("a".into())],
            map: vec![],
        }));
        let v = run(
            &lua,
            message(vec![t, Value::Int(2)]),
            "local m = ... local p = m:payload()
             local first = p[1]:data()
             first[1] = 'changed'
             return #p .. ' ' .. p[1]:data()[1] .. ' ' .. p[2]:data() .. ' ' .. m:data()[1]",
        );
        assert_eq!(v.to_string().unwrap(), "2 a 2 a");
        let v = run(&lua, message(vec![]), "return tostring((...):payload())");
        assert_eq!(v.to_string().unwrap(), "nil");
    }

    #[test]
    fn string_payloads_arrive_whole_short_long_repeated_and_in_another_state() {
        let long_a = bytes::Bytes::from(vec![b'a'; 300]);
        let mut b = vec![b'a'; 300];
        b[299] = b'b';
        let long_b = bytes::Bytes::from(b);
        let check = |lua: &Lua, v: &bytes::Bytes| {
            let got = run(
                lua,
                message(vec![Value::Str(v.clone())]),
                "return (...):data()",
            );
            assert_eq!(got.as_string().unwrap().as_bytes()[..], v[..]);
        };
        let lua = Lua::new();
        for v in [&long_a, &long_a, &long_b, &long_a] {
            check(&lua, v);
        }
        check(&lua, &bytes::Bytes::from_static(b"short \0 string"));
        check(&lua, &bytes::Bytes::new());
        // A second state on the same thread keeps its own last string.
        let other = Lua::new();
        check(&other, &long_b);
        check(&lua, &long_a);
        check(&other, &long_b);
    }

    #[test]
    fn a_method_on_anything_else_is_a_clear_error_and_the_metatable_is_hidden() {
        let lua = Lua::new();
        let v = run(
            &lua,
            message(vec![Value::Int(1)]),
            "local m = ... local ok, err = pcall(m.topic, {})
             local ok2, err2 = pcall(m.data)
             return tostring(ok) .. tostring(ok2) .. ' ' .. err .. ' ' .. tostring(getmetatable(m))",
        );
        let s = v.to_string().unwrap();
        assert!(
            s.starts_with("falsefalse bad argument #1 to 'topic'"),
            "{s}"
        );
        assert!(s.ends_with(" false"), "{s}");
    }

    #[test]
    fn plain_messages_answer_like_owned_ones() {
        let lua = Lua::new();
        let host = crate::process::pid::intern_label("test:plain");
        let from = |payloads| Message {
            from: Some(Pid::new(9, host)),
            ..message(payloads)
        };
        let script = "local m = ... local d, err = m:data()
             return table.concat({m:topic(), m:from(), type(d), tostring(d), tostring(err),
                 tostring(rawequal(m:payload(), m)), m:get_format()}, ' ')";
        let cases = [
            (vec![], "greet {test:plain|9} nil nil nil false lua"),
            (
                vec![Value::Nil],
                "greet {test:plain|9} nil nil nil true lua",
            ),
            (
                vec![Value::Bool(true)],
                "greet {test:plain|9} boolean true nil true lua",
            ),
            (
                vec![Value::Int(-3)],
                "greet {test:plain|9} number -3 nil true lua",
            ),
            (
                vec![Value::Float(0.5)],
                "greet {test:plain|9} number 0.5 nil true lua",
            ),
            (
                vec![Value::Str("hi".into())],
                "greet {test:plain|9} string hi nil true lua",
            ),
        ];
        for (payloads, want) in cases {
            let v = run(&lua, from(payloads), script);
            assert_eq!(v.to_string().unwrap(), want);
        }
        // A sender whose pid is not interned (not one the runtime made) takes the owned form,
        // with the same answers.
        let owned = Message {
            from: Some(Pid::parsed(4, "gone")),
            ..message(vec![Value::Int(1)])
        };
        let v = run(
            &lua,
            owned,
            "local m = ... return m:from() .. ' ' .. m:data()",
        );
        assert_eq!(v.to_string().unwrap(), "{gone|4} 1");
    }

    #[test]
    fn forwarding_finds_the_single_payload_and_collection_drops_the_message() {
        let lua = Lua::new();
        let text = bytes::Bytes::from(vec![b'x'; 100]);
        let plain = to_lua(&lua, message(vec![Value::Str(text.clone())])).unwrap();
        assert_eq!(single_payload(&lua, &plain), Some(Value::Str(text.clone())));
        let int = to_lua(&lua, message(vec![Value::Int(5)])).unwrap();
        assert_eq!(single_payload(&lua, &int), Some(Value::Int(5)));
        let none = to_lua(&lua, message(vec![])).unwrap();
        assert_eq!(single_payload(&lua, &none), None);
        let t = mlua::Value::Table(lua.create_table().unwrap());
        assert_eq!(single_payload(&lua, &t), None);
        let two = to_lua(&lua, message(vec![Value::Int(1), Value::Int(2)])).unwrap();
        assert_eq!(single_payload(&lua, &two), None);
        // An owned message keeps its payload until `__gc` drops it.
        let shared = bytes::Bytes::from(vec![b'y'; 100]);
        let list = Value::Table(Arc::new(Table {
            array: vec![Value::Str(shared.clone())],
            map: vec![],
        }));
        let owned = to_lua(&lua, message(vec![list.clone()])).unwrap();
        assert_eq!(single_payload(&lua, &owned), Some(list.clone()));
        drop(list);
        assert!(!shared.is_unique());
        drop((plain, int, none, two, owned));
        lua.gc_collect().unwrap();
        lua.gc_collect().unwrap();
        // Only the test's handle is left: the message's copy was dropped by `__gc`.
        assert!(shared.is_unique());
    }

    #[test]
    fn a_finalizer_that_outlives_its_message_gets_an_error_not_freed_memory() {
        let lua = Lua::new();
        // Lua runs finalizers in the reverse order of their objects' creation: a holder made
        // before the message is finalized after it, and finds it collected.
        lua.load(
            "HOLDER = setmetatable({}, {__gc = function(h) RESULT = {pcall(h.m.topic, h.m)} end})",
        )
        .exec()
        .unwrap();
        // Two payloads: an owned message (a plain one has no finalizer and stays whole).
        let msg = to_lua(&lua, message(vec![Value::Int(1), Value::Int(2)])).unwrap();
        lua.load("HOLDER.m = ... HOLDER = nil")
            .call::<()>(msg)
            .unwrap();
        lua.gc_collect().unwrap();
        lua.gc_collect().unwrap();
        let result: mlua::Table = lua.globals().get("RESULT").unwrap();
        let ok: bool = result.get(1).unwrap();
        let err: String = result.get(2).unwrap();
        assert!(
            !ok && err.contains("bad argument #1 to 'topic'"),
            "{ok} {err}"
        );
    }

    #[test]
    fn a_finalizer_that_outlives_a_plain_message_still_reads_it() {
        let lua = Lua::new();
        lua.load(
            "HOLDER = setmetatable({}, {__gc = function(h) RESULT = h.m:topic() .. h.m:data() end})",
        )
        .exec()
        .unwrap();
        let msg = to_lua(&lua, message(vec![Value::Str("!".into())])).unwrap();
        lua.load("HOLDER.m = ... HOLDER = nil")
            .call::<()>(msg)
            .unwrap();
        lua.gc_collect().unwrap();
        lua.gc_collect().unwrap();
        assert_eq!(lua.globals().get::<String>("RESULT").unwrap(), "greet!");
    }
}
