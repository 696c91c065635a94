//! Bad input, fuzzed (issue 10, item 6): the device-mapper tables the
//! kernel reports back, which the node parses before it adopts an active
//! device. Any text never panics; every table this crate loads reads back
//! as itself. `FUZZ_CASES` sets the cases per property (default 256; the
//! long run is `e2e/run fuzz`).

use devicemapper::Device;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use thinpool::{Sectors, ThinId};
use thinpool_dm::table::{LinearParams, TableLine, Target, ThinParams, ThinPoolParams};
use thinpool_dm::PoolFeatures;

fn runner() -> TestRunner {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

fn device() -> impl Strategy<Value = Device> {
    (0..4096u32, 0..1_048_576u32).prop_map(|(major, minor)| Device { major, minor })
}

fn target() -> impl Strategy<Value = Target> {
    let other = prop::collection::vec(prop_oneof![Just("ignore_discard".to_string()), Just("no_discard_passdown".to_string()), Just("read_only".to_string())], 0..3);
    prop_oneof![
        (device(), any::<u64>()).prop_map(|(device, offset)| Target::Linear(LinearParams { device, offset: Sectors(offset) })),
        (device(), device(), any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>(), other).prop_map(|(metadata, data, block, low_water_mark, zero, error, other_features)| {
            Target::ThinPool(ThinPoolParams {
                metadata,
                data,
                block_size: Sectors(block),
                low_water_mark,
                features: PoolFeatures { zero_new_blocks: zero, error_if_no_space: error },
                other_features,
            })
        }),
        (device(), 0..(1u64 << 24)).prop_map(|(pool, id)| Target::Thin(ThinParams { pool, id: ThinId::new(id).unwrap() })),
    ]
}

#[test]
fn every_table_we_load_reads_back_as_itself() {
    runner()
        .run(&(any::<u64>(), any::<u64>(), target()), |(start, length, target)| {
            let line = TableLine { start: Sectors(start), length: Sectors(length), target };
            prop_assert_eq!(TableLine::from_dm(&line.to_dm()), Ok(line.clone()));
            // The kernel may add a trailing space.
            let (s, l, kind, params) = line.to_dm();
            prop_assert_eq!(TableLine::from_dm(&(s, l, kind, format!("{params} "))), Ok(line));
            Ok(())
        })
        .unwrap();
}

#[test]
fn any_reported_table_is_parsed_or_refused_without_panic() {
    let kind = prop_oneof![Just("linear".to_string()), Just("thin-pool".to_string()), Just("thin".to_string()), ".{0,12}"];
    let params = prop_oneof![".{0,120}", "[0-9: a-z_]{0,80}", "([0-9]{1,4}:[0-9]{1,7} ){1,3}[0-9]{1,20}( [0-9]{1,3})?( [a-z_]{1,20}){0,4}"];
    runner()
        .run(&(kind, params), |(kind, params)| {
            if let Ok(target) = Target::parse(&kind, &params) {
                // What parses renders to a table that parses the same.
                prop_assert_eq!(Target::parse(target.type_name(), &target.params()), Ok(target));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_thin_with_an_external_origin_or_a_bad_id_is_refused() {
    runner()
        .run(&(device(), prop_oneof![Just(1u64 << 24), Just(u64::MAX), (1u64 << 24)..u64::MAX]), |(pool, id)| {
            let (bad_id, external) = (format!("{pool} {id}"), format!("{pool} 1 {pool}"));
            prop_assert!(Target::parse("thin", &bad_id).is_err(), "{} parsed", bad_id);
            prop_assert!(Target::parse("thin", &external).is_err(), "{} parsed", external);
            Ok(())
        })
        .unwrap();
}
