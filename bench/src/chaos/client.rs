//! The clinic's HTTP client: requests go to the two API processes in turn, and one that gets no
//! answer (a refused connection, a timeout) or a 5xx is sent again with the same
//! `Idempotency-Key`, to the other process first, with a short backoff, so that its outcome is
//! known in the end even when a process dies under it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use super::processes::Endpoint;

/// How long one attempt may take before it counts as unanswered. HAP answers 503 itself after
/// 30 s; a request held this long is held by a fault.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first backoff; it doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One request: what to send, and to whom it belongs.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
    pub token: String,
    /// Sent as `Idempotency-Key` (commands only).
    pub key: Option<String>,
    /// Sent as `X-Correlation-Id`, so that a request can be found in the store and the logs.
    pub correlation: String,
}

/// An answer other than a 5xx.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// What sending a call came to.
#[derive(Debug)]
pub struct Sent {
    /// `None` when every attempt within the budget failed.
    pub answer: Option<Answer>,
    /// Attempts made, the answered one included.
    pub attempts: u32,
}

/// The HTTP client over the API processes' endpoints.
pub struct Api {
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    /// Which endpoint the next call starts with.
    turn: AtomicUsize,
    /// Failed attempts by why they failed (`503`, `connection`, `timeout`, `no process up`).
    failures: Mutex<BTreeMap<String, u64>>,
}

impl Api {
    pub fn new(endpoints: Vec<Endpoint>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .context("Failed to build the HTTP client")?;
        Ok(Self {
            http,
            endpoints,
            turn: AtomicUsize::new(0),
            failures: Mutex::new(BTreeMap::new()),
        })
    }

    /// Failed attempts so far, by why they failed.
    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn failed(&self, why: String) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(why)
            .or_default() += 1;
    }

    /// The endpoint for attempt `attempt` of a call that started at `first`: the endpoints in
    /// turn from `first`, skipping those that are down.
    fn endpoint(&self, first: usize, attempt: u32) -> Option<SocketAddr> {
        let count = self.endpoints.len();
        (0..count)
            .map(|i| &self.endpoints[(first + attempt as usize + i) % count])
            .find_map(Endpoint::get)
    }

    /// Sends `call` until it gets an answer other than a 5xx, or `budget` runs out.
    pub async fn send(&self, call: &Call, budget: Duration) -> Sent {
        let deadline = Instant::now() + budget;
        let first = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut attempts = 0;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let failure = match self.endpoint(first, attempts) {
                None => "no API process up".to_owned(),
                Some(address) => match self.attempt(address, call).await {
                    Ok(answer) if answer.status < 500 => {
                        return Sent {
                            answer: Some(answer),
                            attempts: attempts + 1,
                        };
                    }
                    Ok(answer) => answer.status.to_string(),
                    Err(error) if error.is_timeout() => "timeout".to_owned(),
                    Err(_) => "connection".to_owned(),
                },
            };
            attempts += 1;
            self.failed(failure);
            if Instant::now() + backoff > deadline {
                return Sent {
                    answer: None,
                    attempts,
                };
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn attempt(&self, address: SocketAddr, call: &Call) -> reqwest::Result<Answer> {
        let mut request = self
            .http
            .request(
                call.method.clone(),
                format!("http://{address}{}", call.path),
            )
            .bearer_auth(&call.token)
            .header("X-Correlation-Id", &call.correlation);
        if let Some(key) = &call.key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        // Problem bodies and answers are JSON; anything else is kept as text for the report.
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Answer { status, body })
    }
}
