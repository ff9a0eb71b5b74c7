//! `moonwire`: argv → command; logging set-up; errors → exit codes.

use clap::{Parser, Subcommand};

// Messages, Lua values and HTTP buffers are many small short-lived allocations; mimalloc
// handles them markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "moonwire",
    version,
    about = "Runs Wippy-style Lua apps declared in a YAML registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the registry, start every entry, and serve until SIGINT/SIGTERM.
    Run {
        #[arg(long, default_value = "registry")]
        registry: PathBuf,
        /// Do not watch the registry and scripts for changes.
        #[arg(long)]
        no_watch: bool,
        /// Listen here instead of every http.service's own `addr` (e.g. 127.0.0.1:0).
        #[arg(long, env = "MOONWIRE_ADDR")]
        addr: Option<String>,
        /// Security strict mode: permission checks without an actor and a scope are denied.
        #[arg(long, env = "MOONWIRE_STRICT_MODE")]
        strict: bool,
    },
    /// Validate the registry and compile every Lua source without running anything.
    Check {
        #[arg(long, default_value = "registry")]
        registry: PathBuf,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MOONWIRE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("MOONWIRE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load(registry: &std::path::Path) -> Result<moonwire::registry::Registry, ExitCode> {
    let root = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    moonwire::registry::load(registry, &root, &moonwire::lua::compile::check_syntax).map_err(
        |diags| {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("{} problem(s) in {}", diags.len(), registry.display());
            ExitCode::from(1)
        },
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { registry } => match load(&registry) {
            Ok(r) => {
                for w in r.warnings() {
                    eprintln!("warning: {w}");
                }
                println!("ok: {} entries", r.entries().len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run {
            registry,
            no_watch,
            addr,
            strict,
        } => {
            init_logging();
            let reg = match load(&registry) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(run(reg, registry, no_watch, addr, strict))
        }
    }
}

async fn run(
    reg: moonwire::registry::Registry,
    registry_dir: PathBuf,
    no_watch: bool,
    addr: Option<String>,
    strict_mode: bool,
) -> ExitCode {
    let project_root = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let opts = moonwire::runtime::RunOptions {
        project_root,
        addr_override: addr,
        strict_mode,
    };
    let runtime = match moonwire::runtime::Runtime::start(reg, opts).await {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            tracing::error!(error = %e, "start failed");
            return ExitCode::from(1);
        }
    };
    let watcher = if no_watch {
        None
    } else {
        let dir = std::fs::canonicalize(&registry_dir).unwrap_or(registry_dir);
        match moonwire::reload::spawn(runtime.clone(), dir) {
            Ok(task) => Some(task),
            Err(e) => {
                tracing::warn!(error = %e, "hot reload unavailable");
                None
            }
        }
    };
    tracing::info!("moonwire running; press Ctrl-C to stop");
    wait_for_signal().await;
    tracing::info!("shutting down");
    if let Some(w) = watcher {
        w.abort();
    }
    runtime.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
