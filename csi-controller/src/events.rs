//! Kubernetes Events from the controller, on the objects users look at:
//! one recorder per process ([`recorder`]) and one way to publish
//! ([`publish`]: a failure is logged, never fails the caller).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tracing::warn;

/// The controller's event recorder; `instance` is this replica's identity.
pub fn recorder(client: Client, instance: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: "thin-csi-controller".into(),
            instance: Some(instance.to_string()),
        },
    )
}

/// Publishes one Event about `object` (the note is cut to 1000 characters).
pub async fn publish(
    recorder: &Recorder,
    object: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, object).await {
        warn!(error = %e, reason, "could not publish event");
    }
}
