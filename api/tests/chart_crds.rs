//! The chart ships our CRDs (charts/thin-csi/crds/); they must be exactly
//! what the Rust types generate, or the chart installs a schema the
//! binaries do not agree with. Regenerate with
//! `cargo run -q -p thin-csi-api --bin crdgen > charts/thin-csi/crds/thin.csi.io.yaml`
//! (keeping the two comment lines on top).

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/thin-csi/crds/thin.csi.io.yaml");
    let shipped = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let body: String = shipped.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    let generated = thin_csi_api::crds_yaml().expect("CRD YAML");
    assert!(
        body == generated,
        "{path} drifted from the Rust types: regenerate it with `cargo run -q -p thin-csi-api --bin crdgen` (first differing line: {:?})",
        body.lines().zip(generated.lines()).find(|(a, b)| a != b)
    );
}
