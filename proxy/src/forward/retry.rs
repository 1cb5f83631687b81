//! Whether a failed attempt is tried again, and where: bounded attempts,
//! a route-wide budget spent only on retries, and another backend draw
//! that avoids a backend left with nothing but the endpoint that failed.

use std::sync::Arc;

use http::Method;

use crate::balance::{Endpoint, Split, usable_besides};
use crate::compiled::{CompiledBackend, RetryPolicy};

/// The retries one request may make.
#[derive(Debug)]
pub struct Retries<'a> {
    policy: Option<&'a RetryPolicy>,
    /// Attempts in all, the first included.
    attempts: u32,
}

impl<'a> Retries<'a> {
    /// The plan for a request under `policy`: only a request that can be
    /// sent again as it was (idempotent, its body complete, not an
    /// upgrade) is retried. Every request earns the budget its share.
    pub fn plan(policy: Option<&'a RetryPolicy>, method: &Method, replayable: bool) -> Self {
        if let Some(p) = policy {
            p.budget.deposit();
        }
        let attempts = match policy {
            Some(p) if replayable && idempotent(method) => p.attempts + 1,
            _ => 1,
        };
        Retries { policy, attempts }
    }

    /// Whether attempt `n` (from 1) is the last one allowed.
    pub fn is_last(&self, n: u32) -> bool {
        n >= self.attempts
    }

    /// Whether attempt `n`, which failed, may be followed by another: a
    /// token is taken from the budget only then, never for an attempt
    /// that did not need one.
    pub fn after_failure(&self, n: u32) -> bool {
        !self.is_last(n) && self.policy.is_some_and(|p| p.budget.withdraw())
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The backend of the next attempt: another draw of the split (it may be
/// the same backend), but not a backend left with nothing but the endpoint
/// that just failed: during a rollout, that is a canary whose pod went
/// away. `first` stands in if the split has no weight left.
pub fn next_backend(
    split: &Split,
    backends: &[Arc<CompiledBackend>],
    failed_backend: usize,
    failed: &Arc<Endpoint>,
    first: usize,
) -> usize {
    let next = split.choose().unwrap_or(first);
    let stranded = next == failed_backend
        && backends
            .get(next)
            .is_some_and(|b| !usable_besides(&b.endpoints, failed));
    if stranded {
        split.choose_except(failed_backend).unwrap_or(next)
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiled::RetryBudget;

    fn policy(attempts: u32, budget: f64) -> RetryPolicy {
        RetryPolicy {
            attempts,
            budget: Arc::new(RetryBudget::new(budget)),
        }
    }

    #[test]
    fn only_a_replayable_idempotent_request_gets_more_than_one_attempt() {
        let p = policy(2, 0.2);
        assert!(!Retries::plan(Some(&p), &Method::GET, true).is_last(1));
        assert!(Retries::plan(Some(&p), &Method::GET, true).is_last(3));
        assert!(Retries::plan(Some(&p), &Method::POST, true).is_last(1));
        assert!(Retries::plan(Some(&p), &Method::GET, false).is_last(1));
        assert!(Retries::plan(None, &Method::GET, true).is_last(1));
    }

    #[test]
    fn the_budget_is_spent_by_retries_and_not_by_attempts_that_succeeded() {
        // No token to start with beyond the budget's few; each request
        // earns a fifth. A thousand requests that never fail spend none.
        let p = policy(1, 0.2);
        for _ in 0..1000 {
            let plan = Retries::plan(Some(&p), &Method::GET, true);
            assert!(!plan.is_last(1));
        }
        // So the next failures are retried, up to what was earned.
        let plan = Retries::plan(Some(&p), &Method::GET, true);
        assert!(plan.after_failure(1));
        assert!(!plan.after_failure(2), "the last attempt has no follower");
    }

    #[test]
    fn an_exhausted_budget_refuses_retries() {
        let p = policy(5, 0.0);
        let plan = Retries::plan(Some(&p), &Method::GET, true);
        let granted = (1..=5).filter(|&n| plan.after_failure(n)).count();
        // The starting tokens, and nothing earned.
        assert_eq!(granted, 3);
    }
}
