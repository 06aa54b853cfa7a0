//! HAP while its dependencies fail under it. PostgreSQL is a private server of the test's own
//! (`hap_support::postgres::LocalPostgres`), restarted cleanly and as after a crash while
//! clients keep sending commands and queries: whatever a request meets, its answer is a
//! success or a 503 that says when to try again, never a 500, and once the database is back
//! commands succeed again and nothing a client was told is stored is missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hap_support::postgres::{LocalPostgres, Shutdown};
use hap_tests::system::{Parts, System};
use hap_tests::{TestDb, eventually, patient};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Restarts of PostgreSQL, alternating fast (sessions told `57P01`) and immediate (a crash:
/// connections reset, recovery at start).
const RESTARTS: [Shutdown; 5] = [
    Shutdown::Fast,
    Shutdown::Immediate,
    Shutdown::Fast,
    Shutdown::Immediate,
    Shutdown::Fast,
];
const COMMAND_CLIENTS: usize = 4;
const QUERY_CLIENTS: usize = 2;
/// How long the load runs against a healthy database before each restart.
const STEADY: Duration = Duration::from_millis(700);
/// How long a client waits before repeating a request answered 503 (less than `Retry-After`,
/// to keep the load up while the database comes back).
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What one client saw.
#[derive(Debug, Default)]
struct Tally {
    /// Answers by status.
    statuses: BTreeMap<u16, usize>,
    /// 503s without `Retry-After`.
    unavailable_without_retry_after: usize,
    /// Requests that got no HTTP answer at all.
    transport_errors: Vec<String>,
    /// Bodies of answers that were neither a success nor a 503.
    unexpected: Vec<String>,
    /// Patients whose registration was answered 2xx.
    registered: Vec<Uuid>,
}

impl Tally {
    async fn record(&mut self, response: reqwest::Result<reqwest::Response>) -> Option<Value> {
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                self.transport_errors.push(error.to_string());
                return None;
            }
        };
        let status = response.status();
        *self.statuses.entry(status.as_u16()).or_default() += 1;
        if status == StatusCode::SERVICE_UNAVAILABLE
            && !response.headers().contains_key("retry-after")
        {
            self.unavailable_without_retry_after += 1;
        }
        let success = status.is_success();
        let body = response.text().await.unwrap_or_default();
        if !success && status != StatusCode::SERVICE_UNAVAILABLE {
            self.unexpected.push(format!("{status}: {body}"));
        }
        success.then(|| serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn add(&mut self, other: Tally) {
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.unavailable_without_retry_after += other.unavailable_without_retry_after;
        self.transport_errors.extend(other.transport_errors);
        self.unexpected.extend(other.unexpected);
        self.registered.extend(other.registered);
    }
}

/// The last registration a command client was answered, for the query clients to read back.
type Latest = Arc<Mutex<Option<(Uuid, String)>>>;

/// Registers patients one after another, each under an idempotency key of its own, repeating
/// a request answered 503 with the same key until it is answered otherwise.
async fn command_client(
    system: Arc<System>,
    client: usize,
    succeeded: Arc<AtomicU64>,
    latest: Latest,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let key = format!("faults-{client}-{n}");
        let body = patient(&format!("DOC-{client}-{n}"));
        loop {
            let response = system
                .app
                .request(Method::POST, "/patients")
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            let retry = matches!(&response, Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE);
            if let Some(answer) = tally.record(response).await {
                let id: Uuid = answer["id"]
                    .as_str()
                    .and_then(|id| id.parse().ok())
                    .expect("an id");
                let position = answer["position"].as_str().expect("a position").to_owned();
                tally.registered.push(id);
                *latest.lock().await = Some((id, position));
                succeeded.fetch_add(1, Ordering::SeqCst);
            }
            if !retry || stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    tally
}

/// Reads back the latest registration, waiting for it with `X-Min-Position`, and lists
/// patients.
async fn query_client(system: Arc<System>, latest: Latest, stop: CancellationToken) -> Tally {
    let mut tally = Tally::default();
    while !stop.is_cancelled() {
        let Some((id, position)) = latest.lock().await.clone() else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        let read = system
            .app
            .request(Method::GET, &format!("/patients/{id}"))
            .header("X-Min-Position", position)
            .send()
            .await;
        tally.record(read).await;
        let list = system
            .app
            .request(Method::GET, "/patients?limit=5")
            .send()
            .await;
        tally.record(list).await;
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_postgresql_under_load_answers_503_with_retry_after_and_never_500() {
    let postgres = LocalPostgres::new()
        .await
        .expect("a private PostgreSQL starts");
    let db = TestDb::on(&postgres.url()).await;
    let system = Arc::new(
        System::start(
            &db,
            Duration::from_secs(30),
            Parts {
                sagas: false,
                timer: true,
            },
        )
        .await,
    );
    let succeeded = Arc::new(AtomicU64::new(0));
    let latest = Latest::default();
    let stop = CancellationToken::new();
    let mut clients = vec![];
    for client in 0..COMMAND_CLIENTS {
        clients.push(tokio::spawn(command_client(
            system.clone(),
            client,
            succeeded.clone(),
            latest.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..QUERY_CLIENTS {
        clients.push(tokio::spawn(query_client(
            system.clone(),
            latest.clone(),
            stop.clone(),
        )));
    }

    let mut recovered = vec![];
    for mode in RESTARTS {
        tokio::time::sleep(STEADY).await;
        postgres.restart(mode).await.expect("PostgreSQL restarts");
        let before = succeeded.load(Ordering::SeqCst);
        recovered.push(
            eventually(Duration::from_secs(20), || async {
                succeeded.load(Ordering::SeqCst) > before + COMMAND_CLIENTS as u64
            })
            .await,
        );
    }
    stop.cancel();
    let mut tally = Tally::default();
    for client in clients {
        tally.add(client.await.expect("a client ran to its end"));
    }
    let stored: i64 = sqlx::query_scalar(
        "select count(distinct stream_id) from events where stream_id = any($1)",
    )
    .bind(&tally.registered)
    .fetch_one(&db.pool)
    .await
    .expect("events counted");
    Arc::into_inner(system)
        .expect("the clients are done")
        .stop()
        .await;

    println!("answers by status: {:?}", tally.statuses);
    assert!(
        tally.transport_errors.is_empty(),
        "every request is answered: {:?}",
        tally.transport_errors
    );
    assert!(
        tally.unexpected.is_empty(),
        "every answer is a success or a 503, never a 500: {:?}",
        tally.unexpected
    );
    assert_eq!(
        tally.unavailable_without_retry_after, 0,
        "every 503 carries Retry-After"
    );
    assert!(
        tally.statuses.get(&503).is_some_and(|&count| count > 0),
        "the restarts met requests in flight"
    );
    assert_eq!(
        recovered,
        vec![true; RESTARTS.len()],
        "commands succeed again after every restart"
    );
    assert_eq!(
        stored as usize,
        tally.registered.len(),
        "every registration answered 2xx is in the store"
    );
}
