//! Personal data at rest against a real PostgreSQL: uniqueness claims that keep keyed hashes,
//! personal fields sealed under their subject's key, erasure, and sealing what earlier releases
//! stored in clear.

use std::sync::Arc;

use domain::patient::Patient;
use eventstore::{Erasure, EventStore, StreamVersion};
use hap_tests::{EarlierRelease, TestDb};
use serde_json::{Value, json};
use uuid::Uuid;

async fn claims_holding(db: &TestDb, text: &str) -> i64 {
    db.scalar(
        "select count(*) from unique_claims where strpos(value, $1) > 0",
        text,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_number_is_claimed_as_a_keyed_hash_and_still_unique() {
    let (db, app) = keyed_app().await;
    let patient = app.register_patient("DOC-PRIVATE-1").await;
    assert_eq!(
        claims_holding(&db, "DOC-PRIVATE-1").await,
        0,
        "no clear value"
    );
    assert_eq!(claims_holding(&db, "hmac-sha256:").await, 1);

    let again = app
        .post_expecting("/patients", hap_tests::patient("DOC-PRIVATE-1"), 409)
        .await;
    let detail = again.text().await.unwrap();
    assert!(
        detail.contains("documentNumber") && detail.contains("DOC-PRIVATE-1"),
        "the caller is told the value it sent: {detail}"
    );
    // The registration's append stores its person's key; the refused one stored nothing.
    let keys: Vec<Uuid> = sqlx::query_scalar("select subject_id from subject_keys")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(keys, [patient], "one key, the registered patient's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_claims_of_an_earlier_release_are_hashed_and_still_conflict() {
    let db = TestDb::new().await;
    // As a release before this change stored it: the document number in clear.
    sqlx::query(
        "insert into unique_claims (tenant_id, kind, value, owner_id)
         values ('default', 'patient.documentNumber', 'DOC-OLD-1', $1),
                ('default', 'record', 'kept-as-is', $1)",
    )
    .bind(Uuid::now_v7())
    .execute(&db.pool)
    .await
    .unwrap();
    let master = hap_tests::tokens::keyed_settings()
        .master_key()
        .unwrap()
        .unwrap();
    let hash = || privacy::claims::hash_clear_claims(&db.pool, &master);
    assert_eq!(hash().await.unwrap().replaced, 1);
    assert_eq!(hash().await.unwrap(), Default::default(), "once");
    assert_eq!(claims_holding(&db, "DOC-OLD-1").await, 0);
    assert_eq!(claims_holding(&db, "kept-as-is").await, 1, "lookups stay");

    let app = hap_tests::TestApp::start_with(&db, hap_tests::tokens::keyed_settings()).await;
    app.post_expecting("/patients", hap_tests::patient("DOC-OLD-1"), 409)
        .await;

    // A process of the earlier release, still running, claims the same value in clear: the
    // next hashing reports both owners' duplicate instead of failing on the claims' key.
    let late = Uuid::now_v7();
    sqlx::query(
        "insert into unique_claims (tenant_id, kind, value, owner_id)
         values ('default', 'patient.documentNumber', 'DOC-OLD-1', $1)",
    )
    .bind(late)
    .execute(&db.pool)
    .await
    .unwrap();
    let reported = hash().await.unwrap();
    assert_eq!(reported.replaced, 0);
    assert_eq!(reported.duplicates, [late.to_string()]);
}

/// The store over `db` as a process with [`keyed_settings`] reads it: through a vault of its
/// own (so no key is cached from the app's appends).
fn opening_store(db: &TestDb) -> EventStore {
    let vault = api::state::vault(&db.pool, &hap_tests::tokens::keyed_settings()).unwrap();
    EventStore::new(db.pool.clone()).opening_with(Arc::new(vault))
}

/// The payloads of a stream as its readers get them.
async fn opened(store: &EventStore, stream: Uuid) -> Vec<(String, i32, Value)> {
    store
        .read_stream(stream, StreamVersion::EMPTY)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let payload = serde_json::from_str(e.payload.get()).unwrap();
            (e.event_type, e.schema_version, payload)
        })
        .collect()
}

/// The contents of a record book's events as its readers get them, oldest first.
async fn record_contents(store: &EventStore, book: Uuid) -> Vec<Value> {
    opened(store, book)
        .await
        .into_iter()
        .map(|(_, _, payload)| payload["content"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_fields_are_sealed_at_rest_and_read_back_in_clear() {
    let db = TestDb::new().await;
    let (app, state) =
        hap_tests::TestApp::start_state(&db, hap_tests::tokens::keyed_settings()).await;
    let (patient, physician) = app.register_patient_and_physician().await;
    let consultation = app.request_consultation(patient, physician).await;
    app.schedule(consultation, patient, physician).await;
    let record = app.write_record(consultation, "CONTENT-FIRST").await;
    let path = format!("/records/{record}");
    app.patch_expecting(&path, json!({"content": "CONTENT-SECOND"}), 200)
        .await;

    // Nothing personal is in the events table, in any event.
    for personal in [
        "Ana Lima",
        "DOC-1",
        "ana@example.org",
        "1990-05-01",
        "Rui Costa",
        "CRM-1",
        "CONTENT-",
    ] {
        assert_eq!(
            db.events_holding(personal).await,
            0,
            "{personal} is stored in clear"
        );
    }
    let sealed: Vec<(String, i32)> = sqlx::query_as(
        "select event_type, schema_version from events where payload::jsonb ? 'sealed'
          order by position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let types: Vec<&str> = sealed.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "PatientRegistered",
            "PhysicianRegistered",
            "ConsultationRecordCreated",
            "ConsultationRecordUpdated"
        ]
    );
    assert!(sealed.iter().all(|(_, version)| *version == 2));
    let keys: i64 = db
        .scalar(
            "select count(*) from subject_keys where tenant_id = $1",
            "default",
        )
        .await;
    assert_eq!(
        keys, 2,
        "one key per subject: the patient and the physician"
    );

    // Read back: the aggregate, and the history, in clear.
    let loaded = state
        .commands
        .aggregates()
        .current::<Patient>(patient)
        .await
        .unwrap();
    let Patient::Registered(data) = loaded.state else {
        panic!("the patient loads registered");
    };
    assert_eq!(data.name.as_deref(), Some("Ana Lima"));
    assert_eq!(data.document_number.as_deref(), Some("DOC-1"));
    assert_eq!(data.email.as_deref(), Some("ana@example.org"));
    let history = app.get_json(&format!("/patients/{patient}/history")).await;
    assert_eq!(
        history["items"][0]["changes"]["name"], "Ana Lima",
        "{history}"
    );
    let book = domain::record::RecordBook::stream_id(consultation.into());
    assert_eq!(
        record_contents(&opening_store(&db), book).await,
        [json!("CONTENT-FIRST"), json!("CONTENT-SECOND")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subjects_events_open_with_nulls_and_their_document_number_is_free() {
    let (db, app) = keyed_app().await;
    let patient = app.register_patient("DOC-ERASED").await;
    let other = app.register_patient("DOC-KEPT").await;

    // The erasure, appended as the command side appends it.
    let erased = domain::Event::PatientErased(domain::event::PatientErased {
        patient_id: patient.into(),
        reason: "the patient asked".into(),
    });
    let mut append = hap_tests::test_append(patient, StreamVersion::new(1), 0);
    append.aggregate_type = "patient".into();
    append.events = vec![commands::stored::new_event(&erased)];
    append.erases = erased.erases_subject().map(|subject| Erasure {
        subject,
        claim_kinds: privacy::claims::PERSONAL
            .iter()
            .map(|k| (*k).to_owned())
            .collect(),
    });
    EventStore::new(db.pool.clone())
        .append(append)
        .await
        .unwrap();

    let keys: Vec<Uuid> = sqlx::query_scalar("select subject_id from subject_keys")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        keys,
        [other],
        "the erased patient's key is gone, no one else's"
    );
    let store = opening_store(&db);
    let (event_type, version, registered) = opened(&store, patient).await.remove(0);
    assert_eq!((event_type.as_str(), version), ("PatientRegistered", 2));
    assert_eq!(
        registered,
        json!({"patientId": patient, "name": null, "birthDate": null,
               "documentNumber": null, "email": null})
    );
    let (_, _, kept) = opened(&store, other).await.remove(0);
    assert_eq!(
        kept["name"], "Ana Lima",
        "another subject's data still opens"
    );

    // The document number's claim was released with the key.
    let again = app
        .post("/patients", hap_tests::patient("DOC-ERASED"))
        .await;
    assert_eq!(again.status(), 201, "{:?}", again.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_events_seals_clear_events_in_resumable_batches() {
    let db = TestDb::new().await;
    let EarlierRelease { patient, book, .. } = db.insert_earlier_release().await;
    // Nothing personal: left as it is.
    db.insert_clear(
        patient,
        "patient",
        3,
        "PatientDeactivated",
        json!({"patientId": patient}),
    )
    .await;

    let settings = hap_tests::tokens::keyed_settings();
    let vault = api::state::vault(&db.pool, &settings).unwrap();
    let seal = |batch| privacy::migration::seal_clear_events(&db.pool, &vault, batch);
    // A run stopped after its first batch of two, then run again to the end, then again.
    assert_eq!(seal(2).await.unwrap(), 2);
    assert!(db.events_holding("OLD-CONTENT-1").await > 0, "not done yet");
    let mut rest = vec![];
    loop {
        match seal(2).await.unwrap() {
            0 => break,
            sealed => rest.push(sealed),
        }
    }
    assert_eq!(rest, [2, 1]);
    assert_eq!(
        seal(2).await.unwrap(),
        0,
        "a finished migration finds nothing"
    );

    assert_eq!(db.events_holding("OLD-").await, 0);
    let versions: Vec<(String, i32)> =
        sqlx::query_as("select event_type, schema_version from events order by position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let at_one: Vec<&str> = versions
        .iter()
        .filter(|(_, v)| *v == 1)
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(at_one, ["PatientDeactivated"]);
    let record_key: i64 = db
        .scalar(
            "select count(*) from subject_keys where subject_id = $1",
            patient,
        )
        .await;
    assert_eq!(
        record_key, 1,
        "the record update is sealed under its patient's key"
    );

    // Read as before, through the aggregate and the raw opened payloads.
    let store = opening_store(&db);
    let aggregates = commands::Aggregates::new(store.clone(), 10);
    let loaded = aggregates.current::<Patient>(patient).await.unwrap();
    let Patient::Registered(data) = loaded.state else {
        panic!("the patient loads registered");
    };
    assert_eq!(
        (
            data.name.as_deref(),
            data.email.as_deref(),
            data.phone.as_deref(),
            data.active
        ),
        (
            Some("OLD-NAME"),
            Some("old@example.org"),
            Some("+55 OLD-PHONE"),
            false
        )
    );
    assert_eq!(
        record_contents(&store, book).await,
        [json!("OLD-CONTENT-1"), json!("OLD-CONTENT-2")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erasing_process_reads_the_subject_as_erased_at_once() {
    let (db, app) = keyed_app().await;
    let patient = app.register_patient("DOC-GONE").await;
    // Read once, so that this process caches the patient's key.
    let before = app.get_json(&format!("/patients/{patient}/history")).await;
    assert_eq!(before["items"][0]["changes"]["name"], "Ana Lima");

    let erased = app
        .post(
            &format!("/patients/{patient}/erase"),
            json!({"reason": "the patient asked"}),
        )
        .await;
    assert_eq!(erased.status(), 202, "{:?}", erased.text().await);

    // The same process, right away: its cached key went with the erasure.
    let after = app.get_json(&format!("/patients/{patient}/history")).await;
    assert_eq!(after["items"][0]["changes"]["name"], Value::Null, "{after}");
    let keys: i64 = db
        .scalar(
            "select count(*) from subject_keys where subject_id = $1",
            patient,
        )
        .await;
    assert_eq!(keys, 0);
    let again = app.post("/patients", hap_tests::patient("DOC-GONE")).await;
    assert_eq!(again.status(), 201, "the document number is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_seal_for_one_subject_share_the_key_stored_first() {
    let db = TestDb::new().await;
    let settings = hap_tests::tokens::keyed_settings();
    // Two processes' vaults, each with its own cache, over one store.
    let [first, second] = [(), ()].map(|()| api::state::vault(&db.pool, &settings).unwrap());
    let patient = Uuid::now_v7();
    let update = |name: &str| json!({"patientId": patient, "name": name});
    let sealed_first = first
        .seal("default", "PatientUpdated", update("FIRST-NAME"), None)
        .await
        .unwrap();
    let sealed_second = second
        .seal("default", "PatientUpdated", update("SECOND-NAME"), None)
        .await
        .unwrap();
    let keys: i64 = db
        .scalar(
            "select count(*) from subject_keys where subject_id = $1",
            patient,
        )
        .await;
    assert_eq!(keys, 1, "the second found the first's key");
    for (sealed, name) in [(sealed_first, "FIRST-NAME"), (sealed_second, "SECOND-NAME")] {
        let text = sealed.to_string();
        let rows = [eventstore::Stored {
            event_type: "PatientUpdated",
            schema_version: domain::personal::SEALED_VERSION,
            payload: &text,
        }];
        // Each opens with the other's vault.
        for vault in [&first, &second] {
            let opened = vault.open_all(&rows).await.unwrap();
            let opened: Value = serde_json::from_str(opened[0].as_deref().unwrap()).unwrap();
            assert_eq!(opened["name"], name);
        }
    }
}

/// A scratch store, and HAP's HTTP API serving it with a data key (as `hap serve` runs).
async fn keyed_app() -> (TestDb, hap_tests::TestApp) {
    let db = TestDb::new().await;
    let app = hap_tests::TestApp::start_with(&db, hap_tests::tokens::keyed_settings()).await;
    (db, app)
}
