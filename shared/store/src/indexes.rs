//! Index bootstrap. Names match Exosphere's so an existing database keeps its
//! indexes; creation is idempotent, and an index that exists under one of
//! our names is never altered.

use mongodb::IndexModel;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;

use crate::{Error, Store};

/// A non-unique index named `name`.
fn index(name: &str, keys: Document) -> IndexModel {
    let opts = IndexOptions::builder().name(name.to_string()).build();
    IndexModel::builder().keys(keys).options(opts).build()
}

/// A unique index named `name`.
fn unique(name: &str, keys: Document) -> IndexModel {
    with(index(name, keys), |o| o.unique = Some(true))
}

/// `model`, holding only the documents that match `filter`.
fn partial(model: IndexModel, filter: Document) -> IndexModel {
    with(model, |o| o.partial_filter_expression = Some(filter))
}

/// A TTL index: a document goes when the time in `keys` has passed.
fn ttl(name: &str, keys: Document) -> IndexModel {
    with(index(name, keys), |o| {
        o.expire_after = Some(std::time::Duration::ZERO)
    })
}

fn with(mut model: IndexModel, set: impl FnOnce(&mut IndexOptions)) -> IndexModel {
    set(model.options.get_or_insert_with(Default::default));
    model
}

/// Name of the states index by run, identifier and id (the pages of one
/// graph node's states).
pub const RUN_IDENTIFIER_INDEX: &str = "run_identifier_id_index";

/// The indexes of the states collection.
fn state_indexes() -> Vec<IndexModel> {
    let created = exo_types::status::StateStatus::Created.as_str();
    vec![
        partial(
            unique(
                "uniq_state_fingerprint_unites",
                doc! {"state_fingerprint": 1},
            ),
            doc! {"does_unites": true},
        ),
        index(
            "enqueue_query",
            doc! {"enqueue_after": 1, "status": 1, "namespace_name": 1, "node_name": 1},
        ),
        unique(
            "uniq_fanout_retry",
            doc! {"node_name": 1, "namespace_name": 1, "graph_name": 1, "identifier": 1,
            "run_id": 1, "retry_count": 1, "fanout_id": 1},
        ),
        index("run_id_status_index", doc! {"run_id": 1, "status": 1}),
        // A graph node's states in a run, in id order: the pages of
        // `GET …/run/{id}/nodes/{identifier}/states` (ours).
        index(
            RUN_IDENTIFIER_INDEX,
            doc! {"run_id": 1, "identifier": 1, "_id": 1},
        ),
        // Bound the scheduler's sweeps. Partial, so a state costs an
        // index entry only while it is CREATED (resp. parked): the
        // reconciler reads CREATED states due long ago, the due sweep
        // reads parked states that fell due.
        partial(
            index("created_due_index", doc! {"enqueue_after": 1}),
            doc! {"status": created},
        ),
        partial(
            index("parked_due_index", doc! {"enqueue_after": 1}),
            doc! {"parked": true},
        ),
        partial(
            index("lease_until_index", doc! {"lease_until": 1}),
            doc! {"lease_until": {"$exists": true}},
        ),
    ]
}

/// Creates every index this implementation relies on.
pub async fn ensure(store: &Store) -> Result<(), Error> {
    let name_namespace = || unique("unique_name_namespace", doc! {"name": 1, "namespace": 1});
    let sets: Vec<(&str, Vec<IndexModel>)> = vec![
        (crate::STATES, state_indexes()),
        (crate::GRAPH_TEMPLATES, vec![name_namespace()]),
        (crate::REGISTERED_NODES, vec![name_namespace()]),
        (
            crate::STORE,
            vec![unique(
                "uniq_run_id_namespace_graph_name_key",
                doc! {"run_id": 1, "namespace": 1, "graph_name": 1, "key": 1},
            )],
        ),
        (
            crate::RUNS,
            vec![
                unique("run_id_index", doc! {"run_id": 1}),
                index(
                    "namespace_created_at_index",
                    doc! {"namespace_name": 1, "created_at": -1},
                ),
            ],
        ),
        (
            crate::TRIGGERS,
            vec![
                index("idx_trigger_time", doc! {"trigger_time": -1}),
                ttl("ttl_expires_at_exo", doc! {"expires_at": 1}),
                unique(
                    "uniq_graph_type_expr_time",
                    doc! {"type": 1, "expression": 1, "graph_name": 1, "namespace": 1, "trigger_time": 1},
                ),
            ],
        ),
        (
            crate::GRAPH_VERSIONS,
            vec![index(
                "namespace_name_index",
                doc! {"namespace": 1, "name": 1},
            )],
        ),
        (
            crate::UNITE_GROUPS,
            vec![index("run_id_index", doc! {"run_id": 1})],
        ),
        (crate::OUTBOX, vec![index("at_index", doc! {"at_ms": 1})]),
        (
            crate::WEBHOOK_DELIVERIES,
            vec![
                index(
                    "graph_created_index",
                    doc! {"namespace": 1, "graph_name": 1, "created_at_ms": -1},
                ),
                ttl("ttl_expires_at", doc! {"expires_at": 1}),
            ],
        ),
    ];
    for (coll, models) in sets {
        create_missing(store, coll, models).await?;
    }
    Ok(())
}

/// Creates the indexes of `models` that `coll` does not have by name.
async fn create_missing(store: &Store, coll: &str, models: Vec<IndexModel>) -> Result<(), Error> {
    let c = store.db().collection::<Document>(coll);
    // An index that exists under the same name (Exosphere's, or ours from
    // an earlier start) is kept as it is: servers compare specifications
    // differently (secantusd-rs by field order), so re-creating an equal
    // index can fail with `IndexKeySpecsConflict`.
    let existing = match c.list_index_names().await {
        Ok(names) => names,
        Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 26) => {
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    let missing: Vec<IndexModel> = models
        .into_iter()
        .filter(|m| {
            let name = m.options.as_ref().and_then(|o| o.name.as_deref());
            !name.is_some_and(|n| existing.iter().any(|e| e == n))
        })
        .collect();
    if !missing.is_empty() {
        c.create_indexes(missing).await?;
    }
    Ok(())
}
