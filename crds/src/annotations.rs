//! Annotations users put on Kubernetes' own objects for Sluice to read:
//! part of the API as much as the custom resources are.

/// On a Service: how long a request to it through a sidecar may take until
/// its response starts, retries included (a Gateway API duration, as an
/// HTTPRoute rule's `timeouts.request`). Only where no HTTPRoute decides.
pub const REQUEST_TIMEOUT: &str = "timeout.sluice.dev/request";

/// On a Service: the same bound for each attempt (as an HTTPRoute rule's
/// `timeouts.backendRequest`).
pub const BACKEND_REQUEST_TIMEOUT: &str = "timeout.sluice.dev/backend-request";
