//! Watches the boot tree (notify) and reports every change under `once/` and `static/` as an
//! audit event, and every problem the moment it appears: a broken, escaping or looping link,
//! a name that is neither IP, MAC nor subnet, a missing `default`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tracing::{error, info, warn};

use crate::boottree::{is_ignored_name, BootTree, DirEntry, Slot};

/// Starts the watcher thread. It runs until the process ends.
pub fn spawn(tree: Arc<BootTree>) -> Result<(), notify::Error> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(tree.root(), RecursiveMode::NonRecursive)?;
    for slot in [Slot::Once, Slot::Static] {
        // A missing directory is watched once it is created (seen through the root's watch).
        let _ = watcher.watch(&tree.slot_dir(slot), RecursiveMode::NonRecursive);
    }
    std::thread::Builder::new()
        .name("pxesrv-watch".into())
        .spawn(move || {
            for res in rx {
                match res {
                    Ok(event) => handle(&tree, &mut watcher, event),
                    Err(e) => warn!(error = ?e.to_string(), "watch: error from the file watcher"),
                }
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(())
}

/// What happened to a path, as far as an operator cares.
enum Change {
    /// It is there now (created, renamed in, written).
    Present,
    /// It went away (removed, renamed out).
    Gone,
}

fn classify(kind: &EventKind, path: &Path) -> Option<Change> {
    match kind {
        // A new regular file is reported when its writer closes it, not while it is empty.
        EventKind::Create(CreateKind::File) if !path.is_symlink() => None,
        EventKind::Create(_) => Some(Change::Present),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Change::Present),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
            Some(Change::Gone)
        }
        EventKind::Modify(ModifyKind::Name(_)) => Some(if path.symlink_metadata().is_ok() {
            Change::Present
        } else {
            Change::Gone
        }),
        _ => None,
    }
}

fn handle(tree: &BootTree, watcher: &mut notify::RecommendedWatcher, event: notify::Event) {
    for path in &event.paths {
        let Some(change) = classify(&event.kind, path) else {
            continue;
        };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            continue;
        };
        if parent == tree.root() {
            on_root_change(tree, watcher, name, path, change);
            continue;
        }
        let slot = if parent == tree.slot_dir(Slot::Once) {
            Slot::Once
        } else if parent == tree.slot_dir(Slot::Static) {
            Slot::Static
        } else {
            continue;
        };
        if is_ignored_name(name) {
            continue;
        }
        let entry = DirEntry {
            slot,
            file_name: name.to_string(),
            name: name.parse(),
        };
        match change {
            Change::Gone => info!(entry = %entry.rel_path(), "audit: entry removed"),
            Change::Present => match tree.health(&entry) {
                Ok(target) => {
                    info!(entry = %entry.rel_path(), target = %target, "audit: entry set")
                }
                Err(problem) => warn!(entry = %entry.rel_path(), problem = ?problem.to_string(),
                                      "audit: entry set, but it cannot be served"),
            },
        }
    }
}

fn on_root_change(
    tree: &BootTree,
    watcher: &mut notify::RecommendedWatcher,
    name: &str,
    path: &Path,
    change: Change,
) {
    match (name, change) {
        ("default", Change::Gone) => error!(
            "default is missing: clients without an entry now get a script that sends them to \
             their next boot device; create {}",
            path.display()
        ),
        ("default", Change::Present) => match tree.resolve("default") {
            Ok(_) => info!("audit: default set"),
            Err(e) => {
                warn!(problem = ?e.to_string(), "audit: default changed, but it cannot be served")
            }
        },
        ("once" | "static", Change::Present) => {
            let dir: PathBuf = path.to_owned();
            if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), error = ?e.to_string(), "watch: cannot watch new directory");
            } else {
                info!(dir = %dir.display(), "watch: watching new entry directory");
            }
        }
        ("once" | "static", Change::Gone) => {
            warn!(dir = %path.display(), "watch: entry directory removed")
        }
        _ => {}
    }
}
