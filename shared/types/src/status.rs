//! State and run status vocabularies, with the groupings used for run counters.

use serde::{Deserialize, Serialize};

/// Status of one state attempt (spec §4). The string forms are the wire and
/// database representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StateStatus {
    /// Inserted, waiting to be dispatched (possibly delayed by `enqueue_after`).
    Created,
    /// Dispatched to a runtime queue (or handed out over HTTP).
    Queued,
    /// Outputs recorded, successors not yet created.
    Executed,
    /// Failed and retries exhausted.
    Errored,
    /// Successor creation failed deterministically.
    NextCreatedError,
    /// Done; successors created.
    Success,
    /// Ended by a prune signal.
    Pruned,
    /// Failed and replaced by a retry attempt.
    RetryCreated,
    /// Stopped because its run was cancelled (ours; Exosphere's dashboard
    /// type already lists it).
    Cancelled,
}

impl StateStatus {
    /// Exosphere's eight statuses, in spec order (the keys of a run graph's
    /// `execution_summary`).
    pub const ALL: [StateStatus; 8] = [
        Self::Created,
        Self::Queued,
        Self::Executed,
        Self::Errored,
        Self::NextCreatedError,
        Self::Success,
        Self::Pruned,
        Self::RetryCreated,
    ];

    /// The database and wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Queued => "QUEUED",
            Self::Executed => "EXECUTED",
            Self::Errored => "ERRORED",
            Self::NextCreatedError => "NEXT_CREATED_ERROR",
            Self::Success => "SUCCESS",
            Self::Pruned => "PRUNED",
            Self::RetryCreated => "RETRY_CREATED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parses the database and wire string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain([Self::Cancelled])
            .find(|st| st.as_str() == s)
    }

    /// The run-counter group this status belongs to (spec §14.1).
    pub fn group(self) -> CounterGroup {
        match self {
            Self::Created | Self::Queued | Self::Executed => CounterGroup::Pending,
            Self::Errored | Self::NextCreatedError => CounterGroup::Errored,
            Self::Success | Self::Pruned => CounterGroup::Success,
            Self::RetryCreated => CounterGroup::Retried,
            Self::Cancelled => CounterGroup::Cancelled,
        }
    }

    /// True while the state still has work ahead of it.
    pub fn is_pending(self) -> bool {
        self.group() == CounterGroup::Pending
    }

    /// True when the state ended without success: it counts as a failure for
    /// an `ALL_SUCCESS` unite group.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Self::Errored | Self::NextCreatedError | Self::Pruned | Self::Cancelled
        )
    }
}

impl std::fmt::Display for StateStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The four counter groups of a run (spec §14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CounterGroup {
    /// CREATED, QUEUED, EXECUTED.
    Pending,
    /// SUCCESS, PRUNED.
    Success,
    /// ERRORED, NEXT_CREATED_ERROR.
    Errored,
    /// RETRY_CREATED.
    Retried,
    /// CANCELLED (ours).
    Cancelled,
}

/// Status of a whole run, as listed by the runs endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    /// Some state is still pending.
    Pending,
    /// Every state ended and nothing failed.
    Success,
    /// Every state ended and something failed.
    Failed,
    /// The run was cancelled (ours).
    Cancelled,
}

impl RunStatus {
    /// The database and wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Success => "SUCCESS",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// Status of a CRON occurrence (`DatabaseTriggers.trigger_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TriggerStatus {
    /// Scheduled, not yet due or not yet claimed.
    Pending,
    /// Claimed by a `trigger` replica that is firing it.
    Triggering,
    /// Fired: its run was started.
    Triggered,
    /// Fired, but the run could not be started (the reason is recorded).
    Failed,
    /// Missed while no `trigger` replica ran, and its schedule's catch-up
    /// policy starts nothing for it (ours; the reason is recorded).
    Skipped,
}

impl TriggerStatus {
    /// The database string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Triggering => "TRIGGERING",
            Self::Triggered => "TRIGGERED",
            Self::Failed => "FAILED",
            Self::Skipped => "SKIPPED",
        }
    }
}

/// Validation status of a graph template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidationStatus {
    /// Valid: runs can be triggered.
    Valid,
    /// Invalid: the errors are listed with it.
    Invalid,
    /// Not validated yet (upstream validates in the background).
    Pending,
}

impl ValidationStatus {
    /// The database and wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::Invalid => "INVALID",
            Self::Pending => "PENDING",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_round_trip() {
        for s in StateStatus::ALL {
            assert_eq!(StateStatus::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(StateStatus::parse("DONE"), None);
        assert_eq!(
            StateStatus::parse("CANCELLED"),
            Some(StateStatus::Cancelled)
        );
        assert_eq!(StateStatus::Cancelled.group(), CounterGroup::Cancelled);
        assert!(!StateStatus::Cancelled.is_pending());
    }

    #[test]
    fn groups_match_the_spec() {
        use StateStatus::*;
        let pending: Vec<_> = StateStatus::ALL
            .into_iter()
            .filter(|s| s.is_pending())
            .collect();
        assert_eq!(pending, vec![Created, Queued, Executed]);
        assert_eq!(Pruned.group(), CounterGroup::Success);
        assert_eq!(NextCreatedError.group(), CounterGroup::Errored);
        assert_eq!(RetryCreated.group(), CounterGroup::Retried);
        assert!(Pruned.is_failure() && !RetryCreated.is_failure() && !Success.is_failure());
    }
}
