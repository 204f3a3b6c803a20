//! `--lower DIR`: mount as an overlay over an existing directory.
//!
//! The lower directory is opened before the FUSE session mounts, so the
//! mountpoint may be the lower directory itself (the checkout is then seen
//! through AgentFS at its own path, its original content read underneath).
//!
//! The backstore remembers which lower directory it was made over, in the
//! file `lower-dir` (its canonical path on the first line, `copy` on the
//! second if `--lower-isolation copy` imported it): a later mount of the same
//! backstore must pass the same `--lower` (or none is accepted if none was
//! ever given). A different one is refused rather than silently mixing two
//! checkouts: the trees name lower files by their path relative to the lower
//! root, and would resolve them in the other directory (specs/overlay.md).

use super::cli::LowerIsolation;
use agentfs_core::{FsCore, Lower};
use anyhow::{anyhow, bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file in the backstore that names the lower directory.
const MARKER: &str = "lower-dir";

/// What the backstore says about its lower directory: its path, and whether
/// it was imported (`--lower-isolation copy`).
fn recorded(backstore: &Path) -> anyhow::Result<Option<(PathBuf, bool)>> {
    match std::fs::read_to_string(backstore.join(MARKER)) {
        Ok(s) => {
            let mut lines = s.lines();
            let path = PathBuf::from(lines.next().unwrap_or_default());
            Ok(Some((path, lines.next() == Some("copy"))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("cannot read the backstore's lower-dir file"),
    }
}

/// Attach the lower directory `lower` (from `--lower`) to `core`, checking
/// it against what the backstore recorded. Called before mounting.
pub fn attach(
    core: &FsCore,
    lower: Option<&Path>,
    isolation: LowerIsolation,
    backstore: &Path,
    mountpoint: &Path,
) -> anyhow::Result<()> {
    let before = recorded(backstore)?;
    let Some(lower) = lower else {
        if let Some((dir, _)) = before {
            bail!(
                "the backstore {} is an overlay of {}: mount it with --lower {}",
                backstore.display(),
                dir.display(),
                dir.display()
            );
        }
        return Ok(());
    };
    let canonical = lower
        .canonicalize()
        .with_context(|| format!("cannot open the lower directory {}", lower.display()))?;
    if !canonical.is_dir() {
        bail!(
            "the lower directory {} is not a directory",
            canonical.display()
        );
    }
    if backstore.starts_with(&canonical) {
        bail!(
            "the backstore {} is inside the lower directory {}: the lower directory is never written, put the backstore elsewhere",
            backstore.display(),
            canonical.display()
        );
    }
    if mountpoint != canonical && mountpoint.starts_with(&canonical) {
        // Reading the lower directory would walk into the mount itself.
        bail!(
            "the mountpoint {} is inside the lower directory {}: mount at the lower directory itself or outside it",
            mountpoint.display(),
            canonical.display()
        );
    }
    if let Some((dir, imported)) = &before {
        if isolation == LowerIsolation::Copy && !imported {
            bail!(
                "--lower-isolation copy applies at a backstore's first mount only; {} was mounted before without it",
                backstore.display()
            );
        }
        if dir != &canonical {
            bail!(
                "the backstore {} is an overlay of {}, not of {} (to move a checkout, edit {})",
                backstore.display(),
                dir.display(),
                canonical.display(),
                backstore.join(MARKER).display()
            );
        }
    }
    let opened = Lower::open(&canonical)
        .with_context(|| format!("cannot open the lower directory {}", canonical.display()))?;
    let started = std::time::Instant::now();
    let fresh = core
        .attach_lower(Arc::new(opened))
        .map_err(|e| anyhow!("cannot attach the lower directory: {e}"))?;
    if before.is_none() {
        if !fresh {
            bail!(
                "the backstore {} already holds files of its own: an overlay needs a new backstore",
                backstore.display()
            );
        }
        let copy = isolation == LowerIsolation::Copy;
        if copy {
            let started = std::time::Instant::now();
            let report = core
                .import_lower()
                .map_err(|e| anyhow!("cannot copy the lower directory into the backstore: {e}"))?;
            tracing::info!(
                dirs = report.dirs,
                files = report.files,
                bytes = report.bytes,
                ms = started.elapsed().as_millis() as u64,
                "overlay: lower directory copied (--lower-isolation copy)"
            );
        }
        let tmp = backstore.join(format!("{MARKER}.tmp"));
        let mut text = canonical.as_os_str().as_encoded_bytes().to_vec();
        text.push(b'\n');
        if copy {
            text.extend_from_slice(b"copy\n");
        }
        std::fs::write(&tmp, text).context("cannot record the lower directory")?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, backstore.join(MARKER))
            .context("cannot record the lower directory")?;
    }
    tracing::info!(
        lower = %canonical.display(),
        fresh,
        us = started.elapsed().as_micros() as u64,
        "overlay: lower directory attached"
    );
    Ok(())
}
