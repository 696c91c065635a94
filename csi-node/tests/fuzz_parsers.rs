//! Bad input, fuzzed (issue 10, item 6): what the node parses from
//! requests and from the system before it mounts anything: CSI mount flags,
//! /proc/self/mountinfo, blkid's output, a device's first bytes. Nothing
//! panics, and what a request asks for can never turn a mount into another
//! kind of mount (bind, remount, move, propagation). `FUZZ_CASES` sets the
//! cases per property (default 256; the long run is `e2e/run fuzz`).

use csi_node::fs::{classify_head, parse_blkid_export, parse_mountinfo, MountOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn runner() -> TestRunner {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

/// mount(2) flags that change the kind of mount rather than its options.
const KIND_FLAGS: libc::c_ulong = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_MOVE | libc::MS_SHARED | libc::MS_PRIVATE | libc::MS_SLAVE | libc::MS_UNBINDABLE | libc::MS_REC;

/// Words the filesystem must never be handed: they change the kind of mount.
const KIND_WORDS: &[&str] = &["bind", "rbind", "remount", "move", "shared", "rshared", "private", "rprivate", "slave", "rslave", "unbindable", "runbindable", "loop"];

fn option() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("bind".to_string()),
        Just("rbind".to_string()),
        Just("remount".to_string()),
        Just("make-shared".to_string()),
        Just("rshared".to_string()),
        Just("ro".to_string()),
        Just("rw".to_string()),
        Just("nosuid".to_string()),
        Just("defaults".to_string()),
        Just("x-systemd.automount".to_string()),
        Just("errors=remount-ro".to_string()),
        Just("discard".to_string()),
        Just(" bind ".to_string()),
        "[a-z_=-]{0,16}",
        ".{0,24}",
    ];
    prop::collection::vec(word, 1..4).prop_map(|w| w.join(","))
}

#[test]
fn mount_flags_never_change_the_kind_of_mount() {
    runner()
        .run(&(any::<bool>(), prop::collection::vec(option(), 0..5)), |(read_only, options)| {
            if let Ok(parsed) = MountOptions::parse(read_only, &options) {
                prop_assert_eq!(parsed.flags() & KIND_FLAGS, 0, "{:?} gave flags {:#x}", options, parsed.flags());
                if read_only {
                    prop_assert!(parsed.read_only(), "{:?} with the read-only bit mounts read-write", options);
                }
                for word in parsed.data().split(',').filter(|w| !w.is_empty()) {
                    let key = word.split('=').next().unwrap_or(word).trim();
                    prop_assert!(!KIND_WORDS.contains(&key) && !key.starts_with("make-"), "{:?} passed {:?} to the filesystem", options, word);
                    prop_assert!(!word.contains('\0'));
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn any_mountinfo_parses_or_is_refused_without_panic() {
    let line = prop_oneof![
        ".{0,160}",
        "[0-9]{1,3} [0-9]{1,3} [0-9]{1,3}:[0-9]{1,3} /[a-z\\\\0-9]{0,10} /[a-z/\\\\0-9]{0,20} [a-z,]{0,20}( [a-z:0-9]{1,10}){0,3} - [a-z0-9]{1,6} /dev/[a-z0-9]{1,6} [a-z,=]{0,20}",
    ];
    runner()
        .run(&prop::collection::vec(line, 0..6), |lines| {
            let _ = parse_mountinfo(lines.join("\n").as_bytes());
            Ok(())
        })
        .unwrap();
}

#[test]
fn any_blkid_output_and_device_head_is_read_without_panic() {
    runner()
        .run(&(".{0,200}", prop::collection::vec(any::<u8>(), 0..4096)), |(text, head)| {
            let _ = parse_blkid_export(&text);
            let _ = classify_head(&head);
            Ok(())
        })
        .unwrap();
}
