//! Both servers at once.

use crate::{MongoServer, NatsServer};

/// A [`NatsServer`] and a [`MongoServer`], started in parallel; both are killed on drop.
#[derive(Debug)]
pub struct Servers {
    /// The JetStream server.
    pub nats: NatsServer,
    /// The MongoDB-wire server (or `EXO_TEST_MONGO_URI`).
    pub mongo: MongoServer,
}

impl Servers {
    /// Starts both servers concurrently with default options.
    ///
    /// # Errors
    ///
    /// When either fails to start (the other one is then stopped again).
    pub async fn start() -> anyhow::Result<Servers> {
        let (nats, mongo) = tokio::try_join!(NatsServer::start(), MongoServer::start())?;
        Ok(Servers { nats, mongo })
    }
}
