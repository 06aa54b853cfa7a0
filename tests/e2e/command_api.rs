//! The command API over real HTTP and a real PostgreSQL: statuses, headers and the rule that a
//! rejected command appends nothing.

use chrono::Utc;
use domain::Event;
use domain::event::ConsultationRecordsVoided;
use domain::ids::ConsultationId;
use domain::record::RecordBook;
use futures::future::join_all;
use hap_tests::{TestApp, TestDb, id_of, patient, start_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "errors are problem+json"
    );
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_patient_answers_201_with_location_etag_and_position() {
    let (_db, app) = start_app().await;

    let response = app
        .request(Method::POST, "/patients")
        .header("X-Correlation-Id", "corr-42")
        .json(&patient("DOC-1"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["etag"], "\"1\"");
    assert_eq!(response.headers()["x-correlation-id"], "corr-42");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/patients/{}", body["id"].as_str().unwrap())
    );
    assert_eq!(body["version"], 1);
    assert!(body["position"].as_str().is_some());
    let correlation: String = sqlx::query_scalar("select correlation_id from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        correlation, "corr-42",
        "the event carries the request's correlation id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_registrations_of_one_document_number_create_one_patient() {
    let (_db, app) = start_app().await;

    let responses = join_all((0..20).map(|_| app.post("/patients", patient("SAME-DOC")))).await;

    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_twice_appends_once_and_answers_the_same() {
    let (_db, app) = start_app().await;
    let send = |body: Value| {
        app.request(Method::POST, "/patients")
            .header("Idempotency-Key", "key-1")
            .json(&body)
            .send()
    };

    let first = send(patient("DOC-1")).await.unwrap();
    let (first_status, first_location) = (first.status(), first.headers()["location"].clone());
    let first_body: Value = first.json().await.unwrap();
    let second = send(patient("DOC-1")).await.unwrap();

    assert_eq!(second.status(), first_status);
    assert_eq!(second.headers()["location"], first_location);
    assert_eq!(second.json::<Value>().await.unwrap(), first_body);
    assert_eq!(app.event_count().await, 1);

    let other_body = send(patient("DOC-2")).await.unwrap();
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        problem(other_body).await["type"],
        "/problems/idempotency-key-reused"
    );
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_append_once() {
    let (_db, app) = start_app().await;
    let id = app.register_patient("DOC-1").await;

    let requests = (0..10).map(|_| {
        app.request(Method::PATCH, &format!("/patients/{id}"))
            .header("Idempotency-Key", "rename-once")
            .json(&json!({"name": "Ana Souza"}))
            .send()
    });
    let responses = join_all(requests).await;

    let mut bodies = vec![];
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        bodies.push(response.json::<Value>().await.unwrap());
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert_eq!(app.event_count().await, 2, "registration and one update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_are_retried_by_the_server_until_each_lands() {
    let (_db, app) = start_app().await;
    let id = app.register_patient("DOC-1").await;

    let updates = (0..10).map(|n| {
        app.patch(
            &format!("/patients/{id}"),
            json!({ "name": format!("Name {n}") }),
        )
    });
    let responses = join_all(updates).await;

    let mut versions = vec![];
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        versions.push(
            response.json::<Value>().await.unwrap()["version"]
                .as_u64()
                .unwrap(),
        );
    }
    versions.sort();
    assert_eq!(versions, (2..=11).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_changes_nothing_appends_nothing_and_returns_the_version() {
    let (_db, app) = start_app().await;
    let id = app.register_patient("DOC-1").await;

    let response = app
        .patch(&format!("/patients/{id}"), json!({"name": "Ana Lima"}))
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["version"], 1);
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_guards_the_version() {
    let (_db, app) = start_app().await;
    let id = app.register_patient("DOC-1").await;
    let rename = |etag: &'static str, name: &'static str| {
        app.request(Method::PATCH, &format!("/patients/{id}"))
            .header("If-Match", etag)
            .json(&json!({ "name": name }))
            .send()
    };

    let matching = rename("\"1\"", "Ana Souza").await.unwrap();
    assert_eq!(matching.status(), StatusCode::OK);
    assert_eq!(matching.headers()["etag"], "\"2\"");

    let stale = rename("\"1\"", "Ana Castro").await.unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    problem(stale).await;
    assert_eq!(
        app.event_count().await,
        2,
        "the stale command appended nothing"
    );
}

/// The moka cache must never cause a wrong decision: another instance's write makes the
/// cached state stale, and the command must see the current state, not the cached one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cache_entry_never_causes_a_wrong_decision() {
    let db = TestDb::new().await;
    let first = TestApp::start(&db).await;
    let second = TestApp::start(&db).await;
    let id = first.register_patient("DOC-1").await;
    // `first` now caches the patient as active; `second` deactivates it.
    second
        .post_expecting(&format!("/patients/{id}/deactivate"), json!({}), 200)
        .await;

    let update = first
        .patch(&format!("/patients/{id}"), json!({"name": "Other"}))
        .await;

    assert_eq!(update.status(), StatusCode::CONFLICT);
    assert_eq!(first.event_count().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_is_refused_with_its_status_and_appends_nothing() {
    let (_db, app) = start_app().await;
    let id = app.register_patient("DOC-1").await;
    let before = app.event_count().await;

    // 400: not JSON; a path id that is not a UUID; an unreadable If-Match.
    let not_json = app
        .request(Method::POST, "/patients")
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    problem(not_json).await;
    app.patch_expecting("/patients/not-a-uuid", json!({"name": "X"}), 400)
        .await;
    let bad_if_match = app
        .request(Method::PATCH, &format!("/patients/{id}"))
        .header("If-Match", "yesterday")
        .json(&json!({"name": "X"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_if_match.status(), StatusCode::BAD_REQUEST);

    // 404: an unknown patient.
    let unknown = app
        .patch_expecting(
            &format!("/patients/{}", Uuid::now_v7()),
            json!({"name": "X"}),
            404,
        )
        .await;
    problem(unknown).await;

    // 413: a body over 64 KiB.
    let huge =
        json!({"name": "x".repeat(70 * 1024), "birthDate": "1990-01-01", "documentNumber": "D"});
    let too_large = app.post("/patients", huge).await;
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    problem(too_large).await;

    // 415: not declared as JSON.
    let text = app
        .request(Method::POST, "/patients")
        .header("content-type", "text/plain")
        .body(patient("DOC-2").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // 422: missing, unknown and invalid fields, each named.
    let cases = [
        (
            json!({"name": "A", "birthDate": "1990-01-01"}),
            "documentNumber",
        ),
        (
            json!({"name": "A", "birthDate": "1990-01-01", "documentNumber": "D", "age": 3}),
            "age",
        ),
        (
            json!({"name": "", "birthDate": "1990-01-01", "documentNumber": "D"}),
            "name",
        ),
        (
            json!({"name": "A", "birthDate": "1890-01-01", "documentNumber": "D"}),
            "birthDate",
        ),
        (
            json!({"name": "A", "birthDate": "2999-01-01", "documentNumber": "D"}),
            "birthDate",
        ),
        (
            json!({"name": "A", "birthDate": "1990-01-01", "documentNumber": "D", "email": "no"}),
            "email",
        ),
        (
            json!({"name": "A", "birthDate": "1990-02-30", "documentNumber": "D"}),
            "birthDate",
        ),
    ];
    for (body, field) in cases {
        let response = app.post("/patients", body.clone()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let problem = problem(response).await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    app.patch_expecting(&format!("/patients/{id}"), json!({}), 422)
        .await;

    assert_eq!(
        app.event_count().await,
        before,
        "no rejected command appended anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_patient_cannot_be_changed() {
    let (_db, app) = start_app().await;
    let id = app.register_patient("DOC-1").await;
    app.post_expecting(
        &format!("/patients/{id}/deactivate"),
        json!({"reason": "moved"}),
        200,
    )
    .await;
    // Deactivating again changes nothing and succeeds; a body is optional.
    let again = app
        .request(Method::POST, &format!("/patients/{id}/deactivate"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap()["version"], 2);

    let update = app
        .patch(
            &format!("/patients/{id}"),
            json!({"phone": "+55 11 91234-5678"}),
        )
        .await;

    assert_eq!(update.status(), StatusCode::CONFLICT);
    assert_eq!(problem(update).await["type"], "/problems/conflict");
    assert_eq!(app.event_count().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physicians_are_registered_updated_and_deactivated() {
    let (_db, app) = start_app().await;
    let id = app.register_physician("CRM-1").await;

    app.post_expecting(
        "/physicians",
        json!({"name": "Other", "specialty": "x", "licenseNumber": "CRM-1"}),
        409,
    )
    .await;
    app.patch_expecting(
        &format!("/physicians/{id}"),
        json!({"specialty": "neurology"}),
        200,
    )
    .await;
    app.post_expecting(&format!("/physicians/{id}/deactivate"), json!({}), 200)
        .await;
    app.patch_expecting(&format!("/physicians/{id}"), json!({"name": "Dr. X"}), 409)
        .await;
    assert_eq!(app.event_count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consultation_request_starts_scheduling_and_answers_202() {
    let (_db, app) = start_app().await;
    let (patient, physician) = app.register_patient_and_physician().await;
    let starts_at = (Utc::now() + chrono::Duration::days(2)).to_rfc3339();

    let response = app
        .post(
            "/consultations",
            json!({"patientId": patient, "physicianId": physician, "startsAt": starts_at,
                   "durationMinutes": 45, "reason": "check-up"}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(
        response.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/consultations/")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "requested");
    let (event_type, payload): (String, Value) =
        sqlx::query_as("select event_type, payload from events order by position desc limit 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(event_type, "ConsultationSchedulingStarted");
    assert_eq!(payload["consultationId"], body["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consultation_with_unknown_people_or_a_past_start_is_a_422() {
    let (_db, app) = start_app().await;
    let (patient, physician) = app.register_patient_and_physician().await;
    let tomorrow = (Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let yesterday = (Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let cases = [
        (
            json!({"patientId": Uuid::now_v7(), "physicianId": physician, "startsAt": tomorrow}),
            "patientId",
        ),
        (
            json!({"patientId": patient, "physicianId": Uuid::now_v7(), "startsAt": tomorrow}),
            "physicianId",
        ),
        (
            json!({"patientId": patient, "physicianId": physician, "startsAt": yesterday}),
            "startsAt",
        ),
        (
            json!({"patientId": patient, "physicianId": physician, "startsAt": tomorrow, "durationMinutes": 241}),
            "durationMinutes",
        ),
        (
            json!({"patientId": "nope", "physicianId": physician, "startsAt": tomorrow}),
            "patientId",
        ),
    ];
    let before = app.event_count().await;
    for (body, field) in cases {
        let response = app.post("/consultations", body.clone()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        assert_eq!(problem(response).await["errors"][0]["field"], field);
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_scheduled_consultation_can_be_updated_completed_or_cancelled() {
    let (_db, app) = start_app().await;
    let (patient, physician) = app.register_patient_and_physician().await;
    let id = app.request_consultation(patient, physician).await;
    let before = app.event_count().await;

    app.patch_expecting(&format!("/consultations/{id}"), json!({"notes": "n"}), 409)
        .await;
    app.post_expecting(&format!("/consultations/{id}/complete"), json!({}), 409)
        .await;
    assert_eq!(app.event_count().await, before);

    app.schedule(id, patient, physician).await;
    app.patch_expecting(
        &format!("/consultations/{id}"),
        json!({"notes": "bring exams"}),
        200,
    )
    .await;
    app.post_expecting(&format!("/consultations/{id}/cancel"), json!({}), 422)
        .await;
    app.post_expecting(
        &format!("/consultations/{id}/cancel"),
        json!({"reason": "ill"}),
        202,
    )
    .await;
    let complete = app
        .post(&format!("/consultations/{id}/complete"), json!({}))
        .await;
    assert_eq!(
        complete.status(),
        StatusCode::CONFLICT,
        "a cancelling consultation is not done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_written_to_scheduled_consultations_and_frozen_once_voided() {
    let (_db, app) = start_app().await;
    let (patient, physician) = app.register_patient_and_physician().await;
    let id = app.request_consultation(patient, physician).await;
    app.post_expecting(
        &format!("/consultations/{id}/records"),
        json!({"content": "x"}),
        409,
    )
    .await;
    app.post_expecting(
        &format!("/consultations/{}/records", Uuid::now_v7()),
        json!({"content": "x"}),
        404,
    )
    .await;

    app.schedule(id, patient, physician).await;
    let created = app
        .post_expecting(
            &format!("/consultations/{id}/records"),
            json!({"content": "BP 12/8"}),
            201,
        )
        .await;
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let record = id_of(created).await;
    assert_eq!(location, format!("/records/{record}"));
    app.patch_expecting(&location, json!({"content": "BP 13/8"}), 200)
        .await;
    app.patch_expecting(&location, json!({"content": "x".repeat(20_001)}), 422)
        .await;
    app.patch_expecting(
        &format!("/records/{}", Uuid::now_v7()),
        json!({"content": "x"}),
        404,
    )
    .await;

    let consultation = ConsultationId::from(id);
    let voided = Event::ConsultationRecordsVoided(ConsultationRecordsVoided {
        consultation_id: consultation,
        record_ids: vec![record.into()],
    });
    app.append_event(RecordBook::stream_id(consultation), &voided)
        .await;
    app.patch_expecting(&location, json!({"content": "BP 14/8"}), 409)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_answer_is_a_503() {
    let db = TestDb::new().await;
    let pool = db.pool.clone();
    let app = TestApp::start(&db).await;
    pool.close().await;

    let response = app.post("/patients", patient("DOC-1")).await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem = problem(response).await;
    assert!(
        !problem["detail"].as_str().unwrap().contains("sqlx"),
        "no internals leak"
    );
    let ready = app
        .request(Method::GET, "/health/ready")
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["failing"][0],
        "postgresql"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_command_route() {
    let (_db, app) = start_app().await;

    let document: Value = app.get_json("/openapi.json").await;

    let routes = [
        ("/patients", "post"),
        ("/patients/{id}", "patch"),
        ("/patients/{id}/deactivate", "post"),
        ("/physicians", "post"),
        ("/physicians/{id}", "patch"),
        ("/physicians/{id}/deactivate", "post"),
        ("/consultations", "post"),
        ("/consultations/{id}", "patch"),
        ("/consultations/{id}/cancel", "post"),
        ("/consultations/{id}/complete", "post"),
        ("/consultations/{id}/records", "post"),
        ("/records/{id}", "patch"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
    ];
    for (path, method) in routes {
        assert!(
            document["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    let live = app
        .request(Method::GET, "/health/live")
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_made_by_the_framework_are_problems_too() {
    let (_db, app) = start_app().await;

    let wrong_method = app
        .request(Method::DELETE, "/patients")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        problem(wrong_method).await["type"],
        "/problems/method-not-allowed"
    );
    let no_route = app.request(Method::GET, "/nowhere").send().await.unwrap();
    assert_eq!(no_route.status(), StatusCode::NOT_FOUND);
    problem(no_route).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_on_an_unknown_resource_is_a_404_not_a_412() {
    let (_db, app) = start_app().await;

    let response = app
        .request(Method::PATCH, &format!("/patients/{}", Uuid::now_v7()))
        .header("If-Match", "\"3\"")
        .json(&json!({"name": "X"}))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_twenty_thousand_multibyte_characters_is_accepted() {
    let (_db, app) = start_app().await;
    let (patient, physician) = app.register_patient_and_physician().await;
    let id = app.request_consultation(patient, physician).await;
    app.schedule(id, patient, physician).await;

    let content = "é".repeat(20_000); // 40,000 bytes of UTF-8, over 64 KiB once escaped
    let created = app
        .request(Method::POST, &format!("/consultations/{id}/records"))
        .header("content-type", "application/json")
        .body(format!("{{\"content\": \"{}\"}}", "\\u00e9".repeat(20_000)))
        .send()
        .await
        .unwrap();

    assert_eq!(created.status(), StatusCode::CREATED);
    // Stored sealed: read back through a store that opens it.
    let book: Uuid =
        sqlx::query_scalar("select stream_id from events order by position desc limit 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let stored = hap_tests::store(&app.pool)
        .read_stream(book, eventstore::StreamVersion::EMPTY)
        .await
        .unwrap();
    let payload: Value = serde_json::from_str(stored.last().unwrap().payload.get()).unwrap();
    assert_eq!(payload["content"], content);
}

/// The migration before idempotency keys remembered outcomes instead of HTTP responses.
const BEFORE_OUTCOMES: i64 = 20261206000001;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_remembered_as_a_response_before_outcomes_replays_the_same_answer() {
    let db = TestDb::new().await;
    // The schema as it was before: a fresh one migrated up to the migration before outcomes.
    sqlx::raw_sql("drop schema public cascade; create schema public")
        .execute(&db.pool)
        .await
        .unwrap();
    eventstore::MIGRATOR
        .run_to(BEFORE_OUTCOMES, &db.pool)
        .await
        .unwrap();
    let (id, stream) = (Uuid::now_v7(), Uuid::now_v7());
    let body = patient("DOC-1");
    let remember = "insert into idempotency_keys
         (tenant_id, key, request_hash, response_status, response_body, response_headers)
         values ('default', $1, $2, $3, $4, $5)";
    let first = json!({ "id": id, "version": 1, "position": "7" });
    let headers = json!({ "etag": "\"1\"", "location": format!("/patients/{id}") });
    sqlx::query(remember)
        .bind("old")
        .bind(api::extract::request_hash("POST", "/patients", &body))
        .bind(201_i16)
        .bind(&first)
        .bind(headers)
        .execute(&db.pool)
        .await
        .unwrap();
    let step = format!("saga:{}:consultation:{stream}", Uuid::now_v7());
    sqlx::query(remember)
        .bind(&step)
        .bind(&step)
        .bind(200_i16)
        .bind(json!({ "version": 3 }))
        .bind(json!({}))
        .execute(&db.pool)
        .await
        .unwrap();
    eventstore::MIGRATOR.run(&db.pool).await.unwrap();
    let app = TestApp::start(&db).await;

    let again = app
        .request(Method::POST, "/patients")
        .header("Idempotency-Key", "old")
        .json(&body)
        .send()
        .await
        .unwrap();

    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["etag"], "\"1\"");
    assert_eq!(again.headers()["location"], format!("/patients/{id}"));
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(app.event_count().await, 0, "a replay appends nothing");
    let step_outcome: Value = db
        .scalar("select outcome from idempotency_keys where key = $1", &step)
        .await;
    assert_eq!(
        step_outcome,
        json!({ "id": stream, "version": 3, "position": null })
    );
}
