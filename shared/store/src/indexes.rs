//! Index bootstrap. Names match Exosphere's so an existing database keeps its
//! indexes; creation is idempotent, and an index that exists under one of
//! our names is never altered.

use mongodb::IndexModel;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;

use crate::{Error, Store};

fn index(keys: Document, name: &str, unique: bool, partial: Option<Document>) -> IndexModel {
    let mut opts = IndexOptions::builder().name(name.to_string()).build();
    if unique {
        opts.unique = Some(true);
    }
    opts.partial_filter_expression = partial;
    IndexModel::builder().keys(keys).options(opts).build()
}

fn ttl_index(keys: Document, name: &str) -> IndexModel {
    let opts = IndexOptions::builder()
        .name(name.to_string())
        .expire_after(std::time::Duration::ZERO)
        .build();
    IndexModel::builder().keys(keys).options(opts).build()
}

/// The indexes of the states collection.
fn state_indexes() -> Vec<IndexModel> {
    vec![
        index(
            doc! {"state_fingerprint": 1},
            "uniq_state_fingerprint_unites",
            true,
            Some(doc! {"does_unites": true}),
        ),
        index(
            doc! {"enqueue_after": 1, "status": 1, "namespace_name": 1, "node_name": 1},
            "enqueue_query",
            false,
            None,
        ),
        index(
            doc! {"node_name": 1, "namespace_name": 1, "graph_name": 1, "identifier": 1,
            "run_id": 1, "retry_count": 1, "fanout_id": 1},
            "uniq_fanout_retry",
            true,
            None,
        ),
        index(
            doc! {"run_id": 1, "status": 1},
            "run_id_status_index",
            false,
            None,
        ),
        // Bound the scheduler's sweeps. Partial, so a state costs an
        // index entry only while it is CREATED (resp. parked): the
        // reconciler reads CREATED states due long ago, the due sweep
        // reads parked states that fell due.
        index(
            doc! {"enqueue_after": 1},
            "created_due_index",
            false,
            Some(doc! {"status": exo_types::status::StateStatus::Created.as_str()}),
        ),
        index(
            doc! {"enqueue_after": 1},
            "parked_due_index",
            false,
            Some(doc! {"parked": true}),
        ),
        index(
            doc! {"lease_until": 1},
            "lease_until_index",
            false,
            Some(doc! {"lease_until": {"$exists": true}}),
        ),
    ]
}

/// Creates every index this implementation relies on.
pub async fn ensure(store: &Store) -> Result<(), Error> {
    let sets: Vec<(&str, Vec<IndexModel>)> = vec![
        (crate::STATES, state_indexes()),
        (
            crate::GRAPH_TEMPLATES,
            vec![index(
                doc! {"name": 1, "namespace": 1},
                "unique_name_namespace",
                true,
                None,
            )],
        ),
        (
            crate::REGISTERED_NODES,
            vec![index(
                doc! {"name": 1, "namespace": 1},
                "unique_name_namespace",
                true,
                None,
            )],
        ),
        (
            crate::STORE,
            vec![index(
                doc! {"run_id": 1, "namespace": 1, "graph_name": 1, "key": 1},
                "uniq_run_id_namespace_graph_name_key",
                true,
                None,
            )],
        ),
        (
            crate::RUNS,
            vec![
                index(doc! {"run_id": 1}, "run_id_index", true, None),
                index(
                    doc! {"namespace_name": 1, "created_at": -1},
                    "namespace_created_at_index",
                    false,
                    None,
                ),
            ],
        ),
        (
            crate::TRIGGERS,
            vec![
                index(doc! {"trigger_time": -1}, "idx_trigger_time", false, None),
                ttl_index(doc! {"expires_at": 1}, "ttl_expires_at_exo"),
                index(
                    doc! {"type": 1, "expression": 1, "graph_name": 1, "namespace": 1, "trigger_time": 1},
                    "uniq_graph_type_expr_time",
                    true,
                    None,
                ),
            ],
        ),
        (
            crate::GRAPH_VERSIONS,
            vec![index(
                doc! {"namespace": 1, "name": 1},
                "namespace_name_index",
                false,
                None,
            )],
        ),
        (
            crate::UNITE_GROUPS,
            vec![index(doc! {"run_id": 1}, "run_id_index", false, None)],
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
