//! Kubernetes API errors as gRPC codes, the same in both binaries (each
//! binary's `status.rs` maps its own errors and calls this for the API's).

use tonic::Code;

/// 404 NOT_FOUND, 409 (a lost resourceVersion race) ABORTED so the CO
/// retries, overload and server errors UNAVAILABLE, other statuses
/// INTERNAL; no answer at all (connect, TLS, timeout) UNAVAILABLE.
pub fn api_error_code(e: &kube::Error) -> Code {
    match e {
        kube::Error::Api(s) => match s.code {
            404 => Code::NotFound,
            409 => Code::Aborted,
            429 | 500..=599 => Code::Unavailable,
            _ => Code::Internal,
        },
        _ => Code::Unavailable,
    }
}
