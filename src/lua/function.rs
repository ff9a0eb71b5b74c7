//! Runs `function.lua` entries for the HTTP server: a clean `_ENV` per call, on the worker that
//! owns the connection, with an ephemeral pid so `process.*` works inside handlers.

use crate::lua::compile::CompiledCode;
use crate::lua::context::ProcCtx;
use crate::lua::modules::http::HttpFrame;
use crate::process::pid::ExitResult;
use crate::runtime::Node;
use crate::security::SecurityContext;
use std::rc::Rc;
use std::sync::Arc;

/// Calls the entry's method with no arguments; returns how it ended. Must run on a worker.
pub async fn call_handler(
    node: &Arc<Node>,
    code: Arc<CompiledCode>,
    frame: Rc<HttpFrame>,
    security: Arc<SecurityContext>,
) -> ExitResult {
    let proc = node
        .procs
        .register("http", Arc::from(code.entry.to_string()));
    let pid = proc.pid.clone();
    let ctx = ProcCtx::new(node.clone(), proc, code, security, Some(frame));
    struct Release<'a>(&'a Node, crate::process::pid::Pid);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.procs.exit(
                &self.1,
                ExitResult::Value(crate::process::value::Value::Nil),
            );
        }
    }
    let _release = Release(node, pid);
    let result = crate::lua::runner::run_code(&ctx, Vec::new()).await;
    ctx.abort_tasks();
    result
}
