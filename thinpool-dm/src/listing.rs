//! Which thin ids a live pool's metadata holds, read through a metadata
//! snapshot with `thin_dump` (thin-provisioning-tools refuses to read live
//! metadata otherwise). The kernel itself has no "list" message.

use std::collections::BTreeSet;
use std::process::Command;

use thinpool::{Kernel, KernelError, PoolMessage, ThinId};

use crate::DmPool;

impl DmPool {
    /// Every thin id in the pool's metadata (active or not). Needs
    /// `thin_dump` on PATH; holds a metadata snapshot only while it runs.
    pub fn list_thin_ids(&mut self) -> Result<BTreeSet<ThinId>, KernelError> {
        let context = format!("list the thin devices of pool {}", self.name());
        let fail = |detail: String| KernelError::Other { context: context.clone(), detail };
        let meta = self.metadata_area().expose(self.name()).map_err(|e| fail(e.to_string()))?;
        self.message(&PoolMessage::ReserveMetadataSnap)?;
        let out = Command::new("thin_dump").arg("--skip-mappings").arg("--metadata-snap").arg(meta.path()).output();
        let released = self.message(&PoolMessage::ReleaseMetadataSnap);
        let out = out.map_err(|e| fail(format!("running thin_dump: {e}")))?;
        released?;
        if !out.status.success() {
            return Err(fail(format!("thin_dump: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        parse_dump(&String::from_utf8_lossy(&out.stdout)).map_err(fail)
    }
}

/// The `dev_id`s of a `thin_dump` XML document.
fn parse_dump(xml: &str) -> Result<BTreeSet<ThinId>, String> {
    xml.split("<device ")
        .skip(1)
        .map(|device| {
            let value = device.split("dev_id=\"").nth(1).and_then(|rest| rest.split('"').next()).ok_or("a <device> without dev_id")?;
            value.parse::<ThinId>().map_err(|e| format!("dev_id {value:?}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_thin_dump_output() {
        let xml = r#"<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="16">
  <device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">
  </device>
  <device dev_id="16777215" mapped_blocks="2" transaction="1" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
  </device>
</superblock>"#;
        let ids: Vec<u32> = parse_dump(xml).unwrap().into_iter().map(ThinId::get).collect();
        assert_eq!(ids, vec![1, 16_777_215]);
        assert!(parse_dump("<superblock></superblock>").unwrap().is_empty());
        assert!(parse_dump(r#"<device dev_id="16777216">"#).is_err());
    }
}
