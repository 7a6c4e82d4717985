//! Following the manager's event stream from an index, across dropped connections: what
//! `cube events`, `cube status -w` and every `--wait` are built on.

use std::time::Duration;

use cube_api::ErrorCode;
use cube_api::events::{Event, StreamLine};
use cube_http::client::EventStream;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::api::Api;

/// Longest pause before reaching the manager's stream again.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// The manager's events after an index, for some topics, across dropped connections.
pub(super) struct Follower<'a> {
    api: &'a Api,
    topics: Vec<String>,
    last: u64,
    stream: Option<EventStream>,
    retry: Duration,
}

impl<'a> Follower<'a> {
    /// Events of `topics` after `index`.
    pub(super) fn new(api: &'a Api, index: u64, topics: Vec<String>) -> Self {
        Self { api, topics, last: index, stream: None, retry: Duration::from_millis(100) }
    }

    /// The next event, or `None` once `until` (if any) has come first. A stream that ends or
    /// fails is opened again from the last index seen (a `Lagged` one from where it says);
    /// `on_trouble` hears why while it is down. An index the history no longer holds, or a
    /// request the manager refuses, is an error.
    pub(super) async fn next(
        &mut self,
        until: Option<Instant>,
        on_trouble: &dyn Fn(&str),
    ) -> anyhow::Result<Option<Event>> {
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => match self.api.client().events(Some(self.last), &self.topics).await {
                    Ok(stream) => {
                        self.retry = Duration::from_millis(100);
                        self.stream.insert(stream)
                    }
                    Err(e) if e.is_transient() && e.code() != Some(ErrorCode::Gone) => {
                        on_trouble(&format!("{} (retrying)", self.api.error(&e)));
                        if within(until, tokio::time::sleep(self.retry)).await.is_none() {
                            return Ok(None);
                        }
                        self.retry = (self.retry * 2).min(MAX_RETRY);
                        continue;
                    }
                    Err(e) => return Err(self.api.error(&e)),
                },
            };
            match within(until, stream.next()).await {
                None => return Ok(None),
                Some(Some(Ok(StreamLine::Event(event)))) => {
                    self.last = event.index;
                    return Ok(Some(*event));
                }
                Some(Some(Ok(StreamLine::Notice(notice)))) => {
                    // A heartbeat's index was read up to; a lagged one is where to resume.
                    self.last = self.last.max(notice.index);
                }
                Some(Some(Err(e))) => {
                    on_trouble(&format!("{}; resuming", self.api.error(&e)));
                    self.stream = None;
                }
                Some(None) => self.stream = None,
            }
        }
    }
}

/// `f`'s output, or `None` if `until` comes first (never, without one).
async fn within<F: std::future::Future>(until: Option<Instant>, f: F) -> Option<F::Output> {
    match until {
        Some(until) => tokio::time::timeout_at(until, f).await.ok(),
        None => Some(f.await),
    }
}
