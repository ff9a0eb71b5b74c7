//! `moonwire`: argv → command; logging set-up; errors → exit codes.

use clap::{Parser, Subcommand};

// Messages, Lua values and HTTP buffers are many small short-lived allocations; mimalloc
// handles them markedly faster than the system allocator. Its `no_thp` feature (Cargo.toml)
// keeps it from asking for transparent huge pages: with them, each sparsely used 2 MB region
// was resident in full, about 4 KB more RSS per idle WebSocket connection (BENCHMARKS.md).
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
    /// Manage users of the app's accounts database.
    Users {
        #[arg(long, default_value = "registry", global = true)]
        registry: PathBuf,
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Issue, list and revoke API keys.
    Keys {
        #[arg(long, default_value = "registry", global = true)]
        registry: PathBuf,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Issue internal bearer tokens (`user:expiry:hmac`).
    Tokens {
        #[arg(long, default_value = "registry", global = true)]
        registry: PathBuf,
        #[command(subcommand)]
        action: TokensAction,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Create a user who can sign in with Basic auth.
    Create {
        #[arg(long)]
        email: String,
        /// The password; read from MOONWIRE_PASSWORD when not given, so it stays out of shell history.
        #[arg(long, env = "MOONWIRE_PASSWORD", hide_env_values = true)]
        password: String,
        /// `user` reads and trades; `viewer` only reads.
        #[arg(long, default_value = "user")]
        role: String,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key for a user (id or email); prints the secret once.
    Create {
        #[arg(long)]
        user: String,
        /// Comma-separated: read, trade.
        #[arg(long, default_value = "read")]
        permissions: String,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a key: signed requests and tokens issued for it stop working.
    Revoke { api_key: String },
}

#[derive(Subcommand)]
enum TokensAction {
    /// An internal token for a user (id or email).
    Issue {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "1h")]
        ttl: String,
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
        Command::Users { registry, action } => admin(&registry, |a| match action {
            UsersAction::Create {
                email,
                password,
                role,
            } => {
                let u = a.create_user(&email, &role, &password)?;
                println!("user {} created (email {email}, role {})", u.id, u.role);
                Ok(())
            }
        }),
        Command::Keys { registry, action } => admin(&registry, |a| match action {
            KeysAction::Create { user, permissions } => {
                let (key, secret) = a.create_key(&user, &permissions)?;
                println!("api_key:     {}", key.api_key);
                println!("secret:      {secret}");
                println!("user:        {}", key.user_id);
                println!("permissions: {}", key.permissions.join(","));
                eprintln!("The secret is shown only now; it is not stored.");
                Ok(())
            }
            KeysAction::List { user } => {
                for k in a.list_keys(user.as_deref())? {
                    let state = if k.is_revoked() { "revoked" } else { "active" };
                    let kind = if k.secret_hash.is_some() {
                        "signed"
                    } else {
                        "legacy"
                    };
                    println!(
                        "{}\t{}\t{}\t{state}\t{kind}\tcreated {}",
                        k.api_key,
                        k.user_id,
                        k.permissions.join(","),
                        k.created_at
                    );
                }
                Ok(())
            }
            KeysAction::Revoke { api_key } => {
                if a.revoke_key(&api_key)? {
                    println!("revoked {api_key}");
                    Ok(())
                } else {
                    Err(format!("no active key {api_key}").into())
                }
            }
        }),
        Command::Tokens { registry, action } => admin(&registry, |a| match action {
            TokensAction::Issue { user, ttl } => {
                let ttl =
                    moonwire::registry::duration::parse(&ttl).map_err(|e| format!("--ttl: {e}"))?;
                println!("{}", a.issue_internal_token(&user, ttl)?);
                Ok(())
            }
        }),
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

type AdminResult = Result<(), Box<dyn std::error::Error>>;

fn admin(
    registry: &std::path::Path,
    f: impl FnOnce(&moonwire::admin::Accounts) -> AdminResult,
) -> ExitCode {
    let reg = match load(registry) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let root = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let result = moonwire::admin::Accounts::open(&reg, &root)
        .map_err(Into::into)
        .and_then(|a| f(&a));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
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
