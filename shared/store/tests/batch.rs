//! `exo_store::batch` against a real MongoDB-wire server: multi-statement
//! updates inside a transaction, and look-ups that share one query.

use std::sync::Arc;

use exo_store::Store;
use exo_store::batch::{Loader, Statement, update_statements};
use exo_store::mongodb::bson::{Document, doc, oid::ObjectId};
use exo_test_support::{MongoServer, unique_db_name};

async fn store() -> anyhow::Result<(MongoServer, Store)> {
    let server = MongoServer::start().await?;
    let store = Store::connect(&server.uri(), &unique_db_name("batch"), "test").await?;
    Ok((server, store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_run_in_one_transaction_and_report_the_sum_of_matches() -> anyhow::Result<()> {
    let (_server, store) = store().await?;
    let coll = store.db().collection::<Document>("things");
    let ids: Vec<ObjectId> = (0..4).map(|_| ObjectId::new()).collect();
    coll.insert_many(ids.iter().map(|id| doc! {"_id": id, "s": "Q"}))
        .await?;
    let to_s = doc! {"$set": {"s": "S"}};
    let filters = [
        doc! {"_id": ids[0], "s": "Q"},
        doc! {"_id": ids[1], "s": "X"}, // matches nothing
        doc! {"_id": {"$in": [ids[2], ids[3]]}, "s": "Q"},
    ];
    let mut session = store.db().client().start_session().await?;
    session.start_transaction().await?;
    let statements: Vec<Statement> = filters
        .iter()
        .enumerate()
        .map(|(i, filter)| Statement {
            filter,
            update: &to_s,
            multi: i == 2,
        })
        .collect();
    let matched = update_statements(store.db(), "things", &mut session, &statements).await?;
    assert_eq!(matched, 3);
    session.abort_transaction().await?;
    assert_eq!(
        coll.count_documents(doc! {"s": "S"}).await?,
        0,
        "nothing is visible after an abort"
    );

    // Committed, and split over several commands when large (each
    // statement here carries ~1 MiB, the limit per command is 8 MiB).
    let many: Vec<ObjectId> = (0..20).map(|_| ObjectId::new()).collect();
    coll.insert_many(many.iter().map(|id| doc! {"_id": id, "s": "Q"}))
        .await?;
    let big = "x".repeat(1 << 20);
    let big_set = doc! {"$set": {"s": "S", "payload": &big}};
    let filters: Vec<Document> = many.iter().map(|id| doc! {"_id": id, "s": "Q"}).collect();
    let statements: Vec<Statement> = filters
        .iter()
        .map(|filter| Statement {
            filter,
            update: &big_set,
            multi: false,
        })
        .collect();
    session.start_transaction().await?;
    let matched = update_statements(store.db(), "things", &mut session, &statements).await?;
    session.commit_transaction().await?;
    assert_eq!(matched, 20);
    assert_eq!(coll.count_documents(doc! {"s": "S"}).await?, 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_look_ups_each_get_their_own_document() -> anyhow::Result<()> {
    let (_server, store) = store().await?;
    let coll = store.db().collection::<Document>("things");
    let ids: Vec<ObjectId> = (0..200).map(|_| ObjectId::new()).collect();
    coll.insert_many(
        ids.iter()
            .enumerate()
            .map(|(i, id)| doc! {"_id": id, "n": i as i64}),
    )
    .await?;
    let loader = Arc::new(Loader::new(store.db().collection::<Thing>("things")));
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let loader = loader.clone();
        let id = *id;
        tasks.push(tokio::spawn(async move { (i, loader.get(id).await) }));
    }
    let missing = loader.get(ObjectId::new()).await?;
    assert!(missing.is_none());
    for t in tasks {
        let (i, got) = t.await?;
        assert_eq!(got?.map(|d| d.n), Some(i as i64));
    }
    assert!(
        loader.queries() < 201,
        "201 concurrent look-ups shared queries: {} queries",
        loader.queries()
    );
    Ok(())
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Thing {
    #[serde(rename = "_id")]
    id: ObjectId,
    n: i64,
}

impl exo_store::batch::HasId for Thing {
    fn id(&self) -> ObjectId {
        self.id
    }
}
