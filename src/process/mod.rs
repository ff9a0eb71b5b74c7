//! The actor kernel: pids, mailboxes, the process table with names, links and monitors, the
//! worker threads, and service supervision. It knows nothing of Lua: a WebSocket connection is a
//! process too.

pub mod mailbox;
pub mod pid;
pub mod scheduler;
pub mod supervisor;
pub mod table;
pub mod value;
