//! Unite groups inside an effects transaction: deltas applied, closing
//! groups fire (their unite state built from the target and its ancestors)
//! or fail, and new unite states counted in their own ancestors' groups.

use std::collections::{BTreeMap, HashMap};

use exo_store::mongodb::bson::{doc, oid::ObjectId};
use exo_store::mongodb::options::ReturnDocument;
use exo_store::mongodb::{ClientSession, error::Error as MongoError};
use exo_store::{StateDoc, Store, docs::unite_group_id};
use exo_types::graph::UnitesStrategy;

use super::{Effects, GroupDelta, load_store_values};
use crate::graphs::LoadedGraph;
use crate::inputs;

/// Applies each unite group's delta; a group that closes gets its unite
/// state built (returned, to be inserted) or is marked failed. Returns the
/// unite states and how many groups closed without firing.
pub(super) async fn count_unite_groups(
    s: &mut ClientSession,
    store: &Store,
    fx: &Effects,
    graph: &LoadedGraph,
    now_ms: i64,
) -> Result<(Vec<StateDoc>, i64), MongoError> {
    let groups = store.unite_groups();
    let mut unite_states = Vec::new();
    let mut failed_unites = 0i64;
    for (gid, g) in &fx.groups {
        let after = groups
            .find_one_and_update(
                doc! {"_id": gid},
                doc! {
                    "$inc": {"open": g.open, "failed": g.failed},
                    "$setOnInsert": {"run_id": &fx.run_id, "target_id": g.target, "unite_identifier": &g.unite,
                                     "closed": false, "fired": false},
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *s)
            .await?;
        let Some(after) = after else { continue };
        if after.open != 0 || after.closed {
            continue;
        }
        let strategy = graph
            .graph
            .node(&g.unite)
            .and_then(|n| n.unites.as_ref())
            .map(|u| u.strategy)
            .unwrap_or_default();
        let outcome = if after.failed == 0 || strategy == UnitesStrategy::AllDone {
            build_unite(s, store, graph, g, now_ms).await?
        } else {
            Err(format!(
                "{} descendant(s) of the unite target failed",
                after.failed
            ))
        };
        let (fired, error) = match outcome {
            Ok(st) => {
                unite_states.push(st);
                (true, None)
            }
            Err(e) => {
                failed_unites += 1;
                (false, Some(e))
            }
        };
        groups
            .update_one(
                doc! {"_id": gid},
                doc! {"$set": {"closed": true, "fired": fired, "error": error}},
            )
            .session(&mut *s)
            .await?;
    }
    Ok((unite_states, failed_unites))
}

/// New unite states are new pending members of their ancestors' groups.
pub(super) async fn open_ancestor_groups(
    s: &mut ClientSession,
    store: &Store,
    fx: &Effects,
    unite_states: &[StateDoc],
) -> Result<(), MongoError> {
    let mut extra: BTreeMap<String, (ObjectId, String)> = BTreeMap::new();
    let mut extra_open: HashMap<String, i64> = HashMap::new();
    for st in unite_states {
        for (ident, id) in st.parent_pairs() {
            for unite in fx.unites_targeting(&ident) {
                let gid = unite_group_id(&id, &unite);
                extra.insert(gid.clone(), (id, unite.clone()));
                *extra_open.entry(gid).or_default() += 1;
            }
        }
    }
    for (gid, (target, unite)) in extra {
        let open = extra_open.get(&gid).copied().unwrap_or_default();
        store
            .unite_groups()
            .update_one(
                doc! {"_id": &gid},
                doc! {
                    "$inc": {"open": open},
                    "$setOnInsert": {"run_id": &fx.run_id, "target_id": target, "unite_identifier": unite,
                                     "failed": 0i64, "closed": false, "fired": false},
                },
            )
            .upsert(true)
            .session(&mut *s)
            .await?;
    }
    Ok(())
}

/// Builds the unite state of group `g`, reading the target and its ancestors
/// inside the transaction. `Ok(Err(reason))` when its inputs cannot be built.
async fn build_unite(
    s: &mut ClientSession,
    store: &Store,
    graph: &LoadedGraph,
    g: &GroupDelta,
    now_ms: i64,
) -> Result<Result<StateDoc, String>, MongoError> {
    let Some(tmpl) = graph.graph.node(&g.unite) else {
        return Ok(Err(format!("Unite node {} is not in the graph", g.unite)));
    };
    let states = store.states();
    let Some(target) = states
        .find_one(doc! {"_id": g.target})
        .session(&mut *s)
        .await?
    else {
        return Ok(Err(format!("Unite target state {} not found", g.target)));
    };
    let wanted = inputs::referenced_ancestors([tmpl], &target.identifier);
    let ids: Vec<ObjectId> = wanted
        .iter()
        .filter_map(|i| target.parents.get(i).and_then(|b| b.as_object_id()))
        .collect();
    let mut ancestors = HashMap::new();
    if !ids.is_empty() {
        let mut cur = states
            .find(doc! {"_id": {"$in": ids}})
            .session(&mut *s)
            .await?;
        while let Some(d) = cur.next(&mut *s).await.transpose()? {
            ancestors.insert(d.id, d);
        }
    }
    let store_values = load_store_values(store, Some(s), &target).await?;
    let src = inputs::Sources {
        graph,
        store: &store_values,
        ancestors: &ancestors,
    };
    let inputs_doc = match inputs::resolve_inputs(&src, tmpl, &target) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let id = exo_store::oid(exo_types::ids::unite_state_id(
        &target.id.to_hex(),
        &tmpl.identifier,
    ));
    Ok(Ok(inputs::new_state(
        id,
        tmpl,
        &inputs::Placement::of(&target),
        inputs_doc,
        inputs::lineage(&target),
        true,
        now_ms,
    )))
}
