//! Filters the services write with, so that a status is always a
//! [`StateStatus`] and never a string typed at the call site.

use exo_types::status::StateStatus;
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};

/// The state `id` while it is in `status`.
pub fn state_in(id: ObjectId, status: StateStatus) -> Document {
    doc! {"_id": id, "status": status.as_str()}
}

/// The state `id` while it is in `status` for dispatch attempt `attempt`:
/// the fence of every transition a result causes (a result of an older
/// attempt, or a second copy of the same result, matches nothing).
pub fn state_at(id: ObjectId, status: StateStatus, attempt: i64) -> Document {
    doc! {"_id": id, "status": status.as_str(), "attempt": attempt_is(attempt)}
}

/// Matches dispatch attempt `attempt`. Attempt 0 also matches a document
/// without the field: a state Exosphere handed out (it has no attempts).
pub fn attempt_is(attempt: i64) -> Bson {
    if attempt == 0 {
        Bson::Document(doc! {"$in": [0i64, Bson::Null]})
    } else {
        Bson::Int64(attempt)
    }
}

/// The states of `ids` that are in `status`.
pub fn states_in(ids: &[ObjectId], status: StateStatus) -> Document {
    doc! {"_id": {"$in": ids}, "status": status.as_str()}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_the_status_string() {
        let id = ObjectId::new();
        assert_eq!(
            state_at(id, StateStatus::Queued, 3),
            doc! {"_id": id, "status": "QUEUED", "attempt": 3i64}
        );
        assert_eq!(
            attempt_is(0),
            Bson::Document(doc! {"$in": [0i64, Bson::Null]})
        );
        assert_eq!(
            state_in(id, StateStatus::Executed).get_str("status").ok(),
            Some("EXECUTED")
        );
        assert_eq!(
            states_in(&[id], StateStatus::Executed),
            doc! {"_id": {"$in": [id]}, "status": "EXECUTED"}
        );
    }
}
