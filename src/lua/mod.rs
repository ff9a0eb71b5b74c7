//! The only user of mlua: sandboxed per-worker Lua states, compiled-code cache, value copy,
//! the process runner and the function (HTTP handler) runner, and the require-able modules.

pub mod c_function;
pub mod channel;
pub mod compile;
pub mod context;
pub mod convert;
pub mod coroutine;
pub mod errors;
pub mod fast_receive;
pub mod fast_send;
pub mod fast_spawn;
pub mod function;
pub mod memory;
pub mod message;
pub mod modules;
pub mod preempt;
pub mod raw_copy;
pub mod raw_push;
pub mod resume;
pub mod runner;
pub mod sandbox;
pub mod wait;
pub mod worker;
