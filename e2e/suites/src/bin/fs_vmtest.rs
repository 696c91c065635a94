//! The csi-node filesystem layer on a real kernel: run as root inside the
//! test VM by e2e/guest/fs.sh, on loop devices over tmpfs files.
//!
//!     fs_vmtest --work DIR --ext4 DEV:FILE --xfs DEV:FILE --foreign DEV --raw DEV --busy DEV:FILE --spare DEV
//!
//! Every device must start out zeroed (fresh sparse files); FILE is the
//! loop device's backing file, grown to test online expansion; the spare
//! loop device is left free (it gets a copy of the xfs volume). Prints
//! `PASS <name>` / `FAIL <name>: <why>` lines and exits 1 if anything
//! failed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use csi_node::fs::{
    bind_mount, bind_mount_block, block_device_size, expand, format_if_empty, is_mount_point, mount, mounts_of,
    probe_filesystem, read_mountinfo, stats, unmount, FormatOutcome, FsError, FsType, MountInfo, MountOutcome,
    UnmountOutcome,
};

use report::{ensure, Check, Report};

fn e(err: FsError) -> String {
    format!("unexpected error: {err}")
}

struct Args {
    work: PathBuf,
    ext4: (PathBuf, PathBuf),
    xfs: (PathBuf, PathBuf),
    foreign: PathBuf,
    raw: PathBuf,
    busy: (PathBuf, PathBuf),
    spare: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut argv = std::env::args().skip(1);
    let (mut work, mut ext4, mut xfs, mut foreign, mut raw, mut busy, mut spare) = (None, None, None, None, None, None, None);
    let pair = |v: String| -> Result<(PathBuf, PathBuf), String> {
        let (d, f) = v.split_once(':').ok_or(format!("{v}: expected DEV:FILE"))?;
        Ok((d.into(), f.into()))
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--work" => work = Some(PathBuf::from(value)),
            "--ext4" => ext4 = Some(pair(value)?),
            "--xfs" => xfs = Some(pair(value)?),
            "--foreign" => foreign = Some(PathBuf::from(value)),
            "--raw" => raw = Some(PathBuf::from(value)),
            "--busy" => busy = Some(pair(value)?),
            "--spare" => spare = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Args {
        work: work.ok_or("--work missing")?,
        ext4: ext4.ok_or("--ext4 missing")?,
        xfs: xfs.ok_or("--xfs missing")?,
        foreign: foreign.ok_or("--foreign missing")?,
        raw: raw.ok_or("--raw missing")?,
        busy: busy.ok_or("--busy missing")?,
        spare: spare.ok_or("--spare missing")?,
    })
}

/// Reads `len` bytes at `offset` with O_DIRECT (what is on the device,
/// not the page cache); offset and len multiples of 4096.
fn read_direct(device: &Path, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .map_err(|err| format!("opening {} O_DIRECT: {err}", device.display()))?;
    let mut storage = vec![0u8; len + 4096];
    let start = (4096 - storage.as_ptr() as usize % 4096) % 4096;
    let buf = &mut storage[start..start + len];
    file.read_exact_at(buf, offset).map_err(|err| format!("reading {}: {err}", device.display()))?;
    Ok(buf.to_vec())
}

fn head(device: &Path) -> Result<Vec<u8>, String> {
    read_direct(device, 0, 1 << 20)
}

fn mount_at<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    let path = std::fs::canonicalize(path).ok()?;
    mounts.iter().rev().find(|m| m.mount_point == path)
}

fn grow(device: &Path, file: &Path, bytes: u64) -> Check {
    let f = OpenOptions::new().write(true).open(file).map_err(|err| format!("opening {}: {err}", file.display()))?;
    f.set_len(bytes).map_err(|err| format!("growing {}: {err}", file.display()))?;
    let out = Command::new("losetup").arg("-c").arg(device).output().map_err(|err| format!("losetup -c: {err}"))?;
    ensure!(out.status.success(), "losetup -c {}: {}", device.display(), String::from_utf8_lossy(&out.stderr));
    let size = block_device_size(device).map_err(e)?;
    ensure!(size == bytes, "{} is {size} bytes after losetup -c, expected {bytes}", device.display());
    Ok(())
}

/// Copies a sparse file's data ranges only (SEEK_DATA/SEEK_HOLE): a
/// plain copy would fill tmpfs with the holes' zeros.
fn sparse_copy(from: &Path, to: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let src = File::open(from).map_err(|err| format!("opening {}: {err}", from.display()))?;
    let dst = File::create(to).map_err(|err| format!("creating {}: {err}", to.display()))?;
    let len = src.metadata().map_err(|err| err.to_string())?.len();
    dst.set_len(len).map_err(|err| err.to_string())?;
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while (pos as u64) < len {
        // SAFETY: lseek on an open descriptor; no memory is passed.
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after pos
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        let mut at = data;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at as u64).map_err(|err| err.to_string())?;
            dst.write_all_at(&buf[..n], at as u64).map_err(|err| err.to_string())?;
            at += n as i64;
        }
        pos = end;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

const MIB: u64 = 1 << 20;

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(why) => {
            eprintln!("fs_vmtest: {why}");
            return ExitCode::from(2);
        }
    };
    let mut t = Report::start();
    let (ext4_dev, ext4_file) = (&args.ext4.0, &args.ext4.1);
    let (xfs_dev, xfs_file) = (&args.xfs.0, &args.xfs.1);
    let w = |p: &str| args.work.join(p);
    let (stage4, stagex) = (w("stage/ext4"), w("stage/xfs"));
    let (pub4_rw, pub4_ro, pubx_ro) = (w("pods/a/ext4-rw"), w("pods/b/ext4-ro"), w("pods/c/xfs-ro"));
    let block_target = w("pods/d/volumeDevices/raw");

    // ---- probe and format
    t.case("probe of a zeroed device is none", || {
        for dev in [ext4_dev, xfs_dev, &args.raw] {
            let found = probe_filesystem(dev).map_err(e)?;
            ensure!(found.is_none(), "{} probed as {found:?}", dev.display());
        }
        Ok(())
    });
    t.case("block_device_size is the loop's backing file size", || {
        let size = block_device_size(ext4_dev).map_err(e)?;
        let len = std::fs::metadata(ext4_file).map_err(|err| err.to_string())?.len();
        ensure!(size == len && size > 0, "BLKGETSIZE64 says {size}, the file is {len}");
        Ok(())
    });
    t.case("format ext4 on an empty device", || {
        let got = format_if_empty(ext4_dev, &FsType::Ext4, &[]).map_err(e)?;
        ensure!(got == FormatOutcome::Formatted, "got {got:?}");
        let found = probe_filesystem(ext4_dev).map_err(e)?;
        ensure!(found == Some(FsType::Ext4), "probe says {found:?} after mkfs");
        Ok(())
    });
    t.case("format ext4 again is AlreadyFormatted", || {
        let got = format_if_empty(ext4_dev, &FsType::Ext4, &[]).map_err(e)?;
        ensure!(got == FormatOutcome::AlreadyFormatted(FsType::Ext4), "got {got:?}");
        Ok(())
    });
    t.case("format xfs over ext4 is refused and the device untouched", || {
        let before = head(ext4_dev)?;
        let err = format_if_empty(ext4_dev, &FsType::Xfs, &[]).err().ok_or("formatted over ext4")?;
        ensure!(
            matches!(&err, FsError::FormatMismatch { found: FsType::Ext4, wanted: FsType::Xfs, .. }),
            "wrong error: {err}"
        );
        ensure!(err.to_string().contains(&ext4_dev.display().to_string()), "message does not name the device: {err}");
        ensure!(head(ext4_dev)? == before, "the first MiB changed");
        println!("  message: {err}");
        Ok(())
    });
    t.case("format xfs on an empty device", || {
        let got = format_if_empty(xfs_dev, &FsType::Xfs, &[]).map_err(e)?;
        ensure!(got == FormatOutcome::Formatted, "got {got:?}");
        let found = probe_filesystem(xfs_dev).map_err(e)?;
        ensure!(found == Some(FsType::Xfs), "probe says {found:?}");
        let again = format_if_empty(xfs_dev, &FsType::Xfs, &[]).map_err(e)?;
        ensure!(again == FormatOutcome::AlreadyFormatted(FsType::Xfs), "second call: {again:?}");
        let err = format_if_empty(xfs_dev, &FsType::Ext4, &[]).err().ok_or("formatted ext4 over xfs")?;
        ensure!(matches!(err, FsError::FormatMismatch { found: FsType::Xfs, .. }), "wrong error: {err}");
        Ok(())
    });
    t.case("unrecognised data is never formatted", || {
        let f = OpenOptions::new().write(true).open(&args.foreign).map_err(|err| err.to_string())?;
        f.write_all_at(b"precious data", 123_456).map_err(|err| err.to_string())?;
        f.sync_all().map_err(|err| err.to_string())?;
        let found = probe_filesystem(&args.foreign).map_err(e)?;
        ensure!(
            matches!(&found, Some(FsType::Foreign(what)) if what.contains("offset 123456")),
            "probe says {found:?}"
        );
        let err = format_if_empty(&args.foreign, &FsType::Ext4, &[]).err().ok_or("formatted over data")?;
        ensure!(matches!(err, FsError::FormatMismatch { .. }), "wrong error: {err}");
        println!("  message: {err}");
        let back = read_direct(&args.foreign, 122_880, 4096)?;
        ensure!(&back[576..576 + 13] == b"precious data", "the data changed");
        Ok(())
    });
    t.case("a signature only blkid knows (erofs) is named and refused", || {
        let f = OpenOptions::new().write(true).open(&args.foreign).map_err(|err| err.to_string())?;
        f.write_all_at(&[0u8; 4096], 122_880).map_err(|err| err.to_string())?;
        f.write_all_at(&[0xe2, 0xe1, 0xf5, 0xe0], 1024).map_err(|err| err.to_string())?;
        f.write_all_at(&[12], 1036).map_err(|err| err.to_string())?;
        f.sync_all().map_err(|err| err.to_string())?;
        let found = probe_filesystem(&args.foreign).map_err(e)?;
        ensure!(found == Some(FsType::Foreign("erofs".into())), "probe says {found:?}");
        let err = format_if_empty(&args.foreign, &FsType::Xfs, &[]).err().ok_or("formatted over erofs")?;
        ensure!(err.to_string().contains("erofs"), "message does not name it: {err}");
        Ok(())
    });
    t.case("swap and LVM labels are refused", || {
        let out = Command::new("mkswap").arg(&args.foreign).output().map_err(|err| format!("mkswap: {err}"))?;
        ensure!(out.status.success(), "mkswap failed: {}", String::from_utf8_lossy(&out.stderr));
        let found = probe_filesystem(&args.foreign).map_err(e)?;
        ensure!(found == Some(FsType::Foreign("swap".into())), "swap probed as {found:?}");
        let f = OpenOptions::new().write(true).open(&args.foreign).map_err(|err| err.to_string())?;
        f.write_all_at(&[0u8; 8192], 0).map_err(|err| err.to_string())?;
        f.write_all_at(b"LABELONE", 512).map_err(|err| err.to_string())?;
        f.sync_all().map_err(|err| err.to_string())?;
        let found = probe_filesystem(&args.foreign).map_err(e)?;
        ensure!(found == Some(FsType::Foreign("LVM2_member".into())), "LVM label probed as {found:?}");
        ensure!(format_if_empty(&args.foreign, &FsType::Ext4, &[]).is_err(), "formatted over an LVM label");
        Ok(())
    });

    // ---- mount and bind
    t.case("mount ext4 (creates the target), then again is AlreadyMounted", || {
        let got = mount(ext4_dev, &stage4, &FsType::Ext4, false, &[]).map_err(e)?;
        ensure!(got == MountOutcome::Mounted, "first: {got:?}");
        ensure!(is_mount_point(&stage4).map_err(e)?, "not a mount point after mount");
        let got = mount(ext4_dev, &stage4, &FsType::Ext4, false, &[]).map_err(e)?;
        ensure!(got == MountOutcome::AlreadyMounted, "second: {got:?}");
        write_file(&stage4.join("hello"), b"staged", true).map_err(|err| format!("writing: {err}"))?;
        Ok(())
    });
    t.case("mount of the same device read-only over a read-write mount is refused", || {
        let err = mount(ext4_dev, &stage4, &FsType::Ext4, true, &[]).err().ok_or("accepted")?;
        ensure!(matches!(err, FsError::IncompatibleMount { .. }), "wrong error: {err}");
        println!("  message: {err}");
        Ok(())
    });
    t.case("mount of another device where one is mounted is refused", || {
        let err = mount(xfs_dev, &stage4, &FsType::Xfs, false, &[]).err().ok_or("accepted")?;
        ensure!(matches!(err, FsError::MountConflict { .. }), "wrong error: {err}");
        println!("  message: {err}");
        Ok(())
    });
    t.case("mount xfs with options nosuid,noatime and a filesystem option", || {
        let opts = vec!["nosuid,noatime".to_string(), "nouuid".to_string()];
        let got = mount(xfs_dev, &stagex, &FsType::Xfs, false, &opts).map_err(e)?;
        ensure!(got == MountOutcome::Mounted, "got {got:?}");
        let mounts = read_mountinfo().map_err(e)?;
        let m = mount_at(&mounts, &stagex).ok_or("not in mountinfo")?;
        ensure!(m.fs_type == "xfs", "fs type {}", m.fs_type);
        ensure!(m.has_mount_option("nosuid") && m.has_mount_option("noatime"), "options {:?}", m.mount_options);
        ensure!(m.super_options.iter().any(|o| o == "nouuid"), "super options {:?}", m.super_options);
        let again = mount(xfs_dev, &stagex, &FsType::Xfs, false, &opts).map_err(e)?;
        ensure!(again == MountOutcome::AlreadyMounted, "second: {again:?}");
        let err = mount(xfs_dev, &stagex, &FsType::Xfs, false, &["noexec".into()]).err().ok_or("noexec accepted")?;
        ensure!(matches!(err, FsError::IncompatibleMount { .. }), "wrong error: {err}");
        Ok(())
    });
    t.case("bind mount read-write: writes show in the staged volume", || {
        let got = bind_mount(&stage4, &pub4_rw, false).map_err(e)?;
        ensure!(got == MountOutcome::Mounted, "got {got:?}");
        write_file(&pub4_rw.join("via-bind"), b"published", true).map_err(|err| format!("writing: {err}"))?;
        let back = std::fs::read(stage4.join("via-bind")).map_err(|err| err.to_string())?;
        ensure!(back == b"published", "read back {back:?}");
        let again = bind_mount(&stage4, &pub4_rw, false).map_err(e)?;
        ensure!(again == MountOutcome::AlreadyMounted, "second: {again:?}");
        Ok(())
    });
    t.case("read-only bind mount: a write fails with EROFS, the stage stays writable", || {
        let got = bind_mount(&stage4, &pub4_ro, true).map_err(e)?;
        ensure!(got == MountOutcome::Mounted, "got {got:?}");
        let back = std::fs::read(pub4_ro.join("hello")).map_err(|err| format!("reading: {err}"))?;
        ensure!(back == b"staged", "read {back:?}");
        match File::create(pub4_ro.join("nope")) {
            Ok(_) => return Err("created a file on the read-only bind".into()),
            Err(err) => ensure!(err.raw_os_error() == Some(libc::EROFS), "write failed with {err}, not EROFS"),
        }
        match OpenOptions::new().append(true).open(pub4_ro.join("hello")) {
            Ok(_) => return Err("opened a file for writing on the read-only bind".into()),
            Err(err) => ensure!(err.raw_os_error() == Some(libc::EROFS), "append failed with {err}, not EROFS"),
        }
        write_file(&stage4.join("still-rw"), b"x", false).map_err(|err| format!("the stage became read-only: {err}"))?;
        let again = bind_mount(&stage4, &pub4_ro, true).map_err(e)?;
        ensure!(again == MountOutcome::AlreadyMounted, "second: {again:?}");
        let err = bind_mount(&stage4, &pub4_ro, false).err().ok_or("read-write accepted over read-only")?;
        ensure!(matches!(err, FsError::IncompatibleMount { .. }), "wrong error: {err}");
        let err = bind_mount(&stage4, &pub4_rw, true).err().ok_or("read-only accepted over read-write")?;
        ensure!(matches!(err, FsError::IncompatibleMount { .. }), "wrong error: {err}");
        let err = bind_mount(&stagex, &pub4_ro, true).err().ok_or("another source accepted")?;
        ensure!(matches!(err, FsError::MountConflict { .. }), "wrong error: {err}");
        Ok(())
    });
    t.case("read-only bind keeps the stage's nosuid,noatime", || {
        bind_mount(&stagex, &pubx_ro, true).map_err(e)?;
        let mounts = read_mountinfo().map_err(e)?;
        let m = mount_at(&mounts, &pubx_ro).ok_or("not in mountinfo")?;
        for o in ["ro", "nosuid", "noatime"] {
            ensure!(m.has_mount_option(o), "{o} missing: {:?}", m.mount_options);
        }
        ensure!(File::create(pubx_ro.join("nope")).err().and_then(|e| e.raw_os_error()) == Some(libc::EROFS), "xfs bind writable");
        Ok(())
    });
    t.case("an xfs clone (same UUID) mounts beside its mounted origin", || {
        write_file(&stagex.join("before-clone"), b"origin data", true).map_err(|err| err.to_string())?;
        // SAFETY: sync(2) takes no arguments.
        unsafe { libc::sync() };
        let copy = w("xfs-clone.img");
        sparse_copy(xfs_file, &copy)?;
        let out = Command::new("losetup").arg(&args.spare).arg(&copy).output().map_err(|err| err.to_string())?;
        ensure!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let found = probe_filesystem(&args.spare).map_err(e)?;
        ensure!(found == Some(FsType::Xfs), "the clone probes as {found:?}");
        let target = w("stage/xfs-clone");
        let got = mount(&args.spare, &target, &FsType::Xfs, false, &[]).map_err(e)?;
        ensure!(got == MountOutcome::Mounted, "got {got:?}");
        // mount() adds nouuid to every xfs mount: without it the kernel
        // refuses a second filesystem with a UUID already mounted.
        let mounts = read_mountinfo().map_err(e)?;
        let m = mount_at(&mounts, &target).ok_or("the clone is not in mountinfo")?;
        ensure!(m.super_options.iter().any(|o| o == "nouuid"), "no nouuid: {:?}", m.super_options);
        let back = std::fs::read(target.join("before-clone")).map_err(|err| format!("reading in the clone: {err}"))?;
        ensure!(back == b"origin data", "the clone holds {back:?}");
        ensure!(unmount(&target).map_err(e)? == UnmountOutcome::Unmounted, "unmounting the clone");
        let out = Command::new("losetup").arg("-d").arg(&args.spare).output().map_err(|err| err.to_string())?;
        ensure!(out.status.success(), "losetup -d: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(&copy).map_err(|err| err.to_string())?;
        Ok(())
    });
    t.case("mounts_of lists the stage and its binds", || {
        let mounts = mounts_of(ext4_dev).map_err(e)?;
        let points: Vec<PathBuf> = mounts.iter().map(|m| m.mount_point.clone()).collect();
        for p in [&stage4, &pub4_rw, &pub4_ro] {
            let c = std::fs::canonicalize(p).map_err(|err| err.to_string())?;
            ensure!(points.contains(&c), "{} missing from {points:?}", c.display());
        }
        ensure!(points.len() == 3, "expected 3 mounts, got {points:?}");
        Ok(())
    });

    // ---- raw block
    t.case("raw block: bind the device node onto a new file and write through it", || {
        let got = bind_mount_block(&args.raw, &block_target).map_err(e)?;
        ensure!(got == MountOutcome::Mounted, "got {got:?}");
        let meta = std::fs::metadata(&block_target).map_err(|err| err.to_string())?;
        let raw_meta = std::fs::metadata(&args.raw).map_err(|err| err.to_string())?;
        ensure!(meta.file_type().is_block_device() && meta.rdev() == raw_meta.rdev(), "the target is not the device");
        let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        let f = OpenOptions::new().write(true).open(&block_target).map_err(|err| format!("opening the target: {err}"))?;
        f.write_all_at(&pattern, 3 * MIB).map_err(|err| format!("writing: {err}"))?;
        f.sync_all().map_err(|err| format!("fsync: {err}"))?;
        drop(f); // an open file on the bind keeps it busy
        let back = read_direct(&args.raw, 3 * MIB, pattern.len())?;
        ensure!(back == pattern, "the device does not hold what was written through the bind");
        let size = block_device_size(&block_target).map_err(e)?;
        ensure!(size == block_device_size(&args.raw).map_err(e)?, "size through the bind differs");
        let again = bind_mount_block(&args.raw, &block_target).map_err(e)?;
        ensure!(again == MountOutcome::AlreadyMounted, "second: {again:?}");
        let err = bind_mount_block(ext4_dev, &block_target).err().ok_or("another device accepted")?;
        ensure!(matches!(err, FsError::MountConflict { .. }), "wrong error: {err}");
        let got = unmount(&block_target).map_err(e)?;
        ensure!(got == UnmountOutcome::Unmounted, "unmount: {got:?}");
        let meta = std::fs::metadata(&block_target).map_err(|err| err.to_string())?;
        ensure!(meta.is_file(), "the target file is gone or not a file after unmount");
        ensure!(!is_mount_point(&block_target).map_err(e)?, "still a mount point");
        Ok(())
    });

    // ---- unmount
    t.case("unmount is idempotent and leaves the target", || {
        ensure!(unmount(&pub4_rw).map_err(e)? == UnmountOutcome::Unmounted, "first unmount");
        ensure!(unmount(&pub4_rw).map_err(e)? == UnmountOutcome::NotMounted, "second unmount");
        ensure!(pub4_rw.is_dir(), "target removed");
        ensure!(unmount(&w("never/created")).map_err(e)? == UnmountOutcome::NotMounted, "missing path");
        Ok(())
    });
    t.case("unmount of a busy mount is a Busy error naming it", || {
        let (dev, _) = &args.busy;
        format_if_empty(dev, &FsType::Ext4, &[]).map_err(e)?;
        let target = w("busy");
        mount(dev, &target, &FsType::Ext4, false, &[]).map_err(e)?;
        let held = File::create(target.join("open")).map_err(|err| err.to_string())?;
        let err = unmount(&target).err().ok_or("unmounted with a file open")?;
        ensure!(matches!(err, FsError::Busy { .. }), "wrong error: {err}");
        ensure!(err.to_string().contains(&target.display().to_string()), "message: {err}");
        println!("  message: {err}");
        drop(held);
        ensure!(unmount(&target).map_err(e)? == UnmountOutcome::Unmounted, "unmount after close");
        Ok(())
    });
    t.case("stacked mounts are all unmounted", || {
        let (dev, _) = &args.busy;
        let target = w("stacked");
        mount(dev, &target, &FsType::Ext4, false, &[]).map_err(e)?;
        // A second, different mount stacked on top (bind_mount itself
        // refuses to stack, so mount(8) does it).
        let out = Command::new("mount").arg("--bind").arg(&stage4).arg(&target).output().map_err(|err| err.to_string())?;
        ensure!(out.status.success(), "mount --bind: {}", String::from_utf8_lossy(&out.stderr));
        let at = |mounts: &[MountInfo]| {
            let c = std::fs::canonicalize(&target).unwrap_or_default();
            mounts.iter().filter(|m| m.mount_point == c).count()
        };
        ensure!(at(&read_mountinfo().map_err(e)?) == 2, "expected two stacked mounts");
        ensure!(unmount(&target).map_err(e)? == UnmountOutcome::Unmounted, "unmount");
        ensure!(at(&read_mountinfo().map_err(e)?) == 0, "mounts left");
        Ok(())
    });

    // ---- stats and expansion
    t.case("stats are sane and follow writes", || {
        let before = stats(&stage4).map_err(e)?;
        ensure!(before.bytes_total > 400 * MIB && before.bytes_total <= 512 * MIB, "total {}", before.bytes_total);
        ensure!(before.bytes_used + before.bytes_available <= before.bytes_total, "{before:?}");
        ensure!(before.inodes_used + before.inodes_free == before.inodes_total && before.inodes_used > 0, "{before:?}");
        let data = vec![0x5au8; 16 << 20];
        write_file(&stage4.join("big"), &data, true).map_err(|err| err.to_string())?;
        for i in 0..10 {
            write_file(&stage4.join(format!("small{i}")), b"x", false).map_err(|err| err.to_string())?;
        }
        let after = stats(&stage4).map_err(e)?;
        ensure!(after.bytes_used >= before.bytes_used + 16 * MIB, "used {} -> {}", before.bytes_used, after.bytes_used);
        ensure!(after.inodes_used >= before.inodes_used + 11, "inodes {} -> {}", before.inodes_used, after.inodes_used);
        let via_bind = stats(&pub4_ro).map_err(e)?;
        ensure!(via_bind.bytes_total == after.bytes_total, "the bind reports another size");
        let x = stats(&stagex).map_err(e)?;
        ensure!(x.bytes_total > 400 * MIB && x.bytes_used < x.bytes_total && x.inodes_total > 0, "xfs {x:?}");
        println!("  ext4: {after:?}");
        println!("  xfs:  {x:?}");
        Ok(())
    });
    t.case("online expand of ext4 (resize2fs) after the device grew", || {
        let before = stats(&stage4).map_err(e)?.bytes_total;
        grow(ext4_dev, ext4_file, 1024 * MIB)?;
        expand(ext4_dev, &stage4, &FsType::Ext4).map_err(e)?;
        let after = stats(&stage4).map_err(e)?.bytes_total;
        ensure!(after > before + 400 * MIB, "size {before} -> {after}");
        let via_bind = stats(&pub4_ro).map_err(e)?.bytes_total;
        ensure!(via_bind == after, "the bind sees {via_bind}, the stage {after}");
        let mut s = String::new();
        File::open(stage4.join("hello")).and_then(|mut f| f.read_to_string(&mut s)).map_err(|err| err.to_string())?;
        ensure!(s == "staged", "data changed: {s:?}");
        expand(ext4_dev, &stage4, &FsType::Ext4).map_err(|err| format!("expanding again: {err}"))?;
        println!("  ext4 {before} -> {after} bytes");
        Ok(())
    });
    t.case("online expand of xfs (xfs_growfs) after the device grew", || {
        let before = stats(&stagex).map_err(e)?.bytes_total;
        grow(xfs_dev, xfs_file, 1024 * MIB)?;
        expand(xfs_dev, &stagex, &FsType::Xfs).map_err(e)?;
        let after = stats(&stagex).map_err(e)?.bytes_total;
        ensure!(after > before + 400 * MIB, "size {before} -> {after}");
        expand(xfs_dev, &stagex, &FsType::Xfs).map_err(|err| format!("expanding again: {err}"))?;
        println!("  xfs {before} -> {after} bytes");
        Ok(())
    });
    t.case("expand refuses a path that is not the device's mount", || {
        let err = expand(xfs_dev, &stage4, &FsType::Xfs).err().ok_or("accepted")?;
        ensure!(matches!(err, FsError::NotMounted { .. }), "wrong error: {err}");
        println!("  message: {err}");
        Ok(())
    });

    // ---- teardown
    t.case("unmount everything: no mounts of the devices left", || {
        for p in [&pub4_ro, &pubx_ro, &stage4, &stagex] {
            ensure!(unmount(p).map_err(e)? == UnmountOutcome::Unmounted, "{} was not mounted", p.display());
        }
        for dev in [ext4_dev, xfs_dev] {
            let left = mounts_of(dev).map_err(e)?;
            ensure!(left.is_empty(), "{} still mounted: {left:?}", dev.display());
            // A clean filesystem after all that: the kernel let go.
        }
        let out = Command::new("e2fsck").args(["-f", "-n"]).arg(ext4_dev).output().map_err(|err| format!("e2fsck: {err}"))?;
        ensure!(out.status.success(), "e2fsck -fn: {}", String::from_utf8_lossy(&out.stdout));
        let found = probe_filesystem(ext4_dev).map_err(e)?;
        ensure!(found == Some(FsType::Ext4), "probe after all: {found:?}");
        Ok(())
    });

    t.finish("fs_vmtest")
}
