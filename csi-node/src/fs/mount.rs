//! mount(2) and umount2(2): staging a filesystem, bind publishing it
//! (read-only honoured), bind publishing a raw block device node onto a
//! file, and unmounting — all idempotent, with what is mounted where read
//! from /proc/self/mountinfo.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use libc::c_ulong;

use super::blockdev::{device_number, require_path};
use super::error::{FsError, Result};
use super::mountinfo::{read_mountinfo, top_mount_at, MountInfo};
use super::stats::statvfs_flags;
use super::FsType;

/// What a mount call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountOutcome {
    /// Mounted now.
    Mounted,
    /// The same source was already mounted there with compatible options.
    AlreadyMounted,
}

/// What [`unmount`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmountOutcome {
    Unmounted,
    /// Nothing was mounted there (or the path does not exist).
    NotMounted,
}

/// Mount options split into mount(2) flags and the filesystem's data
/// string, the way mount(8) splits them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    flags: c_ulong,
    data: Vec<String>,
}

/// Options that are mount(2) flags: name, set (true) or clear, flag.
const FLAG_OPTIONS: &[(&str, bool, c_ulong)] = &[
    ("ro", true, libc::MS_RDONLY),
    ("rw", false, libc::MS_RDONLY),
    ("nosuid", true, libc::MS_NOSUID),
    ("suid", false, libc::MS_NOSUID),
    ("nodev", true, libc::MS_NODEV),
    ("dev", false, libc::MS_NODEV),
    ("noexec", true, libc::MS_NOEXEC),
    ("exec", false, libc::MS_NOEXEC),
    ("sync", true, libc::MS_SYNCHRONOUS),
    ("async", false, libc::MS_SYNCHRONOUS),
    ("dirsync", true, libc::MS_DIRSYNC),
    ("noatime", true, libc::MS_NOATIME),
    ("atime", false, libc::MS_NOATIME),
    ("nodiratime", true, libc::MS_NODIRATIME),
    ("diratime", false, libc::MS_NODIRATIME),
    ("relatime", true, libc::MS_RELATIME),
    ("norelatime", false, libc::MS_RELATIME),
    ("strictatime", true, libc::MS_STRICTATIME),
    ("lazytime", true, libc::MS_LAZYTIME),
    ("nolazytime", false, libc::MS_LAZYTIME),
    ("mand", true, libc::MS_MANDLOCK),
    ("nomand", false, libc::MS_MANDLOCK),
    ("nosymfollow", true, libc::MS_NOSYMFOLLOW),
    ("silent", true, libc::MS_SILENT),
    ("loud", false, libc::MS_SILENT),
];

/// fstab-only options mount(8) consumes itself; ignored here.
const FSTAB_ONLY: &[&str] = &["defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev"];

/// Options that would change what kind of mount this is: never accepted
/// from a caller (bind and remount are this module's own business).
const REFUSED: &[&str] = &[
    "bind", "rbind", "remount", "move", "shared", "rshared", "private", "rprivate", "slave", "rslave",
    "unbindable", "runbindable", "loop",
];

/// Per-mount flags shown in mountinfo's mount options, checked when a
/// mount already exists.
const SHOWN_FLAGS: &[(&str, c_ulong)] = &[
    ("nosuid", libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV),
    ("noexec", libc::MS_NOEXEC),
    ("noatime", libc::MS_NOATIME),
    ("nodiratime", libc::MS_NODIRATIME),
    ("nosymfollow", libc::MS_NOSYMFOLLOW),
];

impl MountOptions {
    /// Parses CSI `mount_flags` (each entry may itself be a comma
    /// separated list, as in fstab). `read_only` is the CSI readonly bit
    /// (or a read-only access mode): it adds `ro`, and contradicts an
    /// explicit `rw`. Known flags become mount(2) flags; fstab-only words
    /// (`defaults`, `nofail`, `x-*`, ...) are dropped; `bind`, `remount`
    /// and propagation options are refused; anything else (`discard`,
    /// `nouuid`, `errors=remount-ro`, ...) goes to the filesystem.
    pub fn parse(read_only: bool, mount_options: &[String]) -> Result<MountOptions> {
        let mut flags: c_ulong = if read_only { libc::MS_RDONLY } else { 0 };
        let mut data = Vec::new();
        for option in mount_options.iter().flat_map(|o| o.split(',')) {
            let option = option.trim();
            if option.is_empty() {
                continue;
            }
            if option.contains('\0') {
                return Err(FsError::InvalidArgument(format!("mount option {option:?} contains a NUL byte")));
            }
            if let Some((_, set, flag)) = FLAG_OPTIONS.iter().find(|(name, _, _)| *name == option) {
                if *set {
                    flags |= flag;
                } else {
                    if *flag == libc::MS_RDONLY && read_only {
                        return Err(FsError::InvalidArgument(
                            "mount option \"rw\" contradicts the read-only request".into(),
                        ));
                    }
                    flags &= !flag;
                }
                continue;
            }
            let word = option.split('=').next().unwrap_or(option);
            if FSTAB_ONLY.contains(&word) || word.starts_with("x-") || word == "comment" {
                continue;
            }
            if REFUSED.contains(&word) || word.starts_with("make-") {
                return Err(FsError::InvalidArgument(format!(
                    "mount option {option:?} is not allowed: it would change the kind of mount, not its options"
                )));
            }
            data.push(option.to_string());
        }
        Ok(MountOptions { flags, data })
    }

    pub fn read_only(&self) -> bool {
        self.flags & libc::MS_RDONLY != 0
    }

    /// The mount(2) flags.
    pub fn flags(&self) -> c_ulong {
        self.flags
    }

    /// The filesystem-specific options, comma separated (mount(2)'s data).
    pub fn data(&self) -> String {
        self.data.join(",")
    }

    /// Adds the options this layer always uses for `fs`: `nouuid` for xfs,
    /// because a thin snapshot or clone carries its origin's UUID and XFS
    /// refuses to mount a second filesystem with a UUID already mounted.
    pub fn with_defaults_for(mut self, fs: &FsType) -> MountOptions {
        if *fs == FsType::Xfs && !self.data.iter().any(|o| o == "nouuid") {
            self.data.push("nouuid".into());
        }
        self
    }

    /// Why an existing mount (its mountinfo line) does not satisfy these
    /// options, if it does not.
    fn mismatch(&self, existing: &MountInfo) -> Option<String> {
        let existing_ro = existing.is_read_only();
        if self.read_only() && !existing_ro {
            return Some("it is mounted read-write and read-only was requested".into());
        }
        if !self.read_only() && existing_ro {
            return Some("it is mounted read-only and read-write was requested".into());
        }
        let missing: Vec<&str> = SHOWN_FLAGS
            .iter()
            .filter(|(name, flag)| self.flags & flag != 0 && !existing.has_mount_option(name))
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            return Some(format!("it is mounted without {}", missing.join(",")));
        }
        None
    }
}

impl fmt::Display for MountOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<&str> = vec![if self.read_only() { "ro" } else { "rw" }];
        for (name, set, flag) in FLAG_OPTIONS {
            if *set && *flag != libc::MS_RDONLY && self.flags & flag != 0 {
                words.push(name);
            }
        }
        words.extend(self.data.iter().map(String::as_str));
        f.write_str(&words.join(","))
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in path"))
}

/// mount(2).
fn sys_mount(source: Option<&Path>, target: &Path, fstype: Option<&str>, flags: c_ulong, data: &str) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(|t| CString::new(t).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))).transpose()?;
    let data = if data.is_empty() {
        None
    } else {
        Some(CString::new(data).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?)
    };
    // SAFETY: every pointer is either null or a NUL-terminated string that
    // lives until the call returns.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref().map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// umount2(2) without following a final symlink.
fn sys_umount(target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    // SAFETY: a NUL-terminated string that lives until the call returns.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes sure `target` is a directory, creating it (and its parents).
fn ensure_dir(target: &Path) -> Result<()> {
    match std::fs::metadata(target) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) => Err(FsError::WrongFileType { path: target.to_path_buf(), found: kind(&meta), expected: "a directory" }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(|e| FsError::Sys { op: "creating directory", path: target.to_path_buf(), source: e })
        }
        Err(e) => Err(FsError::sys("stat", target, e)),
    }
}

/// Makes sure `target` is a non-directory to bind a device node onto,
/// creating an empty file (and its parent directories) if needed.
fn ensure_file(target: &Path) -> Result<()> {
    match std::fs::metadata(target) {
        Ok(meta) if meta.is_dir() => {
            Err(FsError::WrongFileType { path: target.to_path_buf(), found: "a directory", expected: "a file" })
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                ensure_dir(parent)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o660)
                .open(target)
                .map(drop)
                .map_err(|e| FsError::Sys { op: "creating file", path: target.to_path_buf(), source: e })
        }
        Err(e) => Err(FsError::sys("stat", target, e)),
    }
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

fn canonical(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| FsError::sys("resolving", path, e))
}

/// The canonical form of `path` if it exists, None if it does not.
fn canonical_if_exists(path: &Path) -> Result<Option<PathBuf>> {
    match std::fs::canonicalize(path) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FsError::sys("resolving", path, e)),
    }
}

/// Mounts the filesystem on block device `device` at directory `target`
/// (created if missing) as `fs`, read-only if `read_only`, with
/// `mount_options` (see [`MountOptions::parse`]; xfs always gets
/// `nouuid`, see [`MountOptions::with_defaults_for`]).
///
/// Idempotent: if `target` already has this device mounted (its whole
/// filesystem) with compatible options — same read-only-ness, the
/// requested nosuid/nodev/noexec/noatime flags — `AlreadyMounted`. If it
/// has the device mounted otherwise: [`FsError::IncompatibleMount`]. If
/// something else is mounted there: [`FsError::MountConflict`].
pub fn mount(device: &Path, target: &Path, fs: &FsType, read_only: bool, mount_options: &[String]) -> Result<MountOutcome> {
    require_path(device, "device path")?;
    require_path(target, "target path")?;
    fs.require_supported()?;
    let options = MountOptions::parse(read_only, mount_options)?.with_defaults_for(fs);
    let (major, minor) = device_number(device)?;
    ensure_dir(target)?;
    let target_c = canonical(target)?;
    let mounts = read_mountinfo()?;
    if let Some(existing) = top_mount_at(&mounts, &target_c) {
        let wanted = format!("{} ({fs})", device.display());
        if (existing.major, existing.minor) != (major, minor) || existing.root != Path::new("/") {
            return Err(FsError::MountConflict { target: target.to_path_buf(), found: existing.describe(), wanted });
        }
        let same_family = existing.fs_type == fs.name()
            || (fs.is_ext() && matches!(existing.fs_type.as_str(), "ext2" | "ext3" | "ext4"));
        let why = if same_family {
            options.mismatch(existing)
        } else {
            Some(format!("it is mounted as {} and {} was requested", existing.fs_type, fs.name()))
        };
        return match why {
            None => Ok(MountOutcome::AlreadyMounted),
            Some(why) => Err(FsError::IncompatibleMount { target: target.to_path_buf(), source_desc: existing.describe(), why }),
        };
    }
    tracing::info!(device = %device.display(), target = %target_c.display(), fs = fs.name(), options = %options, "mounting");
    sys_mount(Some(device), &target_c, Some(fs.name()), options.flags(), &options.data()).map_err(|source| FsError::Mount {
        op: "mount",
        from: device.to_path_buf(),
        to: target.to_path_buf(),
        detail: format!(" as {} with options {options}", fs.name()),
        source,
    })?;
    Ok(MountOutcome::Mounted)
}

/// Flags a read-only bind remount must repeat so the remount does not
/// clear them (MS_REMOUNT|MS_BIND sets all per-mount flags at once).
fn preserved_flags(target: &Path) -> Result<c_ulong> {
    let st = statvfs_flags(target)?;
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// Checks an existing mount at `target` against a bind of `source`:
/// Ok(true) if it is that bind and compatible, Ok(false) if nothing is
/// mounted there.
fn existing_bind(source: &Path, target: &Path, target_c: &Path, read_only: bool) -> Result<bool> {
    let mounts = read_mountinfo()?;
    let Some(existing) = top_mount_at(&mounts, target_c) else {
        return Ok(false);
    };
    let src = std::fs::metadata(source).map_err(|e| FsError::sys("stat", source, e))?;
    let tgt = std::fs::metadata(target_c).map_err(|e| FsError::sys("stat", target, e))?;
    let same = if src.file_type().is_block_device() {
        // Any node of the same device will do (/dev/mapper/x or /dev/dm-3).
        tgt.file_type().is_block_device() && tgt.rdev() == src.rdev()
    } else {
        (tgt.dev(), tgt.ino()) == (src.dev(), src.ino())
    };
    if !same {
        return Err(FsError::MountConflict {
            target: target.to_path_buf(),
            found: existing.describe(),
            wanted: format!("a bind mount of {}", source.display()),
        });
    }
    let target_ro = statvfs_flags(target_c)? & libc::ST_RDONLY != 0;
    let why = if read_only && !target_ro {
        Some("it is writable and read-only was requested")
    } else if !read_only && target_ro && statvfs_flags(source)? & libc::ST_RDONLY == 0 {
        Some("it is read-only and read-write was requested")
    } else {
        None
    };
    match why {
        None => Ok(true),
        Some(why) => Err(FsError::IncompatibleMount {
            target: target.to_path_buf(),
            source_desc: format!("a bind mount of {}", source.display()),
            why: why.into(),
        }),
    }
}

/// Bind mounts directory `source` (a staged volume) on directory `target`
/// (created if missing); read-only if `read_only`, which takes a second
/// mount(2) with MS_BIND|MS_REMOUNT|MS_RDONLY (keeping nosuid, nodev,
/// noexec and atime flags the bind inherited). A failed read-only remount
/// undoes the bind: never a writable mount where read-only was asked for.
///
/// Idempotent: `AlreadyMounted` if `target` already shows `source` with
/// the requested read-only-ness; another mount there is an error.
pub fn bind_mount(source: &Path, target: &Path, read_only: bool) -> Result<MountOutcome> {
    require_path(source, "source path")?;
    require_path(target, "target path")?;
    let meta = std::fs::metadata(source).map_err(|e| FsError::sys("stat", source, e))?;
    if !meta.is_dir() {
        return Err(FsError::WrongFileType { path: source.to_path_buf(), found: kind(&meta), expected: "a directory" });
    }
    ensure_dir(target)?;
    let target_c = canonical(target)?;
    if existing_bind(source, target, &target_c, read_only)? {
        return Ok(MountOutcome::AlreadyMounted);
    }
    bind(source, target, &target_c, read_only)
}

fn bind(source: &Path, target: &Path, target_c: &Path, read_only: bool) -> Result<MountOutcome> {
    tracing::info!(source = %source.display(), target = %target_c.display(), read_only, "bind mounting");
    let err = |op, detail: &str, source_err| FsError::Mount {
        op,
        from: source.to_path_buf(),
        to: target.to_path_buf(),
        detail: detail.to_string(),
        source: source_err,
    };
    sys_mount(Some(source), target_c, None, libc::MS_BIND, "").map_err(|e| err("bind mount", "", e))?;
    if read_only {
        let remount = preserved_flags(target_c)
            .and_then(|keep| {
                sys_mount(None, target_c, None, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep, "")
                    .map_err(|e| err("read-only remount of the bind mount of", "", e))
            });
        if let Err(e) = remount {
            if let Err(undo) = sys_umount(target_c) {
                tracing::error!(target = %target_c.display(), error = %undo, "cannot undo a bind mount whose read-only remount failed");
            }
            return Err(e);
        }
    }
    Ok(MountOutcome::Mounted)
}

/// Publishes a raw block volume: bind mounts the block device node
/// `device_node` onto the file `target_file` (created, with its parent
/// directories, if missing). Idempotent like [`bind_mount`]: any node of
/// the same device already bound there is `AlreadyMounted`.
///
/// A read-only bind of a device node does not stop writes to the device
/// (the kernel only checks mount read-only-ness for files of a
/// filesystem), so there is no read-only variant here.
pub fn bind_mount_block(device_node: &Path, target_file: &Path) -> Result<MountOutcome> {
    require_path(device_node, "device path")?;
    require_path(target_file, "target path")?;
    device_number(device_node)?;
    ensure_file(target_file)?;
    let target_c = canonical(target_file)?;
    if existing_bind(device_node, target_file, &target_c, false)? {
        return Ok(MountOutcome::AlreadyMounted);
    }
    bind(device_node, target_file, &target_c, false)
}

/// Unmounts whatever is mounted at `target` (all of it, if mounts are
/// stacked there). Idempotent: a path that does not exist or is not a
/// mount point is `NotMounted`. Files still open there:
/// [`FsError::Busy`]. The target itself is left in place.
pub fn unmount(target: &Path) -> Result<UnmountOutcome> {
    require_path(target, "target path")?;
    let Some(target_c) = canonical_if_exists(target)? else {
        return Ok(UnmountOutcome::NotMounted);
    };
    let mut outcome = UnmountOutcome::NotMounted;
    // Bounded: each round removes one mount or stops.
    for _ in 0..64 {
        let mounts = read_mountinfo()?;
        if top_mount_at(&mounts, &target_c).is_none() {
            break;
        }
        tracing::info!(target = %target_c.display(), "unmounting");
        match sys_umount(&target_c) {
            Ok(()) => outcome = UnmountOutcome::Unmounted,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(FsError::Busy { target: target.to_path_buf() });
            }
            // Gone between the look and the call.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => break,
            Err(e) => return Err(FsError::Sys { op: "umount", path: target.to_path_buf(), source: e }),
        }
    }
    Ok(outcome)
}

/// Whether something is mounted at `path` (a path that does not exist is
/// not a mount point). Bind mounts of a directory of the same filesystem
/// count, unlike a st_dev comparison with the parent.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    require_path(path, "path")?;
    let Some(path_c) = canonical_if_exists(path)? else {
        return Ok(false);
    };
    Ok(top_mount_at(&read_mountinfo()?, &path_c).is_some())
}

/// The mounts of the filesystem on block device `device` (mountinfo lines
/// whose major:minor is the device's), stage and bind mounts alike, in
/// mount order. Raw block binds of the device node are not among them
/// (they are mounts of devtmpfs).
pub fn mounts_of(device: &Path) -> Result<Vec<MountInfo>> {
    let (major, minor) = device_number(device)?;
    Ok(read_mountinfo()?.into_iter().filter(|m| (m.major, m.minor) == (major, minor)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::mountinfo::parse_mountinfo;

    fn opts(read_only: bool, list: &[&str]) -> Result<MountOptions> {
        MountOptions::parse(read_only, &list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_and_data_are_split() {
        let o = opts(false, &["noatime,discard", "nosuid", "errors=remount-ro", "defaults", "x-systemd.foo", ""]).unwrap();
        assert_eq!(o.flags(), libc::MS_NOATIME | libc::MS_NOSUID);
        assert_eq!(o.data(), "discard,errors=remount-ro");
        assert!(!o.read_only());
        assert_eq!(o.to_string(), "rw,nosuid,noatime,discard,errors=remount-ro");

        let o = opts(false, &["noatime"]).unwrap().with_defaults_for(&FsType::Xfs);
        assert_eq!(o.data(), "nouuid");
        let o = opts(false, &["nouuid"]).unwrap().with_defaults_for(&FsType::Xfs);
        assert_eq!(o.data(), "nouuid");
        assert_eq!(opts(false, &[]).unwrap().with_defaults_for(&FsType::Ext4).data(), "");

        let o = opts(true, &["nouuid"]).unwrap();
        assert!(o.read_only());
        assert_eq!(o.to_string(), "ro,nouuid");

        // Later words win, as with mount(8).
        let o = opts(false, &["noexec", "exec", "ro"]).unwrap();
        assert_eq!(o.flags(), libc::MS_RDONLY);
        assert!(opts(false, &[]).unwrap().data().is_empty());
    }

    #[test]
    fn bad_options_are_refused_with_reasons() {
        let err = opts(true, &["rw"]).unwrap_err();
        assert_eq!(err.to_string(), "invalid argument: mount option \"rw\" contradicts the read-only request");
        let err = opts(false, &["bind"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid argument: mount option \"bind\" is not allowed: it would change the kind of mount, not its options"
        );
        assert!(opts(false, &["remount,ro"]).is_err());
        assert!(opts(false, &["make-shared"]).is_err());
        assert!(opts(false, &["loop=/dev/loop0"]).is_err());
        assert!(opts(false, &["a\0b"]).unwrap_err().to_string().contains("NUL"));
    }

    #[test]
    fn existing_mounts_are_compared() {
        let mi = |line: &str| parse_mountinfo(line.as_bytes()).unwrap().remove(0);
        let rw = mi("36 26 7:0 / /stage rw,nosuid,noatime shared:40 - ext4 /dev/loop0 rw\n");
        let ro = mi("36 26 7:0 / /stage ro,relatime - ext4 /dev/loop0 ro\n");
        assert_eq!(opts(false, &["noatime"]).unwrap().mismatch(&rw), None);
        assert_eq!(opts(false, &[]).unwrap().mismatch(&rw), None);
        assert_eq!(
            opts(true, &[]).unwrap().mismatch(&rw).as_deref(),
            Some("it is mounted read-write and read-only was requested")
        );
        assert_eq!(
            opts(false, &[]).unwrap().mismatch(&ro).as_deref(),
            Some("it is mounted read-only and read-write was requested")
        );
        assert_eq!(opts(false, &["noexec", "nodev"]).unwrap().mismatch(&rw).as_deref(), Some("it is mounted without nodev,noexec"));
        // Data options are the filesystem's business: not compared.
        assert_eq!(opts(true, &["discard"]).unwrap().mismatch(&ro), None);
        assert_eq!(rw.describe(), "/dev/loop0 (ext4 7:0, rw,nosuid,noatime)");
    }

    #[test]
    fn errors_name_paths() {
        assert_eq!(
            mount(Path::new(""), Path::new("/mnt"), &FsType::Ext4, false, &[]).unwrap_err().to_string(),
            "invalid argument: the device path is empty"
        );
        assert_eq!(
            mount(Path::new("/nonexistent/dev"), Path::new("/tmp/x"), &FsType::Ext4, false, &[]).unwrap_err().to_string(),
            "/nonexistent/dev: no such file or directory"
        );
        assert_eq!(
            mount(Path::new("/proc/self/status"), Path::new("/tmp/x"), &FsType::Xfs, false, &[]).unwrap_err().to_string(),
            "/proc/self/status is not a block device"
        );
        assert!(matches!(
            mount(Path::new("/dev/null"), Path::new("/tmp/x"), &FsType::Foreign("btrfs".into()), false, &[]),
            Err(FsError::UnsupportedFsType(_))
        ));
        assert_eq!(
            bind_mount(Path::new("/proc/self/status"), Path::new("/tmp/x"), true).unwrap_err().to_string(),
            "/proc/self/status is a regular file, expected a directory"
        );
        assert_eq!(
            bind_mount_block(Path::new("/proc/self/status"), Path::new("/tmp/x")).unwrap_err().to_string(),
            "/proc/self/status is not a block device"
        );
    }

    #[test]
    fn unmount_and_mount_point_queries_need_no_root() {
        assert_eq!(unmount(Path::new("/nonexistent/target")).unwrap(), UnmountOutcome::NotMounted);
        let dir = std::env::temp_dir().join(format!("thin-csi-fs-mount-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_mount_point(&dir).unwrap());
        assert_eq!(unmount(&dir).unwrap(), UnmountOutcome::NotMounted);
        assert!(!is_mount_point(Path::new("/nonexistent/x")).unwrap());
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
