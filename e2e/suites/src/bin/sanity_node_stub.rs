//! A stand-in CSI Node endpoint for running csi-sanity's *Controller* tests
//! without a node plugin (e2e/suites/controller-smoke.sh). csi-sanity's
//! cleanup after every controller test calls NodeUnpublishVolume and
//! NodeGetCapabilities on its node endpoint before DeleteVolume; controller
//! tests never publish, so this stub answers NotFound (nothing published
//! here) and "no capabilities", and refuses everything else. It is not a
//! node plugin and never used for the Node tests (csi-node serves those in
//! the VM).
//!
//! usage: sanity_node_stub 127.0.0.1:PORT

use csi_proto::v1::node_server::{Node, NodeServer};
use csi_proto::v1::*;
use tonic::{Request, Response, Status};

struct Stub;

fn no<T>(what: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!("{what}: sanity_node_stub is not a node plugin")))
}

#[tonic::async_trait]
impl Node for Stub {
    async fn node_stage_volume(&self, _: Request<NodeStageVolumeRequest>) -> Result<Response<NodeStageVolumeResponse>, Status> {
        no("NodeStageVolume")
    }
    async fn node_unstage_volume(&self, _: Request<NodeUnstageVolumeRequest>) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        no("NodeUnstageVolume")
    }
    async fn node_publish_volume(&self, _: Request<NodePublishVolumeRequest>) -> Result<Response<NodePublishVolumeResponse>, Status> {
        no("NodePublishVolume")
    }
    async fn node_unpublish_volume(&self, r: Request<NodeUnpublishVolumeRequest>) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        Err(Status::not_found(format!("volume {} is not published by this stub", r.get_ref().volume_id)))
    }
    async fn node_get_volume_stats(&self, _: Request<NodeGetVolumeStatsRequest>) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        no("NodeGetVolumeStats")
    }
    async fn node_expand_volume(&self, _: Request<NodeExpandVolumeRequest>) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        no("NodeExpandVolume")
    }
    async fn node_get_capabilities(&self, _: Request<NodeGetCapabilitiesRequest>) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities: Vec::new() }))
    }
    async fn node_get_info(&self, _: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        no("NodeGetInfo")
    }
    async fn node_get_volume_health(&self, _: Request<NodeGetVolumeHealthRequest>) -> Result<Response<NodeGetVolumeHealthResponse>, Status> {
        no("NodeGetVolumeHealth")
    }
    async fn node_get_storage_health(&self, _: Request<NodeGetStorageHealthRequest>) -> Result<Response<NodeGetStorageHealthResponse>, Status> {
        no("NodeGetStorageHealth")
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let addr = std::env::args().nth(1).ok_or("usage: sanity_node_stub 127.0.0.1:PORT")?;
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    tonic::transport::Server::builder().add_service(NodeServer::new(Stub)).serve(addr).await.map_err(|e| e.to_string())
}
