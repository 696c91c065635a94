//! Registering the thin-csi CRDs: server-side apply, then wait (by watch)
//! until the apiserver reports each one Established.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::Client;

/// The field manager our server-side applies use.
pub const FIELD_MANAGER: &str = "thin-csi-controller";

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("applying CRD {name}: {source}")]
    Apply { name: String, source: kube::Error },
    #[error("waiting for CRD {name} to be Established: {source}")]
    Wait { name: String, source: kube::runtime::wait::Error },
    #[error("CRD {name} not Established after {after:?}")]
    Timeout { name: String, after: Duration },
}

/// Applies every thin-csi CRD and waits until all are Established; returns their names.
pub async fn apply(client: Client, timeout: Duration) -> Result<Vec<String>, CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in thin_csi_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd)).await.map_err(|source| CrdError::Apply { name: name.clone(), source })?;
        names.push(name);
    }
    for name in &names {
        let established = await_condition(api.clone(), name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => return Err(CrdError::Wait { name: name.clone(), source }),
            Err(_) => return Err(CrdError::Timeout { name: name.clone(), after: timeout }),
        }
    }
    // Established comes a moment before the storage behind a new CRD serves:
    // until then the apiserver answers 429 "storage is (re)initializing".
    let client = api.into_client();
    let deadline = tokio::time::Instant::now() + timeout;
    wait_serving(Api::<thin_csi_api::ThinPool>::all(client.clone()), deadline, timeout).await?;
    wait_serving(Api::<thin_csi_api::ThinVolume>::all(client.clone()), deadline, timeout).await?;
    wait_serving(Api::<thin_csi_api::ThinSnapshot>::all(client), deadline, timeout).await?;
    Ok(names)
}

async fn wait_serving<K>(api: Api<K>, deadline: tokio::time::Instant, timeout: Duration) -> Result<(), CrdError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    loop {
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Err(kube::Error::Api(e)) if e.code == 429 => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(CrdError::Timeout { name: format!("{} (storage)", api.resource_url()), after: timeout });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Served, or an error the caller meets on first use.
            _ => return Ok(()),
        }
    }
}
