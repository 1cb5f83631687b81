//! Admission rules more than one resource applies.

/// A Go-style duration such as `30s`, `5m` or `1h30m`; what `pause.duration`,
/// `analysis.interval` and friends accept. At most six digits per unit, so
/// that every admitted duration fits the controller's arithmetic.
pub const DURATION_RULE: &str = "self.matches('^([0-9]{1,6}(\\\\.[0-9]{1,3})?(ms|s|m|h))+$')";
/// What a bad duration is told.
pub const DURATION_MESSAGE: &str =
    "must be a duration such as 500ms, 30s, 5m or 1h30m, with at most 6 digits per unit";
