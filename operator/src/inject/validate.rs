//! The validating admission webhook (`POST /validate`, served beside
//! `/inject`): what the CRD's schema cannot say of an AnalysisTemplate or
//! ClusterAnalysisTemplate — a condition that does not parse, a Job spec
//! that is not one — refused with the field named, as `kubectl sluice
//! lint` says it offline. The controller checks the same again when it
//! runs a template, so a template admitted while the operator was down
//! still never runs unchecked.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

use crate::metrics::Metrics;
use crate::rollout::lint::template_findings;

/// Answers one AdmissionReview of an analysis template; refusals are
/// counted in `sluice_http_refused_total{service="validate"}`.
pub async fn review(
    State(metrics): State<Arc<Metrics>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    let resp = AdmissionResponse::from(&req);
    let Some(object) = req.object.as_ref() else {
        return Json(resp.into_review());
    };
    let found = match serde_json::to_value(object) {
        Ok(value) => template_findings(&value),
        Err(e) => return Json(AdmissionResponse::invalid(e.to_string()).into_review()),
    };
    if found.is_empty() {
        return Json(resp.into_review());
    }
    metrics.count_refusal("validate", "invalid_template");
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    Json(resp.deny(text.join("; ")).into_review())
}
