//! An SSE client: reqwest streaming the body, `eventsource-stream` parsing it.

use std::pin::Pin;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};

use crate::within;

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

pub struct SseClient {
    events: EventStream,
}

impl SseClient {
    /// Opens `url`, optionally with `Authorization: Bearer`; `Err(status)` unless 200.
    pub async fn connect(url: &str, bearer: Option<&str>) -> Result<Self, u16> {
        Self::connect_with(url, bearer, &[]).await
    }

    /// Like [`SseClient::connect`], with extra request headers (e.g. `Last-Event-ID`).
    pub async fn connect_with(url: &str, bearer: Option<&str>, headers: &[(&str, &str)]) -> Result<Self, u16> {
        let mut request = reqwest::Client::new().get(url).header("accept", "text/event-stream");
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.map_err(|_| 0u16)?;
        if response.status() != 200 {
            return Err(response.status().as_u16());
        }
        Ok(Self { events: Box::pin(response.bytes_stream().eventsource()) })
    }

    /// The next event (keep-alive comments are not events).
    pub async fn next(&mut self) -> Event {
        within("an SSE event", async {
            match self.events.next().await {
                Some(Ok(event)) => event,
                other => panic!("expected an SSE event, got {other:?}"),
            }
        })
        .await
    }

    /// `None` once the server has ended the stream.
    pub async fn next_or_end(&mut self) -> Option<Event> {
        within("an SSE event or the end", async {
            match self.events.next().await {
                Some(Ok(event)) => Some(event),
                _ => None,
            }
        })
        .await
    }
}
