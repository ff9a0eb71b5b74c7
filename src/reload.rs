//! Hot reload: watches the registry folder and every file a `file://` names, debounces bursts
//! of events into one reload, re-reads the whole registry (so a lost or overflowed event never
//! leaves us stale), and hands it to `Runtime::reload`. A reload that fails to load or compile
//! is rejected whole; the running version keeps serving.

use crate::runtime::Runtime;
use notify::event::ModifyKind;
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Quiet time after the last event before reloading: editors write files in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
const QUEUE: usize = 1024;

/// Folders to watch: the registry (recursively) and the folder of every watched file.
fn folders(registry_dir: &Path, files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut set = BTreeSet::new();
    set.insert(registry_dir.to_path_buf());
    for f in files {
        if let Some(parent) = f.parent() {
            set.insert(parent.to_path_buf());
        }
    }
    set
}

fn relevant(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') || name.ends_with('~') {
        return false;
    }
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "lua")
    )
}

/// Starts watching; the returned task runs until the runtime is dropped.
pub fn spawn(
    runtime: Arc<Runtime>,
    registry_dir: PathBuf,
) -> notify::Result<tokio::task::JoinHandle<()>> {
    let (tx, mut rx) = mpsc::channel::<()>(QUEUE);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(event) => {
                // Reads (our own reload reads every file) and metadata changes are not edits.
                let edit = matches!(
                    event.kind,
                    EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other
                ) || matches!(event.kind, EventKind::Modify(m) if !matches!(m, ModifyKind::Metadata(_)));
                if event.need_rescan() || (edit && event.paths.iter().any(|p| relevant(p))) {
                    // A full queue already means "reload pending": dropping is a rescan anyway.
                    let _ = tx.try_send(());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watcher error; rescanning");
                let _ = tx.try_send(());
            }
        }
    })?;
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let files = runtime.node.snapshot().registry.watched_files();
    update_watches(
        &mut watcher,
        &mut watched,
        folders(&registry_dir, &files),
        &registry_dir,
    );
    tracing::info!(dir = %registry_dir.display(), folders = watched.len(), "watching for changes");
    Ok(tokio::spawn(async move {
        while rx.recv().await.is_some() {
            let first_event = Instant::now();
            // Debounce: keep absorbing events until the files have been quiet for a while.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            reload_once(&runtime, &registry_dir, first_event).await;
            let files = runtime.node.snapshot().registry.watched_files();
            update_watches(
                &mut watcher,
                &mut watched,
                folders(&registry_dir, &files),
                &registry_dir,
            );
        }
    }))
}

fn update_watches(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    wanted: BTreeSet<PathBuf>,
    registry_dir: &Path,
) {
    for gone in watched.difference(&wanted).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&gone);
        watched.remove(&gone);
    }
    for dir in wanted {
        if watched.contains(&dir) {
            continue;
        }
        let mode = if dir == registry_dir {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        match watcher.watch(&dir, mode) {
            Ok(()) => {
                watched.insert(dir);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch folder"),
        }
    }
}

async fn reload_once(runtime: &Runtime, registry_dir: &Path, first_event: Instant) {
    let root = runtime.node.project_root.clone();
    let dir = registry_dir.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || {
        crate::registry::load(&dir, &root, &crate::lua::compile::check_syntax)
    })
    .await;
    let registry = match loaded {
        Ok(Ok(r)) => r,
        Ok(Err(diags)) => {
            for d in &diags {
                tracing::error!("{d}");
            }
            tracing::error!(
                problems = diags.len(),
                "reload rejected; the running version keeps serving"
            );
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed");
            return;
        }
    };
    match runtime.reload(registry).await {
        Ok(report)
            if report.added.is_empty()
                && report.removed.is_empty()
                && report.changed.is_empty() =>
        {
            tracing::debug!("files changed but the registry did not");
        }
        Ok(report) => {
            let ids = |v: &[crate::registry::kinds::EntryId]| {
                v.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            tracing::info!(
                changed = %ids(&report.changed),
                added = %ids(&report.added),
                removed = %ids(&report.removed),
                restarted = %ids(&report.restarted),
                outdated = %report.outdated.join(","),
                took_ms = first_event.elapsed().as_millis() as u64,
                "reload applied"
            );
        }
        Err(e) => tracing::error!(error = %e, "reload rejected; the running version keeps serving"),
    }
}
