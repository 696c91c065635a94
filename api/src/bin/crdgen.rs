//! Prints the thin-csi CRDs as YAML:
//! `cargo run -q -p thin-csi-api --bin crdgen > charts/thin-csi/crds/thin.csi.io.yaml`

fn main() {
    match thin_csi_api::crds_yaml() {
        Ok(yaml) => print!("{yaml}"),
        Err(e) => {
            eprintln!("crdgen: {e}");
            std::process::exit(1);
        }
    }
}
