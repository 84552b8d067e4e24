//! The data directory is owner-only: it holds the server's private key, the owner policy's
//! key and the store, whose enrollment keys let anyone derive every device's key.
//!
//! Three mechanisms keep it so:
//! * [`restrict_umask`] sets the process umask to `077` before anything is created, so every
//!   file and directory created afterwards - ours and those sled creates while it runs
//!   (segments, snapshots, blobs) - is owner-only. A umask is process-wide; that is intended:
//!   `dpsd` creates nothing another user should read.
//! * [`create_dir`] and [`write_file`] ask for the owner-only mode explicitly as well, so the
//!   files `dpsd` writes itself stay private even in a process whose umask was changed after.
//! * [`tighten`] walks what an earlier version or an operator left behind and removes group
//!   and other permissions, with one warning per path naming its old mode.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::DpsdError;

/// Mode of every directory `dpsd` creates: owner read, write and search only.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file `dpsd` creates: owner read and write only.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Group and other permission bits: none may be set anywhere in the data directory.
const GROUP_AND_OTHER: u32 = 0o077;

/// Makes every file and directory this process creates from now on owner-only.
pub(crate) fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(GROUP_AND_OTHER));
}

/// Creates `dir` and its missing parents with [`DIR_MODE`].
pub(crate) fn create_dir(dir: &Path) -> Result<(), DpsdError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| DpsdError::io(dir, e))
}

/// Writes `text` to `path` (replacing it) with [`FILE_MODE`].
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), DpsdError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| DpsdError::io(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| DpsdError::io(path, e))
}

/// Removes group and other permissions from `dir` and everything under it, warning once per
/// path that was looser. Symbolic links are neither followed nor changed: a link's own mode
/// means nothing, and its target is not the data directory's to change.
pub(crate) fn tighten(dir: &Path) -> Result<(), DpsdError> {
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| DpsdError::io(&path, e))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & GROUP_AND_OTHER != 0 {
            let tight = mode & !GROUP_AND_OTHER;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(tight))
                .map_err(|e| DpsdError::io(&path, e))?;
            tracing::warn!(
                path = %path.display(),
                "was mode {:04o}, open to other users; tightened to {:04o}",
                mode & 0o7777,
                tight & 0o7777
            );
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(|e| DpsdError::io(&path, e))? {
                pending.push(entry.map_err(|e| DpsdError::io(&path, e))?.path());
            }
        }
    }
    Ok(())
}
