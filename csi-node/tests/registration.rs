//! The kubelet's side of plugin registration, over the real unix socket:
//! GetInfo names our driver and CSI endpoint, NotifyRegistrationStatus is
//! taken in both outcomes, and the request layer counts the calls.

use std::path::PathBuf;
use std::time::Duration;

use csi_node::registration::{RegistrationService, PLUGIN_TYPE};
use csi_proto::pluginregistration::registration_client::RegistrationClient;
use csi_proto::pluginregistration::{InfoRequest, RegistrationStatus};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Uri};

async fn connect(path: PathBuf) -> RegistrationClient<Channel> {
    for _ in 0..100 {
        let p = path.clone();
        let channel = tonic::transport::Endpoint::from_static("http://[::1]:1")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
            }))
            .await;
        if let Ok(channel) = channel {
            return RegistrationClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no registration server on {}", path.display());
}

#[tokio::test]
async fn the_kubelet_can_register_the_plugin() {
    csi_contract::metrics::init(csi_contract::metrics::Role::Node);
    let dir = std::env::temp_dir().join(format!("csi-node-registration-{}", std::process::id()));
    let socket = dir.join("plugins_registry").join("thin.csi.io-reg.sock");
    let service = RegistrationService::new(std::path::Path::new("/var/lib/kubelet/plugins/thin.csi.io/csi.sock")).unwrap();
    let outcome = service.outcome();
    let ready = csi_contract::endpoint::Endpoint::Unix(socket.clone()).readiness();
    let server = tokio::spawn({
        let socket = socket.clone();
        async move { service.serve(&socket).await }
    });
    let mut client = connect(socket.clone()).await;
    assert!(csi_contract::health::readiness().0, "the socket's readiness condition holds while it serves");
    drop(ready);

    let info = client.get_info(InfoRequest {}).await.expect("GetInfo").into_inner();
    assert_eq!(info.r#type, PLUGIN_TYPE);
    assert_eq!(info.name, "thin.csi.io");
    assert_eq!(info.endpoint, "/var/lib/kubelet/plugins/thin.csi.io/csi.sock");
    assert_eq!(info.supported_versions, vec!["1.0.0".to_string()]);
    assert_eq!(*outcome.lock().unwrap(), None, "nothing reported before the kubelet says so");

    client.notify_registration_status(RegistrationStatus { plugin_registered: true, error: String::new() }).await.expect("Notify ok");
    assert_eq!(*outcome.lock().unwrap(), Some(Ok(())));
    let refused = RegistrationStatus { plugin_registered: false, error: "version 9 not supported".into() };
    client.notify_registration_status(refused).await.expect("Notify refused");
    assert_eq!(*outcome.lock().unwrap(), Some(Err("version 9 not supported".to_string())));

    let text = csi_contract::metrics::encode();
    for want in [
        "thin_csi_grpc_requests_total{method=\"pluginregistration.Registration/GetInfo\",code=\"Ok\"} 1",
        "thin_csi_grpc_requests_total{method=\"pluginregistration.Registration/NotifyRegistrationStatus\",code=\"Ok\"} 2",
        "thin_csi_grpc_request_duration_seconds_count{method=\"pluginregistration.Registration/GetInfo\",code=\"Ok\"} 1",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    server.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_relative_csi_socket_is_refused() {
    let e = RegistrationService::new(std::path::Path::new("csi.sock")).err().unwrap();
    assert!(e.contains("absolute path"), "{e}");
}
