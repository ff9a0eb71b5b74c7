//! Hot reload: watches the registry folder and every file a `file://` names, debounces bursts
//! of events into one reload, re-reads the whole registry (so a lost or overflowed event never
//! leaves us stale), and hands it to `Runtime::reload`. A reload that fails to load or compile
//! is rejected whole; the running version keeps serving.

use crate::runtime::Runtime;
use notify::event::{CreateKind, ModifyKind, RemoveKind};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Quiet time after the last event before reloading: editors write files in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// The longest a stream of events can hold a reload back.
pub const MAX_DEBOUNCE: Duration = Duration::from_millis(500);
const QUEUE: usize = 1024;
/// How often watched folders are checked for having been replaced (a deploy that swaps a
/// folder, a branch switch): a watch follows the old folder, so no event would ever come.
const FOLDER_CHECK: Duration = Duration::from_secs(1);

/// What a folder is, beyond its path; `None` when it does not exist.
type Identity = Option<(u64, u64)>;

#[cfg(unix)]
fn identity(dir: &Path) -> Identity {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(dir: &Path) -> Identity {
    std::fs::metadata(dir).ok().map(|_| (0, 0))
}

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

/// A folder created, removed or moved (and a rename, which may be one: its event does not say):
/// the files inside get no events of their own, and those written into a new folder before its
/// watch exists never will.
fn folder_level(event: &notify::Event) -> bool {
    let visible = event.paths.iter().any(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !name.starts_with('.') && !name.ends_with('~')
    });
    visible
        && matches!(
            event.kind,
            EventKind::Create(CreateKind::Folder)
                | EventKind::Remove(RemoveKind::Folder)
                | EventKind::Modify(ModifyKind::Name(_))
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
                if event.need_rescan()
                    || folder_level(&event)
                    || (edit && event.paths.iter().any(|p| relevant(p)))
                {
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
    let mut watched: BTreeMap<PathBuf, Identity> = BTreeMap::new();
    let files = runtime.node.snapshot().registry.watched_files();
    update_watches(
        &mut watcher,
        &mut watched,
        folders(&registry_dir, &files),
        &registry_dir,
    );
    tracing::info!(dir = %registry_dir.display(), folders = watched.len(), "watching for changes");
    Ok(tokio::spawn(async move {
        let mut check = tokio::time::interval(FOLDER_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = rx.recv() => if event.is_none() { return },
                _ = check.tick() => {
                    let files = runtime.node.snapshot().registry.watched_files();
                    let wanted = folders(&registry_dir, &files);
                    if !rewatch_replaced(&mut watcher, &mut watched, wanted, &registry_dir) {
                        continue;
                    }
                    tracing::info!("a watched folder was replaced; rescanning");
                }
            }
            let first_event = Instant::now();
            // Debounce: keep absorbing events until the files have been quiet for a while, but
            // never postpone a reload past MAX_DEBOUNCE (a file rewritten every few ms).
            loop {
                if first_event.elapsed() >= MAX_DEBOUNCE {
                    break;
                }
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

/// Drops the watches of folders that were replaced or removed since they were watched and
/// watches what is there now; true when a folder (re)appeared, i.e. files may have changed
/// without an event.
fn rewatch_replaced(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeMap<PathBuf, Identity>,
    wanted: BTreeSet<PathBuf>,
    registry_dir: &Path,
) -> bool {
    let stale: Vec<PathBuf> = watched
        .iter()
        .filter(|(dir, id)| identity(dir) != **id)
        .map(|(dir, _)| dir.clone())
        .collect();
    for dir in &stale {
        let _ = watcher.unwatch(dir);
        watched.remove(dir);
    }
    let before = watched.len();
    update_watches(watcher, watched, wanted, registry_dir);
    watched.len() > before
}

fn update_watches(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeMap<PathBuf, Identity>,
    wanted: BTreeSet<PathBuf>,
    registry_dir: &Path,
) {
    let gone: Vec<PathBuf> = watched
        .keys()
        .filter(|d| !wanted.contains(*d))
        .cloned()
        .collect();
    for dir in gone {
        let _ = watcher.unwatch(&dir);
        watched.remove(&dir);
    }
    for dir in wanted {
        if watched.contains_key(&dir) {
            continue;
        }
        let mode = if dir == registry_dir {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        // Identity first: a replacement between the two calls is then caught next check.
        let id = identity(&dir);
        match watcher.watch(&dir, mode) {
            Ok(()) => {
                watched.insert(dir, id);
            }
            // A missing folder is retried every check; only a real failure is worth a warning.
            Err(e) if id.is_some() => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch folder")
            }
            Err(_) => {}
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
            crate::metrics::reload(false);
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed");
            crate::metrics::reload(false);
            return;
        }
    };
    match runtime.reload(registry).await {
        Ok(report)
            if report.added.is_empty()
                && report.removed.is_empty()
                && report.changed.is_empty()
                && report.resized.is_empty() =>
        {
            tracing::debug!("files changed but the registry did not");
        }
        Ok(report) => {
            crate::metrics::reload(true);
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
                resized = %ids(&report.resized),
                outdated = %report.outdated.join(","),
                took_ms = first_event.elapsed().as_millis() as u64,
                "reload applied"
            );
        }
        Err(e) => {
            crate::metrics::reload(false);
            tracing::error!(error = %e, "reload rejected; the running version keeps serving");
        }
    }
}
