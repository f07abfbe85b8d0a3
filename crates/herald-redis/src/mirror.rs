//! Publishing into seed 000's Redis channels (`notifications:user:{id}`,
//! `notifications:channel:{id}`, `notifications:global`) for an existing notify-wss that
//! still listens to them: the outbox worker's optional second destination.

use std::time::Duration;

use herald_core::{BrokerError, Topic};
use redis::aio::ConnectionManager;

/// How long a mirror command may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A connection that publishes to seed 000's channels.
#[derive(Clone)]
pub struct SeedMirror {
    connection: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for SeedMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedMirror").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl SeedMirror {
    /// Connects to `url`; channels are `{prefix}{topic}` (`notifications:` in seed 000).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, crate::StartError> {
        let (_, connection) = crate::connect_manager(url, TIMEOUT).await?;
        Ok(Self { connection, prefix: prefix.to_owned() })
    }

    /// The channel of `topic`.
    pub fn channel(&self, topic: &Topic) -> String {
        format!("{}{}", self.prefix, topic.as_str())
    }

    /// `PUBLISH {prefix}{topic} payload`.
    pub async fn publish(&self, topic: &Topic, payload: &str) -> Result<(), BrokerError> {
        let mut connection = self.connection.clone();
        let _receivers: i64 = redis::cmd("PUBLISH")
            .arg(self.channel(topic))
            .arg(payload)
            .query_async(&mut connection)
            .await
            .map_err(|error| BrokerError(Box::new(error)))?;
        Ok(())
    }
}
