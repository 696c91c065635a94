//! Where the node may mount, create and remove: the kubelet's directory.
//!
//! Staging and target paths come straight from requests. The node runs as
//! root and `mount(2)` follows symbolic links, so a path is used only when
//! it lies inside the kubelet directory after every symbolic link in it is
//! resolved, and its last component is not itself a link: a request cannot
//! make the node mount over, or remove, anything of the host's. What the
//! node removes on unpublish is only what it creates on publish: an empty
//! directory (mount) or an empty file (raw block).
//!
//! Not covered: a process that swaps a path component for a link between
//! the check and the mount (the kubelet directory is root's; a hostile
//! root is out of scope).

use std::io;
use std::path::{Component, Path, PathBuf};

use super::blockdev::require_path;
use super::error::{FsError, Result};

/// The kubelet directory, resolved once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletDir(PathBuf);

impl KubeletDir {
    /// `dir` must exist (the kubelet makes it before any plugin runs).
    pub fn new(dir: &Path) -> Result<KubeletDir> {
        require_path(dir, "kubelet directory")?;
        std::fs::canonicalize(dir).map(KubeletDir).map_err(|e| FsError::sys("resolving the kubelet directory", dir, e))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Refuses `path` (request field `what`) unless it is absolute, has no
    /// `..`, is not a symbolic link itself, and resolves inside this
    /// directory (its deepest existing ancestor, links resolved, is here).
    pub fn check(&self, path: &Path, what: &str) -> Result<()> {
        require_path(path, what)?;
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(FsError::InvalidArgument(format!("the {what} {} must be an absolute path without `..`", path.display())));
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(FsError::InvalidArgument(format!("the {what} {} is a symbolic link; the node does not follow it", path.display())))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FsError::sys("stat", path, e)),
        }
        let mut existing = path;
        let resolved = loop {
            match std::fs::canonicalize(existing) {
                Ok(p) => break p,
                Err(e) if e.kind() == io::ErrorKind::NotFound => match existing.parent() {
                    Some(parent) => existing = parent,
                    None => return Err(FsError::sys("resolving", path, e)),
                },
                Err(e) => return Err(FsError::sys("resolving", existing, e)),
            }
        };
        if resolved.starts_with(&self.0) {
            Ok(())
        } else {
            Err(FsError::InvalidArgument(format!(
                "the {what} {} is outside the kubelet directory {} (it resolves to {})",
                path.display(),
                self.0.display(),
                resolved.display()
            )))
        }
    }
}

/// Removes the publish target at `path` if it is what publish creates (an
/// empty directory or an empty regular file); anything else is left where
/// it is, with a warning. True if something was removed.
pub fn remove_created_target(path: &Path) -> Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(FsError::sys("stat", path, e)),
    };
    let kept = |why: &str| {
        tracing::warn!(path = %path.display(), why, "publish target left in place: the node did not create it");
        Ok(false)
    };
    if meta.is_dir() {
        return match std::fs::remove_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => kept("a directory that is not empty"),
            Err(e) => Err(FsError::sys("removing", path, e)),
        };
    }
    if meta.file_type().is_file() && meta.len() == 0 {
        return std::fs::remove_file(path).map(|()| true).map_err(|e| FsError::sys("removing", path, e));
    }
    kept(if meta.file_type().is_symlink() { "a symbolic link" } else { "not an empty file" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("thin-csi-paths-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn paths_inside_the_kubelet_directory_are_used_and_links_out_are_refused() {
        let base = scratch("check");
        let kubelet = base.join("kubelet");
        let outside = base.join("host-etc");
        std::fs::create_dir_all(kubelet.join("pods/p1/volumes")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
        let k = KubeletDir::new(&kubelet).unwrap();

        // Existing and not yet existing paths inside.
        k.check(&kubelet.join("pods/p1/volumes"), "target path").unwrap();
        k.check(&kubelet.join("pods/p1/volumes/pv-1/mount"), "target path").unwrap();

        // Outside, directly or through a link in a component or at the end.
        let refused = |p: &Path| matches!(k.check(p, "target path"), Err(FsError::InvalidArgument(_)));
        assert!(refused(&outside.join("passwd")));
        symlink(&outside, kubelet.join("pods/p1/escape")).unwrap();
        assert!(refused(&kubelet.join("pods/p1/escape/passwd")), "a link in a component resolves outside");
        assert!(refused(&kubelet.join("pods/p1/escape/new/dir")), "also for a path not made yet");
        symlink(outside.join("passwd"), kubelet.join("pods/p1/file-link")).unwrap();
        assert!(refused(&kubelet.join("pods/p1/file-link")), "the last component a link");
        symlink(kubelet.join("pods/p1/volumes"), kubelet.join("pods/p1/inside-link")).unwrap();
        assert!(refused(&kubelet.join("pods/p1/inside-link")), "a link at the end is refused even when it points inside");
        assert!(refused(&kubelet.join("pods/../../host-etc")), "`..` is refused");
        assert!(refused(Path::new("pods/p1")), "relative is refused");
        assert!(refused(Path::new("")), "empty is refused");
    }

    #[test]
    fn unpublish_removes_only_what_publish_creates() {
        let base = scratch("remove");
        let dir = base.join("mount");
        std::fs::create_dir(&dir).unwrap();
        assert!(remove_created_target(&dir).unwrap());
        assert!(!dir.exists());

        let block = base.join("block");
        std::fs::write(&block, b"").unwrap();
        assert!(remove_created_target(&block).unwrap());
        assert!(!block.exists());

        let file = base.join("data");
        std::fs::write(&file, b"someone's data").unwrap();
        assert!(!remove_created_target(&file).unwrap());
        assert_eq!(std::fs::read(&file).unwrap(), b"someone's data");

        let full = base.join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), b"1").unwrap();
        assert!(!remove_created_target(&full).unwrap());
        assert!(full.join("x").exists());

        let link = base.join("link");
        symlink(&file, &link).unwrap();
        assert!(!remove_created_target(&link).unwrap());
        assert!(link.symlink_metadata().is_ok() && file.exists());

        assert!(!remove_created_target(&base.join("never-made")).unwrap());
    }
}
