//! The plugin as a whole, as both of its binaries describe it: one driver
//! name and one set of plugin capabilities. GetPluginCapabilities answers
//! for the plugin, not the process, so csi-node reports CONTROLLER_SERVICE
//! too (csi-sanity and the sidecars read it from whichever endpoint they
//! talk to); what each process serves is in its own *GetCapabilities.

use csi_proto::v1::plugin_capability::{self, service, volume_expansion};
use csi_proto::v1::PluginCapability;

pub const DRIVER_NAME: &str = "thin.csi.io";

/// CONTROLLER_SERVICE, VOLUME_ACCESSIBILITY_CONSTRAINTS (volumes are
/// node-local), online volume expansion.
pub fn capabilities() -> Vec<PluginCapability> {
    let service = |t: service::Type| PluginCapability {
        r#type: Some(plugin_capability::Type::Service(plugin_capability::Service { r#type: t as i32 })),
    };
    vec![
        service(service::Type::ControllerService),
        service(service::Type::VolumeAccessibilityConstraints),
        PluginCapability {
            r#type: Some(plugin_capability::Type::VolumeExpansion(plugin_capability::VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        },
    ]
}
