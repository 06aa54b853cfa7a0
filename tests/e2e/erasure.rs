//! A person's right to erasure against the whole system: what is left of an erased patient or
//! physician anywhere in the database, what the API shows of them, their consultations, their
//! claims, the scopes and tenants of the erase routes, and a rebuild after an erasure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hap_tests::broker::dead_letter;
use hap_tests::system::{Parts, System};
use hap_tests::{EarlierRelease, TestApp, TestDb, tokens};
use messaging::QueueNames;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// The deadline of the scheduling saga: long enough never to fire in these tests.
const NEVER: Duration = Duration::from_secs(3600);
const PATIENCE: Duration = Duration::from_secs(30);

/// What the erased patient is known by, each distinctive enough to search the whole database
/// for.
const NAME: &str = "Zelinda Quaresma-Erasable";
const DOCUMENT: &str = "DOC-ERASE-778899";
const EMAIL: &str = "zelinda.erasable@example.org";
const NOTE: &str = "ERASABLE-NOTE hypertension follow-up";

fn tomorrow_at(hour: u32) -> DateTime<Utc> {
    (Utc::now() + chrono::Duration::days(1))
        .date_naive()
        .and_hms_opt(hour, 0, 0)
        .expect("a valid time")
        .and_utc()
}

async fn scheduled(system: &System, patient: Uuid, physician: Uuid, hour: u32) -> Uuid {
    let id = system
        .app
        .request_consultation_at(patient, physician, tomorrow_at(hour))
        .await;
    let c = system.settled(id).await;
    assert_eq!(c["status"], "scheduled", "{c}");
    id
}

/// `GET path` once `ready` holds of its body (or the last body after [`PATIENCE`]).
async fn once(app: &TestApp, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = app
            .request(Method::GET, path)
            .send()
            .await
            .expect("query sent");
        let body: Value = if response.status() == 200 {
            response.json().await.expect("a JSON body")
        } else {
            Value::Null
        };
        if ready(&body) || tokio::time::Instant::now() > deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every table of every schema of the test's database (the event store's and each instance's
/// read model) whose rows, as text, contain `needle`, with how many.
async fn tables_holding(db: &TestDb, needle: &str) -> Vec<(String, i64)> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "select table_schema, table_name from information_schema.tables
          where table_type = 'BASE TABLE'
            and table_schema not in ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        tables.len() > 10,
        "the store's and the read model's tables: {tables:?}"
    );
    let mut holding = vec![];
    for (schema, table) in tables {
        let statement = format!(
            "select count(*) from \"{schema}\".\"{table}\" t where t::text ilike '%' || $1 || '%'"
        );
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
            .bind(needle)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if count > 0 {
            holding.push((format!("{schema}.{table}"), count));
        }
    }
    holding
}

/// The first event of `stream`, as stored.
async fn first_event(system: &System, stream: Uuid) -> eventstore::RecordedEvent {
    let store = system.state.commands.store();
    let mut events = store
        .read_stream(stream, eventstore::StreamVersion::EMPTY)
        .await
        .unwrap();
    events.remove(0)
}

/// The event ids of the dead letters of `queue`.
async fn letters_of(queue: &str) -> Vec<String> {
    messaging::dlq::list(&hap_tests::broker::amqp_urls(), queue)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|letter| letter.event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_patient_is_nowhere_readable_and_their_future_is_cancelled() {
    let db = TestDb::new().await;
    let system = System::start_with(&db, NEVER, Parts::ALL, tokens::keyed_settings()).await;
    let app = &system.app;
    let response = app
        .post_expecting(
            "/patients",
            json!({"name": NAME, "birthDate": "1971-03-09", "documentNumber": DOCUMENT,
                   "email": EMAIL, "phone": "+55 11 90000-7788"}),
            201,
        )
        .await;
    let patient = hap_tests::id_of(response).await;
    let physician = app.register_physician("CRM-ERASE-1").await;
    let consultation = scheduled(&system, patient, physician, 9).await;
    let record = app.write_record(consultation, NOTE).await;
    let shown = once(app, &format!("/records/{record}"), |r| r["content"] == NOTE).await;
    assert_eq!(shown["content"], NOTE, "the record is read in clear before");
    for needle in [NAME, DOCUMENT, EMAIL, NOTE] {
        assert!(
            !tables_holding(&db, needle).await.is_empty(),
            "the read model shows {needle} before the erasure"
        );
    }

    // Dead letters naming the patient, in a saga queue and in an instance's projector queue
    // (the instance records itself as processes do), and one of another patient.
    let other = app.register_patient("DOC-OTHER").await;
    let [registered, other_registered] = [patient, other].map(|id| first_event(&system, id));
    let (registered, other_registered) = (registered.await, other_registered.await);
    sqlx::query(
        "insert into processes (id, instance, roles, version, host, pid, http_addr)
         values ($1, 'test', '{projector}', 'test', 'localhost', 1, '127.0.0.1:1')",
    )
    .bind(Uuid::now_v7())
    .execute(&db.pool)
    .await
    .unwrap();
    let saga_queue = QueueNames::shared(&system.prefix, "patient-service");
    let instance_queue = QueueNames::new(&system.prefix, "patient-service", "test");
    dead_letter(&saga_queue, &registered, "poison").await;
    dead_letter(&instance_queue, &registered, "poison").await;
    dead_letter(&instance_queue, &other_registered, "poison").await;

    let erase = |key: &str| {
        app.request(Method::POST, &format!("/patients/{patient}/erase"))
            .header("Idempotency-Key", key)
            .json(&json!({"reason": "the patient asked (LGPD art. 18, VI)"}))
            .send()
    };
    assert_eq!(erase("erase-1").await.unwrap().status(), 202);
    assert_eq!(
        erase("erase-1").await.unwrap().status(),
        202,
        "a repeat under the key gets the first answer"
    );
    assert_eq!(
        erase("erase-2").await.unwrap().status(),
        200,
        "erasing again changes nothing"
    );
    assert_eq!(
        db.scalar::<i64, _>(
            "select count(*) from events where event_type = 'PatientErased' and stream_id = $1",
            patient,
        )
        .await,
        1
    );

    let erased = once(app, &format!("/patients/{patient}"), |p| {
        p["status"] == "erased"
    })
    .await;
    assert_eq!(erased["status"], "erased", "{erased}");
    for field in ["name", "birthDate", "documentNumber", "email", "phone"] {
        assert_eq!(erased[field], Value::Null, "{field} of {erased}");
    }
    let history = app.get_json(&format!("/patients/{patient}/history")).await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items[0]["eventType"], "PatientRegistered", "{history}");
    for field in ["name", "birthDate", "documentNumber", "email", "phone"] {
        assert_eq!(
            items[0]["changes"][field],
            Value::Null,
            "{field} in {history}"
        );
    }
    let last = items.last().unwrap();
    assert_eq!(last["eventType"], "PatientErased", "{history}");
    assert_eq!(
        last["changes"]["reason"],
        "the patient asked (LGPD art. 18, VI)"
    );
    let cancelled = system
        .wait_for_status(consultation, "cancelled", PATIENCE)
        .await;
    assert_eq!(
        cancelled["status"], "cancelled",
        "the future consultation ends"
    );
    assert_eq!(cancelled["patientName"], Value::Null, "{cancelled}");
    let record = once(app, &format!("/records/{record}"), |r| {
        r["content"].is_null()
    })
    .await;
    assert_eq!(record["content"], Value::Null, "{record}");

    let forgotten = hap_tests::eventually(PATIENCE, || async {
        let [saga, instance] = [&saga_queue, &instance_queue].map(|q| letters_of(&q.main));
        let (saga, instance) = (saga.await, instance.await);
        saga.is_empty() && instance == vec![other_registered.event_id.to_string()]
    })
    .await;
    assert!(
        forgotten,
        "the erased patient's dead letters go, the other's stays"
    );

    // Let every projector and saga settle, then look everywhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for needle in [NAME, DOCUMENT, EMAIL, NOTE] {
        assert_eq!(
            tables_holding(&db, needle).await,
            vec![],
            "{needle} is left nowhere in clear"
        );
    }

    let again = app.post("/patients", hap_tests::patient(DOCUMENT)).await;
    assert_eq!(
        again.status(),
        201,
        "the document number can be registered again: {:?}",
        again.text().await
    );

    assert_eq!(
        rebuilt_identically(&system, &db).await,
        Vec::<String>::new(),
        "a rebuild gives the same read model"
    );
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_physician_shows_erased_and_their_license_is_free_again() {
    let db = TestDb::new().await;
    let system = System::start_with(&db, NEVER, Parts::ALL, tokens::keyed_settings()).await;
    let app = &system.app;
    let patient = app.register_patient("DOC-1").await;
    let physician = app.register_physician("CRM-ERASE-2").await;
    let consultation = scheduled(&system, patient, physician, 10).await;

    app.post_expecting(
        &format!("/physicians/{physician}/erase"),
        json!({"reason": "the physician asked"}),
        202,
    )
    .await;
    let erased = once(app, &format!("/physicians/{physician}"), |p| {
        p["status"] == "erased"
    })
    .await;
    assert_eq!(erased["name"], Value::Null, "{erased}");
    assert_eq!(erased["licenseNumber"], Value::Null, "{erased}");
    assert_eq!(erased["specialty"], "cardiology", "not personal data");
    let cancelled = system
        .wait_for_status(consultation, "cancelled", PATIENCE)
        .await;
    assert_eq!(cancelled["physicianName"], Value::Null, "{cancelled}");
    assert_eq!(
        app.patch(&format!("/physicians/{physician}"), json!({"name": "X"}))
            .await
            .status(),
        409,
        "an erased physician cannot be changed"
    );
    app.register_physician("CRM-ERASE-2").await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_needs_its_own_scope_and_stays_in_the_tenant() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, tokens::settings()).await;
    let writer = tokens::token("north", "patients:write physicians:write");
    let register = |path: &str, body: Value| {
        app.request(Method::POST, path)
            .bearer_auth(&writer)
            .json(&body)
            .send()
    };
    let patient = hap_tests::id_of(
        register("/patients", hap_tests::patient("DOC-1"))
            .await
            .unwrap(),
    )
    .await;
    let physician = hap_tests::id_of(
        register(
            "/physicians",
            json!({"name": "Dr. Ana", "specialty": "cardiology", "licenseNumber": "CRM-1"}),
        )
        .await
        .unwrap(),
    )
    .await;
    let erase = |path: String, token: String| {
        app.request(Method::POST, &path)
            .bearer_auth(token)
            .json(&json!({"reason": "asked"}))
            .send()
    };
    let patient_path = format!("/patients/{patient}/erase");
    let physician_path = format!("/physicians/{physician}/erase");
    for (path, tenant, scope, status) in [
        // Each erasure needs its own scope: writing, or erasing the other kind, is not it.
        (
            &patient_path,
            "north",
            "patients:write physicians:erase",
            403,
        ),
        (
            &physician_path,
            "north",
            "physicians:write patients:erase",
            403,
        ),
        // Another tenant's person is not there to erase.
        (&patient_path, "south", "patients:erase", 404),
        (&physician_path, "south", "physicians:erase", 404),
    ] {
        let response = erase(path.clone(), tokens::token(tenant, scope))
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path} in {tenant} with {scope}");
    }
    let invalid = app
        .request(Method::POST, &patient_path)
        .bearer_auth(tokens::token("north", "patients:erase"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422, "a reason is required");
    assert_eq!(
        db.scalar::<i64, _>(
            "select count(*) from events where event_type like $1",
            "%Erased",
        )
        .await,
        0,
        "none of these erased anything"
    );
    for (path, scope) in [
        (&patient_path, "patients:erase"),
        (&physician_path, "physicians:erase"),
    ] {
        let response = erase(path.clone(), tokens::token("north", scope))
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{path}");
    }
}

/// Whether a rebuild of instance `test` from the store finds its read model as it is.
async fn rebuilt_identically(system: &System, db: &TestDb) -> Vec<String> {
    let schema = projections::schema::schema_name("test");
    let verified = projections::rebuild::rebuild(
        system.state.commands.store(),
        &db.url,
        &schema,
        &projections::rebuild::all_projections(),
        true,
        false,
        projections::rebuild::CHUNK_EVENTS,
    )
    .await
    .unwrap();
    verified
        .differences
        .iter()
        .map(|d| format!("{d:?}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_release_before_is_read_migrated_erased_and_rebuilt_identically() {
    let db = TestDb::new().await;
    let EarlierRelease {
        patient,
        physician,
        record,
        ..
    } = db.insert_earlier_release().await;
    let system = System::start_with(&db, NEVER, Parts::ALL, tokens::keyed_settings()).await;
    let app = &system.app;
    let read = once(app, &format!("/patients/{patient}"), |p| {
        p["phone"] == "+55 OLD-PHONE"
    })
    .await;
    assert_eq!(
        read["name"], "OLD-NAME",
        "read as the earlier release wrote it: {read}"
    );
    // The record's consultation is not in this store, so the API would not show the record:
    // the read model's row is looked at instead.
    let statement = format!(
        "select content from {}.records where id = $1",
        projections::schema::schema_name("test")
    );
    let pool = db.pool.clone();
    let content_is = |wanted: Option<&'static str>| {
        let (statement, pool) = (statement.clone(), pool.clone());
        hap_tests::eventually(PATIENCE, move || {
            let (statement, pool) = (statement.clone(), pool.clone());
            async move {
                let shown: Option<Option<String>> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
                        .bind(record)
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                shown.is_some_and(|content| content.as_deref() == wanted)
            }
        })
    };
    assert!(
        content_is(Some("OLD-CONTENT-2")).await,
        "the record reads in clear"
    );

    let vault = api::state::vault(&db.pool, &tokens::keyed_settings()).unwrap();
    let mut sealed = 0;
    loop {
        match privacy::migration::seal_clear_events(&db.pool, &vault, 2)
            .await
            .unwrap()
        {
            0 => break,
            batch => sealed += batch,
        }
    }
    assert_eq!(sealed, 5, "every personal event of the earlier release");
    assert_eq!(db.events_holding("OLD-").await, 0);
    assert_eq!(
        rebuilt_identically(&system, &db).await,
        Vec::<String>::new()
    );

    app.post_expecting(
        &format!("/patients/{patient}/erase"),
        json!({"reason": "asked"}),
        202,
    )
    .await;
    assert!(content_is(None).await, "the record's content is gone");
    let erased = once(app, &format!("/patients/{patient}"), |p| {
        p["status"] == "erased"
    })
    .await;
    assert_eq!(erased["name"], Value::Null, "{erased}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for needle in [
        "OLD-NAME",
        "OLD-PATIENT-DOC",
        "old@example.org",
        "OLD-CONTENT",
    ] {
        assert_eq!(tables_holding(&db, needle).await, vec![], "{needle}");
    }
    let doctor = once(app, &format!("/physicians/{physician}"), |p| {
        p["name"] == "OLD-DOCTOR"
    })
    .await;
    assert_eq!(
        doctor["name"], "OLD-DOCTOR",
        "the physician is not erased: {doctor}"
    );
    assert_eq!(
        rebuilt_identically(&system, &db).await,
        Vec::<String>::new()
    );
    system.stop().await;
}
