//! The event store against a real PostgreSQL: concurrency, atomicity and the gap-safe read.

use std::collections::HashSet;

use eventstore::{AppendError, EventStore, GlobalCheckpoint, StreamVersion};
use futures::future::join_all;
use hap_tests::{TestDb, admin_url, test_append};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_at_one_version_let_exactly_one_win() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let stream = Uuid::now_v7();

    let attempts = (0..50).map(|_| store.append(test_append(stream, StreamVersion::EMPTY, 1)));
    let results = join_all(attempts).await;

    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "exactly one writer at version 0 succeeds");
    for result in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(result, Err(AppendError::Conflict { .. })),
            "{result:?}"
        );
    }
    let events = store
        .read_stream(stream, StreamVersion::EMPTY)
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "the losers appended nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_that_retry_leave_versions_without_gaps() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let stream = Uuid::now_v7();

    let writers = (0..50).map(|_| {
        let store = store.clone();
        async move {
            loop {
                let current = store
                    .read_stream(stream, StreamVersion::EMPTY)
                    .await
                    .unwrap();
                let version = StreamVersion::new(current.len() as u64);
                match store.append(test_append(stream, version, 2)).await {
                    Ok(_) => return,
                    Err(AppendError::Conflict { .. }) => continue,
                    Err(other) => panic!("{other}"),
                }
            }
        }
    });
    join_all(writers).await;

    let versions: Vec<i64> = store
        .read_stream(stream, StreamVersion::EMPTY)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_is_all_or_nothing() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let stream = Uuid::now_v7();
    store
        .append(test_append(stream, StreamVersion::EMPTY, 1))
        .await
        .unwrap();

    // Three events at a stale version: the first would collide, so none may land.
    let stale = store
        .append(test_append(stream, StreamVersion::EMPTY, 3))
        .await;

    assert!(matches!(stale, Err(AppendError::Conflict { .. })));
    let events = store
        .read_stream(stream, StreamVersion::EMPTY)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reads_back_in_version_order_from_any_version() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let stream = Uuid::now_v7();
    let appended = store
        .append(test_append(stream, StreamVersion::EMPTY, 3))
        .await
        .unwrap();
    assert_eq!(appended.version, StreamVersion::new(3));

    let tail = store
        .read_stream(stream, StreamVersion::new(1))
        .await
        .unwrap();

    assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(tail[1].position(), appended.position().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_values_are_unique_and_a_taken_claim_appends_nothing() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let claim = eventstore::Claim {
        kind: "patient.documentNumber".into(),
        value: "123".into(),
    };
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let mut append = test_append(first, StreamVersion::EMPTY, 1);
    append.claims = vec![claim.clone()];
    store.append(append).await.unwrap();

    let mut again = test_append(second, StreamVersion::EMPTY, 1);
    again.claims = vec![claim.clone()];
    let result = store.append(again).await;

    assert!(
        matches!(&result, Err(AppendError::ClaimTaken { kind, value }) if kind == "patient.documentNumber" && value == "123"),
        "{result:?}"
    );
    assert!(
        store
            .read_stream(second, StreamVersion::EMPTY)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .claim_owner("default", &claim.kind, &claim.value)
            .await
            .unwrap(),
        Some(first)
    );
}

/// A writer that inserts the event `id` (taking the next position) and keeps its transaction
/// open until the caller commits it.
async fn insert_and_stay_open(
    pool: &sqlx::PgPool,
    id: Uuid,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut slow = pool.begin().await.unwrap();
    sqlx::query(
        "insert into events (event_id, stream_id, aggregate_type, version, event_type, payload,
                             tenant_id, correlation_id, schema_version, occurred_at)
         values ($1, $2, 'test', 1, 'TestHappened', '{}', 'default', 'late', 1, now())",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .execute(&mut *slow)
    .await
    .unwrap();
    slow
}

/// The reason for the (transaction id, position) order: a transaction that inserts first and
/// commits last must still be read, exactly once, by a reader that kept reading meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_transaction_commits_late_is_read_exactly_once() {
    let db = TestDb::new().await;
    let store = db.plain_store();
    let mut seen = Vec::new();
    let mut checkpoint = GlobalCheckpoint::START;
    let read = async |checkpoint: &mut GlobalCheckpoint, seen: &mut Vec<Uuid>| {
        for event in store.read_all(*checkpoint, 1000).await.unwrap() {
            *checkpoint = event.checkpoint();
            seen.push(event.event_id);
        }
    };

    store
        .append(test_append(Uuid::now_v7(), StreamVersion::EMPTY, 1))
        .await
        .unwrap();
    // A writer of this database in flight (an append's own group commit) may hold the read
    // back for a moment, so reads poll until what must arrive did (bounded).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.is_empty() && tokio::time::Instant::now() < deadline {
        read(&mut checkpoint, &mut seen).await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(seen.len(), 1);

    // The slow writer inserts first (taking the lower position) and keeps its transaction open.
    let late_id = Uuid::now_v7();
    let slow = insert_and_stay_open(&db.pool, late_id).await;

    // Others commit in between; the reader keeps reading and must not move past the slow one.
    let mut quick_ids = Vec::new();
    for _ in 0..5 {
        let append = test_append(Uuid::now_v7(), StreamVersion::EMPTY, 2);
        quick_ids.extend(append.events.iter().map(|e| e.event_id));
        store.append(append).await.unwrap();
        read(&mut checkpoint, &mut seen).await;
    }
    assert_eq!(
        seen.len(),
        1,
        "nothing after the open transaction is visible yet"
    );

    slow.commit().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < 12 && tokio::time::Instant::now() < deadline {
        read(&mut checkpoint, &mut seen).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event is read twice");
    assert!(seen.contains(&late_id), "the late event is read");
    assert!(quick_ids.iter().all(|id| seen.contains(id)));
    assert_eq!(seen.len(), 12);
    assert_eq!(seen[1], late_id, "it comes out in its transaction's place");
}

/// The rebuild's bulk scan reads through the same fence as `read_all`: it stops before a
/// transaction that is still open, and once that commits it returns exactly what `read_all`
/// returns, in the same order, with the payloads' text as it was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_scan_reads_what_read_all_reads_and_never_past_an_open_writer() {
    use futures::TryStreamExt;
    let db = TestDb::new().await;
    let store = db.plain_store();
    let scan = async |after: GlobalCheckpoint| {
        let pages: Vec<_> = store
            .scan(after, 2)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut events = Vec::new();
        for page in &pages {
            assert!(
                !page.is_empty() && page.len() <= 2,
                "pages of at most 2 rows"
            );
            for event in page.events() {
                let event = event.unwrap();
                events.push((event.checkpoint, event.event_id, event.payload.to_owned()));
            }
        }
        events
    };

    let mut append = test_append(Uuid::now_v7(), StreamVersion::EMPTY, 3);
    append.events[1].payload = serde_json::json!({ "text": "tab\t \"quoted\" ção ✓" });
    let first: Vec<Uuid> = append.events.iter().map(|e| e.event_id).collect();
    store.append(append).await.unwrap();
    // An append's own writer may hold the fence back for a moment: poll until it has passed.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut before = scan(GlobalCheckpoint::START).await;
    while before.len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        before = scan(GlobalCheckpoint::START).await;
    }
    assert_eq!(before.iter().map(|e| e.1).collect::<Vec<_>>(), first);

    // A writer inserts and stays open; others commit after it.
    let late_id = Uuid::now_v7();
    let slow = insert_and_stay_open(&db.pool, late_id).await;
    for _ in 0..3 {
        store
            .append(test_append(Uuid::now_v7(), StreamVersion::EMPTY, 2))
            .await
            .unwrap();
    }
    let after_first = before[2].0;
    assert!(
        scan(after_first).await.is_empty(),
        "nothing past the open transaction"
    );

    slow.commit().await.unwrap();
    let mut rest = scan(after_first).await;
    while rest.len() < 7 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        rest = scan(after_first).await;
    }
    assert_eq!(rest.len(), 7);
    assert_eq!(
        rest[0].1, late_id,
        "the late event comes out in its transaction's place"
    );

    let scanned: Vec<_> = before.into_iter().chain(rest).collect();
    let read: Vec<_> = store
        .read_all(GlobalCheckpoint::START, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.checkpoint(), e.event_id, e.payload.get().to_owned()))
        .collect();
    assert_eq!(scanned, read);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&scanned[1].2).unwrap()["text"],
        "tab\t \"quoted\" ção ✓"
    );
}

/// A rebuild that fails midway drops its scan with the `COPY` half read: the connection it
/// used must not go back to the pool in that state (its next statement would fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_dropped_midway_leaves_its_pool_usable() {
    use futures::StreamExt;
    let db = TestDb::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let store = EventStore::new(pool.clone());
    store
        .append(test_append(Uuid::now_v7(), StreamVersion::EMPTY, 40))
        .await
        .unwrap();
    // Wait until the append's own writer no longer holds the fence back.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while store
        .read_all(GlobalCheckpoint::START, 100)
        .await
        .unwrap()
        .len()
        < 40
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the events became readable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // Pages of one event: far more than the scan reads ahead, so it is midway when dropped.
    let mut pages = store.scan(GlobalCheckpoint::START, 1).await.unwrap();
    assert_eq!(pages.next().await.unwrap().unwrap().len(), 1);
    drop(pages);

    for _ in 0..3 {
        let count: i64 = sqlx::query_scalar("select count(*) from events")
            .fetch_one(&pool)
            .await
            .expect("the pool's connection works");
        assert_eq!(count, 40);
    }
}

/// The gap-safe read waits only for transactions that could still write events: a read
/// model's open transaction, or one in another database, does not hold it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_read_model_and_other_database_transactions_do_not_hold_the_read_back() {
    use sqlx::Connection;
    let db = TestDb::new().await;
    let store = db.plain_store();
    let read_model =
        projections::schema::connect(&db.url, "rm_fence", 2, projections::schema::Plans::Cached)
            .await
            .unwrap();
    let mut projecting = read_model.begin().await.unwrap();
    let mut elsewhere = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    let mut elsewhere = elsewhere.begin().await.unwrap();
    // Both write (take a transaction id) and stay open while the event is appended and read.
    for tx in [&mut *projecting, &mut *elsewhere] {
        sqlx::query("select pg_current_xact_id()")
            .execute(tx)
            .await
            .unwrap();
    }

    let append = test_append(Uuid::now_v7(), StreamVersion::EMPTY, 1);
    let id = append.events[0].event_id;
    store.append(append).await.unwrap();
    let read = store.read_all(GlobalCheckpoint::START, 10).await.unwrap();

    assert_eq!(read.iter().map(|e| e.event_id).collect::<Vec<_>>(), [id]);
    projecting.rollback().await.unwrap();
    elsewhere.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_transactions_and_keeps_every_append_whole() {
    let db = TestDb::new().await;
    let store = db.plain_store().with_group_commit(4, 64);
    let streams: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();

    let results = join_all(
        streams
            .iter()
            .map(|s| store.append(test_append(*s, StreamVersion::EMPTY, 2))),
    )
    .await;

    let mut positions = HashSet::new();
    for result in results {
        let appended = result.expect("every append lands");
        assert_eq!(appended.version, StreamVersion::new(2));
        assert!(
            positions.insert(appended.position().unwrap()),
            "positions are distinct"
        );
    }
    let (events, transactions): (i64, i64) =
        sqlx::query_as("select count(*), count(distinct transaction_id) from events")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(events, 400);
    assert!(
        transactions < 200,
        "appends shared commits ({transactions} transactions)"
    );
    for stream in streams.iter().take(20) {
        let versions: Vec<i64> = store
            .read_stream(*stream, StreamVersion::EMPTY)
            .await
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, [1, 2]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_group_commit_one_refused_append_does_not_take_its_batch_down() {
    let db = TestDb::new().await;
    let store = db.plain_store().with_group_commit(2, 64);
    let claim = eventstore::Claim {
        kind: "patient.documentNumber".into(),
        value: "123".into(),
    };
    let mut first = test_append(Uuid::now_v7(), StreamVersion::EMPTY, 1);
    first.claims = vec![claim.clone()];
    store.append(first).await.unwrap();
    let contested = Uuid::now_v7();
    store
        .append(test_append(contested, StreamVersion::EMPTY, 1))
        .await
        .unwrap();

    // Among many good appends: one whose claim is taken, one at a stale version.
    let mut taken = test_append(Uuid::now_v7(), StreamVersion::EMPTY, 1);
    taken.claims = vec![claim];
    let mut appends = vec![taken, test_append(contested, StreamVersion::EMPTY, 1)];
    appends.extend((0..30).map(|_| test_append(Uuid::now_v7(), StreamVersion::EMPTY, 1)));
    let results = join_all(appends.into_iter().map(|a| store.append(a))).await;

    assert!(
        matches!(results[0], Err(AppendError::ClaimTaken { .. })),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(AppendError::Conflict { .. })),
        "{:?}",
        results[1]
    );
    assert!(results[2..].iter().all(Result::is_ok));
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 2 + 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_group_commit_fifty_writers_at_one_version_still_let_exactly_one_win() {
    let db = TestDb::new().await;
    let store = db.plain_store().with_group_commit(4, 64);
    let stream = Uuid::now_v7();

    let results =
        join_all((0..50).map(|_| store.append(test_append(stream, StreamVersion::EMPTY, 1)))).await;

    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(
        store
            .read_stream(stream, StreamVersion::EMPTY)
            .await
            .unwrap()
            .len(),
        1
    );
}
