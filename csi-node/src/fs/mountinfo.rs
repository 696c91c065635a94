//! /proc/self/mountinfo, parsed properly (proc(5), "/proc/pid/mountinfo"):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2)(3)   (4)   (5)      (6)     (7)   (8) (9)    (10)          (11)
//! ```
//!
//! Fields are separated by single spaces; (7) is zero or more optional
//! fields ended by the `-` separator (8). Paths and the source have space,
//! tab, newline and backslash escaped as `\ooo` octal (`\040` is a space);
//! paths are bytes, not necessarily UTF-8.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::error::{FsError, Result};

pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// st_dev of the filesystem: for a block-device filesystem, the
    /// device's major:minor.
    pub major: u32,
    pub minor: u32,
    /// The directory of the filesystem that is the root of this mount
    /// (`/` for a whole filesystem, a subdirectory for a bind mount of it).
    pub root: PathBuf,
    /// Where it is mounted, relative to this process's root.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw`/`ro`, `nosuid`, `noatime`, ...).
    pub mount_options: Vec<String>,
    /// Optional fields such as `shared:1`, `master:2`.
    pub optional_fields: Vec<String>,
    pub fs_type: String,
    /// The mount source (`/dev/loop0`, `tmpfs`, ...), unescaped.
    pub source: String,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

impl MountInfo {
    /// Read-only at the mount (per-mount `ro`) or at the superblock.
    pub fn is_read_only(&self) -> bool {
        self.has_mount_option("ro") || self.super_options.iter().any(|o| o == "ro")
    }

    pub fn has_mount_option(&self, option: &str) -> bool {
        self.mount_options.iter().any(|o| o == option)
    }

    /// `source (fstype, options)` for messages.
    pub fn describe(&self) -> String {
        let root = if self.root == Path::new("/") { String::new() } else { format!(" [{}]", self.root.display()) };
        format!(
            "{}{root} ({} {}:{}, {})",
            if self.source.is_empty() { "none" } else { &self.source },
            self.fs_type,
            self.major,
            self.minor,
            self.mount_options.join(",")
        )
    }
}

/// Reads and parses /proc/self/mountinfo.
pub fn read_mountinfo() -> Result<Vec<MountInfo>> {
    let bytes = std::fs::read(MOUNTINFO).map_err(|e| FsError::sys("reading", MOUNTINFO, e))?;
    parse_mountinfo(&bytes)
}

/// Parses the text of a mountinfo file (empty lines are skipped).
pub fn parse_mountinfo(text: &[u8]) -> Result<Vec<MountInfo>> {
    text.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| parse_line(line).map_err(|why| FsError::MountInfo { line: i + 1, why, text: String::from_utf8_lossy(line).into_owned() }))
        .collect()
}

fn parse_line(line: &[u8]) -> std::result::Result<MountInfo, &'static str> {
    let mut fields = line.split(|b| *b == b' ');
    let mut next = |what: &'static str| fields.next().ok_or(what);
    let mount_id = number(next("no mount id")?).ok_or("bad mount id")?;
    let parent_id = number(next("no parent id")?).ok_or("bad parent id")?;
    let dev = next("no major:minor")?;
    let colon = dev.iter().position(|b| *b == b':').ok_or("major:minor has no colon")?;
    let major = number(&dev[..colon]).ok_or("bad major")?;
    let minor = number(&dev[colon + 1..]).ok_or("bad minor")?;
    let root = path(next("no root")?);
    let mount_point = path(next("no mount point")?);
    let mount_options = options(next("no mount options")?);
    let mut optional_fields = Vec::new();
    loop {
        let field = next("no '-' separator")?;
        if field == b"-" {
            break;
        }
        optional_fields.push(String::from_utf8_lossy(field).into_owned());
    }
    let fs_type = text(next("no filesystem type")?);
    let source = text(next("no mount source")?);
    // Super options are always present on current kernels; tolerate their
    // absence rather than failing every later lookup.
    let super_options = fields.next().map(options).unwrap_or_default();
    if fields.next().is_some() {
        return Err("too many fields");
    }
    if root.as_os_str().is_empty() || mount_point.as_os_str().is_empty() {
        return Err("empty path");
    }
    Ok(MountInfo { mount_id, parent_id, major, minor, root, mount_point, mount_options, optional_fields, fs_type, source, super_options })
}

fn number(field: &[u8]) -> Option<u32> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape_mountinfo(field)))
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape_mountinfo(field)).into_owned()
}

fn options(field: &[u8]) -> Vec<String> {
    let field = text(field);
    field.split(',').filter(|o| !o.is_empty()).map(str::to_string).collect()
}

/// Undoes the kernel's `\ooo` octal escaping (`\040` space, `\011` tab,
/// `\012` newline, `\134` backslash). A backslash not followed by three
/// octal digits (value ≤ 0o377) is kept as it is.
pub fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let digits = &field[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// The topmost mount at `mount_point` (the last line naming it: later
/// mounts stack on earlier ones), given an already canonical path.
pub(crate) fn top_mount_at<'a>(mounts: &'a [MountInfo], mount_point: &Path) -> Option<&'a MountInfo> {
    mounts.iter().rev().find(|m| m.mount_point == mount_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw,errors=remount-ro
36 26 7:0 / /var/lib/kubelet/plugins/kubernetes.io/csi/thin/abc/globalmount rw,noatime shared:40 - ext4 /dev/loop0 rw
37 26 7:0 / /var/lib/kubelet/pods/p\\0401/volumes/kubernetes.io~csi/pvc-1/mount ro,relatime shared:40 master:3 - ext4 /dev/loop0 rw
38 26 0:5 /loop1 /tmp/block\\011tab\\012nl\\134bs ro,nosuid - devtmpfs udev rw,size=10240k,mode=755
";

    #[test]
    fn parses_fields_and_optional_fields() {
        let mounts = parse_mountinfo(SAMPLE.as_bytes()).unwrap();
        assert_eq!(mounts.len(), 5);
        let root = &mounts[1];
        assert_eq!((root.mount_id, root.parent_id, root.major, root.minor), (26, 1, 253, 1));
        assert_eq!(root.root, Path::new("/"));
        assert_eq!(root.mount_point, Path::new("/"));
        assert_eq!(root.fs_type, "ext4");
        assert_eq!(root.source, "/dev/mapper/root");
        assert_eq!(root.mount_options, ["rw", "relatime"]);
        assert_eq!(root.optional_fields, ["shared:1"]);
        assert_eq!(root.super_options, ["rw", "errors=remount-ro"]);
        assert!(!root.is_read_only());

        let publish = &mounts[3];
        assert_eq!(publish.optional_fields, ["shared:40", "master:3"]);
        assert!(publish.is_read_only());
        assert_eq!(publish.mount_point, Path::new("/var/lib/kubelet/pods/p 1/volumes/kubernetes.io~csi/pvc-1/mount"));
    }

    #[test]
    fn unescapes_space_tab_newline_backslash() {
        let mounts = parse_mountinfo(SAMPLE.as_bytes()).unwrap();
        let block = &mounts[4];
        assert_eq!(block.mount_point, Path::new("/tmp/block\ttab\nnl\\bs"));
        assert_eq!(block.root, Path::new("/loop1"));
        assert_eq!(block.super_options, ["rw", "size=10240k", "mode=755"]);
        assert_eq!(unescape_mountinfo(br"a\040b"), b"a b");
        assert_eq!(unescape_mountinfo(br"\134\134"), b"\\\\");
        // Not an escape: kept literally.
        assert_eq!(unescape_mountinfo(br"a\04"), br"a\04");
        assert_eq!(unescape_mountinfo(br"a\x41"), br"a\x41");
        assert_eq!(unescape_mountinfo(br"\"), br"\");
        assert_eq!(unescape_mountinfo(br"\777"), br"\777");
        // Non-UTF-8 bytes survive in paths.
        assert_eq!(unescape_mountinfo(br"\377"), [0xff]);
    }

    #[test]
    fn empty_source_field_is_kept() {
        // An empty source gives two consecutive spaces.
        let m = parse_mountinfo(b"40 26 0:50 / /mnt rw - tmpfs  rw\n").unwrap();
        assert_eq!(m[0].source, "");
        assert_eq!(m[0].fs_type, "tmpfs");
        assert_eq!(m[0].super_options, ["rw"]);
    }

    #[test]
    fn topmost_mount_wins() {
        let text = "1 0 7:0 / /a rw - ext4 /dev/loop0 rw\n2 1 7:1 / /a rw - xfs /dev/loop1 rw\n";
        let mounts = parse_mountinfo(text.as_bytes()).unwrap();
        assert_eq!(top_mount_at(&mounts, Path::new("/a")).unwrap().source, "/dev/loop1");
        assert!(top_mount_at(&mounts, Path::new("/b")).is_none());
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        let err = parse_mountinfo(b"22 1 0:21 / /proc rw shared:12 - proc proc rw\n22 1 021 / /x rw - proc proc rw\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot parse line 2 of /proc/self/mountinfo (major:minor has no colon): \"22 1 021 / /x rw - proc proc rw\""
        );
        let err = parse_mountinfo(b"22 1 0:21 / /proc rw shared:12 proc proc rw\n").unwrap_err();
        assert!(err.to_string().contains("no '-' separator"), "{err}");
        let err = parse_mountinfo(b"x 1 0:21 / /proc rw - proc proc rw\n").unwrap_err();
        assert!(err.to_string().contains("bad mount id"), "{err}");
        assert!(parse_mountinfo(b"").unwrap().is_empty());
    }

    #[test]
    fn reads_this_process_mountinfo() {
        let mounts = read_mountinfo().unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
