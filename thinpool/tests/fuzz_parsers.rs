//! Bad input, fuzzed (issue 10, item 6): the kernel's pool status line, our
//! pool header and the ids, as the node reads them. Arbitrary input never
//! panics; what is valid parses to exactly what it says; what is damaged is
//! refused, never read as something else. `FUZZ_CASES` sets the cases per
//! property (default 256; the long run is `e2e/run fuzz`).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use thinpool::layout::{identify, Contents, PoolHeader, HEADER_AREA};
use thinpool::status::{PoolMode, PoolStatus, Usage, WorkingStatus};
use thinpool::{PoolName, Sectors, ThinId, TransactionId};

fn runner() -> TestRunner {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

fn status() -> impl Strategy<Value = WorkingStatus> {
    let usage = (any::<u64>(), any::<u64>()).prop_map(|(used, total)| Usage { used, total });
    let mode = prop_oneof![Just(PoolMode::ReadWrite), Just(PoolMode::ReadOnly), Just(PoolMode::OutOfDataSpace)];
    (any::<u64>(), usage.clone(), usage, prop::option::of(any::<u64>()), mode, any::<bool>(), any::<bool>(), any::<bool>(), prop::option::of(any::<u64>())).prop_map(
        |(t, metadata, data, held_metadata_root, mode, discard_passdown, error_if_no_space, needs_check, metadata_low_watermark)| WorkingStatus {
            transaction_id: TransactionId::new(t),
            metadata,
            data,
            held_metadata_root,
            mode,
            discard_passdown,
            error_if_no_space,
            needs_check,
            metadata_low_watermark,
        },
    )
}

/// The line the kernel prints for `s` (kernel 6.1's field order).
fn line(s: &WorkingStatus) -> Vec<String> {
    let mut f = vec![
        s.transaction_id.get().to_string(),
        format!("{}/{}", s.metadata.used, s.metadata.total),
        format!("{}/{}", s.data.used, s.data.total),
        s.held_metadata_root.map_or("-".into(), |r| r.to_string()),
        match s.mode {
            PoolMode::ReadWrite => "rw",
            PoolMode::ReadOnly => "ro",
            PoolMode::OutOfDataSpace => "out_of_data_space",
        }
        .into(),
        if s.discard_passdown { "discard_passdown" } else { "no_discard_passdown" }.into(),
        if s.error_if_no_space { "error_if_no_space" } else { "queue_if_no_space" }.into(),
        if s.needs_check { "needs_check" } else { "-" }.into(),
    ];
    if let Some(w) = s.metadata_low_watermark {
        f.push(w.to_string());
    }
    f
}

#[test]
fn any_status_line_parses_or_is_refused_without_panic() {
    runner()
        .run(&prop_oneof![".{0,200}", "[0-9 /a-z_-]{0,120}"], |text| {
            let _ = text.parse::<PoolStatus>();
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_kernel_status_line_parses_to_exactly_what_it_says() {
    runner()
        .run(&status(), |s| {
            let parsed = line(&s).join(" ").parse::<PoolStatus>();
            prop_assert_eq!(parsed, Ok(PoolStatus::Working(s)));
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_status_line_with_a_damaged_field_is_refused() {
    let damage = prop_oneof![Just("".to_string()), Just("x".to_string()), Just("-1".to_string()), Just("1/".to_string()), Just("/1".to_string()), Just("18446744073709551616".to_string()), "[A-Z]{1,6}"];
    runner()
        .run(&(status(), 0..8usize, damage), |(mut s, field, junk)| {
            // Without the optional watermark: a removed field leaves 7.
            s.metadata_low_watermark = None;
            let mut fields = line(&s);
            if junk.is_empty() {
                fields.remove(field);
            } else {
                fields[field] = junk.clone();
            }
            let text = fields.join(" ");
            prop_assert!(text.parse::<PoolStatus>().is_err(), "{text:?} parsed");
            Ok(())
        })
        .unwrap();
}

fn header() -> impl Strategy<Value = PoolHeader> {
    let name = "[a-z0-9][a-z0-9-]{0,47}".prop_map(|n| PoolName::new(&n).unwrap());
    let block = (1..=64u64).prop_map(|k| Sectors(128 * k));
    (any::<[u8; 16]>(), name, 1u64 << 15..1u64 << 40, block).prop_filter_map("fits", |(uuid, name, len, block)| PoolHeader::plan(uuid, name, Sectors(len), block).ok())
}

#[test]
fn a_planned_header_reads_back_as_itself_and_any_flip_in_it_is_refused() {
    runner()
        .run(&(header(), 0..4096usize * 8), |(h, bit)| {
            let mut bytes = h.encode();
            prop_assert_eq!(identify(&bytes), Contents::Pool(h.clone()));
            bytes[bit / 8] ^= 1 << (bit % 8);
            match identify(&bytes) {
                Contents::Pool(back) => prop_assert!(back == h && bit / 8 >= 124, "a flip at bit {} read as {:?}", bit, back),
                Contents::Foreign(_) => prop_assert!(bit / 8 < 124, "a flip in the padding (bit {}) refused the header", bit),
                Contents::Zeros => prop_assert!(false, "a header read as zeros"),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_header_with_a_good_checksum_but_an_impossible_layout_is_refused() {
    let field = 0..5usize;
    let value = prop_oneof![Just(0u64), Just(1u64), Just(HEADER_AREA.0 - 1), Just(u64::MAX), Just(u64::MAX / 2), any::<u64>()];
    runner()
        .run(&(header(), field, value), |(h, field, value)| {
            let mut bad = h.clone();
            match field {
                0 => bad.metadata_start = Sectors(value % HEADER_AREA.0),
                1 => bad.metadata_len = Sectors(0),
                2 => bad.data_start = Sectors(value % (h.metadata_start.0 + h.metadata_len.0)),
                3 => bad.data_len = Sectors(h.block_size.0 * 16 - 1 - value % (h.block_size.0 * 16)),
                _ => bad.block_size = Sectors(if value % 128 == 0 { value / 128 * 128 + 64 } else { value % 0x1_0000_0000 }),
            }
            prop_assume!(bad != h);
            let bytes = bad.encode();
            prop_assert!(matches!(identify(&bytes), Contents::Foreign(_)), "{bad:?} accepted");
            Ok(())
        })
        .unwrap();
}

#[test]
fn any_device_head_is_identified_without_panic() {
    let head = prop::collection::vec(any::<u8>(), 0..8192).prop_map(|mut v| {
        // Sometimes our magic, so the decoder is reached too.
        if v.len() > 20 && v[0] % 2 == 0 {
            v[..16].copy_from_slice(b"thin-csi-pool\0\0\x01");
        }
        v
    });
    runner()
        .run(&head, |bytes| {
            let _ = identify(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn ids_parse_to_what_they_say_or_are_refused() {
    runner()
        .run(&prop_oneof![".{0,30}", "[0-9]{1,25}", "-?[0-9]{1,9}"], |text| {
            if let Ok(id) = text.parse::<ThinId>() {
                prop_assert_eq!(id.to_string().parse::<ThinId>(), Ok(id));
                prop_assert!(u64::from(id.get()) < 1 << 24);
            }
            if let Ok(name) = PoolName::new(&text) {
                prop_assert_eq!(name.as_str(), text.as_str());
            }
            Ok(())
        })
        .unwrap();
}
