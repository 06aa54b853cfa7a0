//! The query API over real HTTP and a real PostgreSQL. No projector runs here: each test
//! writes the read-model rows (schema `rm_test`) and the projectors' progress
//! (`stream_versions`, `Progress::committed`) itself, as a projector would.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hap_tests::{TestApp, TestDb, patient, start_app};
use projections::progress::{Commit, Touched};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const UPDATED_AT: &str = "2026-01-02T03:04:05Z";

async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "errors are problem+json"
    );
    response.json().await.unwrap()
}

/// Asserts that `GET` of each of `paths` is a `status` problem of type `kind`.
async fn assert_problems(
    app: &TestApp,
    paths: impl IntoIterator<Item = String>,
    status: StatusCode,
    kind: &str,
) {
    for path in paths {
        let body = problem(get(app, &path).await, status).await;
        assert_eq!(body["type"], kind, "{path}");
    }
}

async fn get(app: &TestApp, path: &str) -> Response {
    app.request(Method::GET, path).send().await.unwrap()
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = get(app, path).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.unwrap()
}

/// GETs one resource and asserts that it is answered as `body` with `etag`.
async fn assert_answers(app: &TestApp, path: &str, etag: &str, body: Value) {
    let response = get(app, path).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    assert_eq!(response.headers()["etag"], etag);
    assert_eq!(response.json::<Value>().await.unwrap(), body);
}

async fn get_at(app: &TestApp, path: &str, min_position: &str) -> Response {
    app.request(Method::GET, path)
        .header("X-Min-Position", min_position)
        .send()
        .await
        .unwrap()
}

fn at(instant: &str) -> DateTime<Utc> {
    instant.parse().unwrap()
}

async fn insert_patient(read: &PgPool, name: &str, status: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into patients (id, name, birth_date, document_number, email, phone, status,
                               version, updated_at)
         values ($1, $2, '1990-05-01', $3, 'ana@example.org', null, $4, 1, $5)",
    )
    .bind(id)
    .bind(name)
    .bind(format!("DOC-{id}"))
    .bind(status)
    .bind(at(UPDATED_AT))
    .execute(read)
    .await
    .unwrap();
    processed(read, "patients", id, 1).await;
    id
}

async fn insert_physician(read: &PgPool, specialty: &str, status: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into physicians (id, name, specialty, license_number, status, version,
                                 updated_at)
         values ($1, 'Dr. Rui Costa', $2, $3, $4, 2, $5)",
    )
    .bind(id)
    .bind(specialty)
    .bind(format!("LIC-{id}"))
    .bind(status)
    .bind(at(UPDATED_AT))
    .execute(read)
    .await
    .unwrap();
    processed(read, "physicians", id, 2).await;
    id
}

async fn insert_consultation(
    read: &PgPool,
    patient: Uuid,
    physician: Uuid,
    starts_at: &str,
    status: &str,
) -> Uuid {
    let id = Uuid::now_v7();
    let starts_at = at(starts_at);
    sqlx::query(
        "insert into consultations (id, patient_id, patient_name, physician_id, physician_name,
                                    starts_at, ends_at, status, reason, notes, failure_reason,
                                    failure_detail, cancellation_reason, version, updated_at)
         values ($1, $2, 'Ana Lima', $3, 'Dr. Rui Costa', $4, $5, $6, 'checkup', null,
                 'physician_unavailable', 'the slot is taken', null, 3, $7)",
    )
    .bind(id)
    .bind(patient)
    .bind(physician)
    .bind(starts_at)
    .bind(starts_at + chrono::Duration::minutes(30))
    .bind(status)
    .bind(at(UPDATED_AT))
    .execute(read)
    .await
    .unwrap();
    processed(read, "consultations", id, 3).await;
    id
}

async fn insert_record(read: &PgPool, consultation: Uuid, patient: Uuid, physician: Uuid) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into records (id, consultation_id, patient_id, physician_id, content, status,
                              version, updated_at)
         values ($1, $2, $3, $4, 'Blood pressure normal.', 'active', 1, $5)",
    )
    .bind(id)
    .bind(consultation)
    .bind(patient)
    .bind(physician)
    .bind(at(UPDATED_AT))
    .execute(read)
    .await
    .unwrap();
    id
}

/// Records that `projection` applied `stream` up to `version`, as a projector's commit does.
async fn processed(read: &PgPool, projection: &str, stream: Uuid, version: i64) {
    sqlx::query(
        "insert into stream_versions (projection, stream_id, version, tenant_id)
         values ($1, $2, $3, 'default')
         on conflict (stream_id, projection) do update set version = excluded.version",
    )
    .bind(projection)
    .bind(stream)
    .bind(version)
    .execute(read)
    .await
    .unwrap();
}

/// Renames patient `id` to Ana Souza at version 2 in the read model, as a projector would,
/// without reporting the commit to the process's caches.
async fn rename_unreported(read: &PgPool, id: Uuid) {
    sqlx::query("update patients set name = 'Ana Souza', version = 2 where id = $1")
        .bind(id)
        .execute(read)
        .await
        .unwrap();
}

/// The API over a database of the test's own, waiting up to `ms` for an `X-Min-Position`.
async fn start_app_waiting(ms: u64) -> (TestDb, TestApp) {
    let db = TestDb::new().await;
    let mut settings = hap_tests::insecure_settings();
    settings.consistency_wait_ms = ms;
    let app = TestApp::start_with(&db, settings).await;
    (db, app)
}

/// Registers a patient through the command API; returns its id and the position token.
async fn register(app: &TestApp, document_number: &str) -> (Uuid, String) {
    let response = app
        .post_expecting("/patients", patient(document_number), 201)
        .await;
    let body: Value = response.json().await.unwrap();
    (
        body["id"].as_str().unwrap().parse().unwrap(),
        body["position"].as_str().unwrap().to_owned(),
    )
}

/// A patient row for `id`, as the patients projection writes one on registration, but without
/// its version row: queries see it only once `processed` records that (and its tenant).
async fn project_registration(read: &PgPool, id: Uuid, name: &str) {
    sqlx::query(
        "insert into patients (id, name, birth_date, document_number, email, phone, status,
                               version, updated_at)
         values ($1, $2, '1990-05-01', $3, null, null, 'active', 1, now())",
    )
    .bind(id)
    .bind(name)
    .bind(format!("DOC-{id}"))
    .execute(read)
    .await
    .unwrap();
}

fn ids(page: &Value) -> Vec<Uuid> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Follows `nextCursor` from `path` (which has a query string) to the last page.
async fn all_pages(app: &TestApp, path: &str) -> Vec<Vec<Uuid>> {
    let mut pages = vec![];
    let mut next = path.to_owned();
    loop {
        let page = get_json(app, &next).await;
        pages.push(ids(&page));
        match page["nextCursor"].as_str() {
            Some(cursor) => next = format!("{path}&cursor={cursor}"),
            None => {
                assert!(page["nextCursor"].is_null());
                return pages;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_is_answered_with_every_field_and_its_version_as_etag() {
    let (_db, app) = start_app().await;
    let id = insert_patient(&app.read.pool, "Ana Lima", "active").await;

    let expected = json!({
        "id": id, "name": "Ana Lima", "birthDate": "1990-05-01",
        "documentNumber": format!("DOC-{id}"), "email": "ana@example.org", "phone": null,
        "status": "active", "version": 1, "updatedAt": UPDATED_AT,
    });
    assert_answers(&app, &format!("/patients/{id}"), "\"1\"", expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_with_the_current_version_answers_304() {
    let (_db, app) = start_app().await;
    let id = insert_patient(&app.read.pool, "Ana Lima", "active").await;
    let path = format!("/patients/{id}");
    let conditional = |etag: &'static str| {
        app.request(Method::GET, &path)
            .header("If-None-Match", etag)
            .send()
    };

    let current = conditional("\"1\"").await.unwrap();
    let other = conditional("\"0\"").await.unwrap();

    assert_eq!(current.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(current.headers()["etag"], "\"1\"");
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_physician_is_answered_with_every_field_and_its_version_as_etag() {
    let (_db, app) = start_app().await;
    let id = insert_physician(&app.read.pool, "cardiology", "inactive").await;

    let expected = json!({
        "id": id, "name": "Dr. Rui Costa", "specialty": "cardiology",
        "licenseNumber": format!("LIC-{id}"), "status": "inactive", "version": 2,
        "updatedAt": UPDATED_AT,
    });
    assert_answers(&app, &format!("/physicians/{id}"), "\"2\"", expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consultation_is_answered_with_every_field_and_its_version_as_etag() {
    let (_db, app) = start_app().await;
    let read = &app.read.pool;
    let (patient, physician) = (Uuid::now_v7(), Uuid::now_v7());
    let id = insert_consultation(read, patient, physician, "2026-03-01T09:00:00Z", "failed").await;

    let expected = json!({
        "id": id, "patientId": patient, "patientName": "Ana Lima",
        "physicianId": physician, "physicianName": "Dr. Rui Costa",
        "startsAt": "2026-03-01T09:00:00Z", "endsAt": "2026-03-01T09:30:00Z",
        "status": "failed", "reason": "checkup", "notes": null,
        "failureReason": "physician_unavailable", "failureDetail": "the slot is taken",
        "cancellationReason": null, "version": 3, "updatedAt": UPDATED_AT,
    });
    assert_answers(&app, &format!("/consultations/{id}"), "\"3\"", expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_and_a_consultations_records_are_answered_with_every_field() {
    let (_db, app) = start_app().await;
    let read = &app.read.pool;
    let (patient, physician) = (Uuid::now_v7(), Uuid::now_v7());
    let consultation =
        insert_consultation(read, patient, physician, "2026-03-01T09:00:00Z", "done").await;
    let first = insert_record(read, consultation, patient, physician).await;
    let second = insert_record(read, consultation, patient, physician).await;
    let other = insert_consultation(read, patient, physician, "2026-03-02T09:00:00Z", "done").await;
    insert_record(read, other, patient, physician).await;

    let record = json!({
        "id": first, "consultationId": consultation, "patientId": patient,
        "physicianId": physician, "content": "Blood pressure normal.", "status": "active",
        "version": 1, "updatedAt": UPDATED_AT,
    });
    assert_answers(&app, &format!("/records/{first}"), "\"1\"", record.clone()).await;
    let listed = get_json(&app, &format!("/consultations/{consultation}/records")).await;
    assert_eq!(ids(&listed), [first, second]);
    assert_eq!(listed["items"][0], record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_read_model_does_not_have_is_a_404_problem() {
    let (_db, app) = start_app().await;
    let unknown = Uuid::now_v7();

    let paths = [
        format!("/patients/{unknown}"),
        format!("/patients/{unknown}/consultations"),
        format!("/physicians/{unknown}"),
        format!("/physicians/{unknown}/agenda?date=2026-03-01"),
        format!("/consultations/{unknown}"),
        format!("/consultations/{unknown}/records"),
        format!("/records/{unknown}"),
    ];
    assert_problems(&app, paths, StatusCode::NOT_FOUND, "/problems/not-found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_ids_and_parameters_are_400_problems() {
    let (_db, app) = start_app().await;
    let physician = insert_physician(&app.read.pool, "cardiology", "active").await;

    let paths = [
        "/patients/not-a-uuid".to_owned(),
        "/patients/not-a-uuid/consultations".to_owned(),
        "/physicians/42".to_owned(),
        "/consultations/not-a-uuid".to_owned(),
        "/consultations/not-a-uuid/records".to_owned(),
        "/records/not-a-uuid".to_owned(),
        "/patients?limit=0".to_owned(),
        "/patients?limit=201".to_owned(),
        "/patients?limit=ten".to_owned(),
        "/patients?limit=-1".to_owned(),
        "/patients?cursor=not-a-cursor".to_owned(),
        "/patients?status=asleep".to_owned(),
        "/patients?unknown=1".to_owned(),
        "/physicians?status=retired".to_owned(),
        "/consultations?status=postponed".to_owned(),
        "/consultations?patientId=nope".to_owned(),
        "/consultations?from=yesterday".to_owned(),
        format!("/physicians/{physician}/agenda"),
        format!("/physicians/{physician}/agenda?date=2026-13-01"),
        format!("/physicians/{physician}/agenda?date=01/03/2026"),
    ];
    assert_problems(
        &app,
        paths,
        StatusCode::BAD_REQUEST,
        "/problems/bad-request",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_are_paged_in_creation_order_with_status_and_name_filters() {
    let (_db, app) = start_app().await;
    let read = &app.read.pool;
    let mut expected = vec![];
    for n in 0..7 {
        // Names match the prefix in any case; the inactive and the other names are left out.
        let name = if n % 2 == 0 { "ANA Lima" } else { "ana Souza" };
        expected.push(insert_patient(read, name, "active").await);
        insert_patient(read, "Ana Inactive", "inactive").await;
        insert_patient(read, "Bruna Lima", "active").await;
    }
    // A `like` wildcard in the prefix matches only itself.
    insert_patient(read, "Anais", "active").await;

    let pages = all_pages(&app, "/patients?status=active&name=aNa%20&limit=3").await;

    assert_eq!(pages.len(), 3, "{pages:?}");
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), expected);
    let wildcard = get_json(&app, "/patients?name=An_is").await;
    assert!(ids(&wildcard).is_empty(), "{wildcard}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physicians_are_paged_with_specialty_and_status_filters() {
    let (_db, app) = start_app().await;
    let read = &app.read.pool;
    let mut expected = vec![];
    for _ in 0..5 {
        expected.push(insert_physician(read, "cardiology", "active").await);
        insert_physician(read, "cardiology", "inactive").await;
        insert_physician(read, "dermatology", "active").await;
    }

    let pages = all_pages(
        &app,
        "/physicians?specialty=cardiology&status=active&limit=2",
    )
    .await;
    let default = get_json(&app, "/physicians").await;

    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), expected);
    assert_eq!(ids(&default).len(), 15, "50 a page by default");
    assert!(default["nextCursor"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consultations_are_paged_with_person_status_and_time_filters() {
    let (_db, app) = start_app().await;
    let read = &app.read.pool;
    let (patient, other_patient, physician) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut expected = vec![];
    for day in 10..17 {
        let starts_at = format!("2026-03-{day}T09:00:00Z");
        expected.push(insert_consultation(read, patient, physician, &starts_at, "scheduled").await);
        insert_consultation(read, patient, physician, &starts_at, "cancelled").await;
        insert_consultation(read, other_patient, physician, &starts_at, "scheduled").await;
    }
    // Outside [from, to): the bound `to` itself is excluded.
    insert_consultation(
        read,
        patient,
        physician,
        "2026-03-09T23:59:59Z",
        "scheduled",
    )
    .await;
    insert_consultation(
        read,
        patient,
        physician,
        "2026-03-17T00:00:00Z",
        "scheduled",
    )
    .await;

    let pages = all_pages(
        &app,
        &format!(
            "/consultations?patientId={patient}&physicianId={physician}&status=scheduled\
             &from=2026-03-10T00:00:00Z&to=2026-03-17T00:00:00Z&limit=3"
        ),
    )
    .await;

    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patients_consultations_are_listed_latest_start_first() {
    let (_db, app) = start_app().await;
    let read = &app.read.pool;
    let patient = insert_patient(read, "Ana Lima", "active").await;
    let physician = Uuid::now_v7();
    let march = insert_consultation(read, patient, physician, "2026-03-01T09:00:00Z", "done").await;
    let may = insert_consultation(
        read,
        patient,
        physician,
        "2026-05-01T09:00:00Z",
        "requested",
    )
    .await;
    let april = insert_consultation(
        read,
        patient,
        physician,
        "2026-04-01T09:00:00Z",
        "scheduled",
    )
    .await;
    insert_consultation(
        read,
        Uuid::now_v7(),
        physician,
        "2026-04-02T09:00:00Z",
        "done",
    )
    .await;

    let listed = get_json(&app, &format!("/patients/{patient}/consultations")).await;
    let single = get_json(&app, &format!("/consultations/{april}")).await;

    assert_eq!(ids(&listed), [may, april, march]);
    assert_eq!(
        listed["items"][1], single,
        "items are shaped as GET /consultations/{{id}}"
    );
    assert!(listed.get("nextCursor").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agenda_shows_the_consultations_starting_on_one_utc_day_in_order() {
    let (_db, app) = start_app().await;
    let read = &app.read.pool;
    let physician = insert_physician(read, "cardiology", "active").await;
    let patient = Uuid::now_v7();
    insert_consultation(
        read,
        patient,
        physician,
        "2026-03-01T23:59:59Z",
        "scheduled",
    )
    .await;
    let afternoon = insert_consultation(
        read,
        patient,
        physician,
        "2026-03-02T15:00:00Z",
        "scheduled",
    )
    .await;
    let midnight = insert_consultation(
        read,
        patient,
        physician,
        "2026-03-02T00:00:00Z",
        "requested",
    )
    .await;
    insert_consultation(
        read,
        patient,
        physician,
        "2026-03-03T00:00:00Z",
        "scheduled",
    )
    .await;
    insert_consultation(
        read,
        patient,
        Uuid::now_v7(),
        "2026-03-02T10:00:00Z",
        "scheduled",
    )
    .await;

    let agenda = get_json(
        &app,
        &format!("/physicians/{physician}/agenda?date=2026-03-02"),
    )
    .await;

    assert_eq!(
        agenda,
        json!({
            "physicianId": physician,
            "date": "2026-03-02",
            "consultations": [
                {
                    "id": midnight, "startsAt": "2026-03-02T00:00:00Z",
                    "endsAt": "2026-03-02T00:30:00Z", "status": "requested",
                    "patientId": patient, "patientName": "Ana Lima",
                },
                {
                    "id": afternoon, "startsAt": "2026-03-02T15:00:00Z",
                    "endsAt": "2026-03-02T15:30:00Z", "status": "scheduled",
                    "patientId": patient, "patientName": "Ana Lima",
                },
            ],
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_position_already_applied_is_answered_at_once_bypassing_the_cache() {
    let (_db, app) = start_app().await;
    // The cache works where the projectors run and report their commits: say they do here.
    app.read.progress.start_projecting();
    let (id, position) = register(&app, "DOC-1").await;
    project_registration(&app.read.pool, id, "Ana Lima").await;
    processed(&app.read.pool, "patients", id, 1).await;
    let path = format!("/patients/{id}");
    get_json(&app, &path).await;
    // Changed without a report to the cache, which therefore keeps the old name.
    rename_unreported(&app.read.pool, id).await;
    let cached = get_json(&app, &path).await;

    let started = Instant::now();
    let response = get_at(&app, &path, &position).await;
    let elapsed = started.elapsed();

    assert_eq!(
        cached["name"], "Ana Lima",
        "the cache answers without a position"
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(response.headers()["etag"], "\"2\"");
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "Ana Souza");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_position_waits_until_the_projections_apply_its_event() {
    let (_db, app) = start_app().await;
    let (id, position) = register(&app, "DOC-1").await;
    let read = app.read.clone();
    let projector = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        project_registration(&read.pool, id, "Ana Lima").await;
        processed(&read.pool, "patients", id, 1).await;
        processed(&read.pool, "consultations", id, 1).await;
        read.progress.committed(Commit {
            projection: "patients",
            streams: vec![(id, 1)],
            touched: vec![],
        });
    });

    let started = Instant::now();
    let response = get_at(&app, &format!("/patients/{id}"), &position).await;
    let elapsed = started.elapsed();

    assert_eq!(response.status(), StatusCode::OK);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "Ana Lima");
    let consultations = get_at(&app, &format!("/patients/{id}/consultations"), &position).await;
    assert_eq!(consultations.status(), StatusCode::OK);
    projector.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_position_never_applied_is_a_503_with_retry_after_after_the_wait() {
    let (_db, app) = start_app_waiting(300).await;
    let (id, position) = register(&app, "DOC-1").await;
    project_registration(&app.read.pool, id, "Ana Lima").await;

    let started = Instant::now();
    let response = get_at(&app, &format!("/patients/{id}"), &position).await;
    let elapsed = started.elapsed();

    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert_eq!(response.headers()["retry-after"], "1");
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["type"], "/problems/read-model-behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_position_waits_only_for_the_projections_the_route_reads() {
    let (_db, app) = start_app_waiting(5_000).await;
    let (_, position) = register(&app, "DOC-1").await;
    insert_physician(&app.read.pool, "cardiology", "active").await;

    let started = Instant::now();
    let response = get_at(&app, "/physicians", &position).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the physicians projection does not receive patient events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_or_unknown_min_position_is_a_400_problem() {
    let (_db, app) = start_app().await;
    let id = insert_patient(&app.read.pool, "Ana Lima", "active").await;

    for token in ["abc", "0", "-3", "1.5", "999999"] {
        let response = get_at(&app, &format!("/patients/{id}"), token).await;
        let body = problem(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["type"], "/problems/bad-request", "{token}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_resource_is_answered_anew_once_a_commit_touches_it() {
    let (_db, app) = start_app().await;
    // The cache works where the projectors run and report their commits: say they do here.
    app.read.progress.start_projecting();
    let read = &app.read.pool;
    let id = insert_patient(read, "Ana Lima", "active").await;
    let path = format!("/patients/{id}");
    get_json(&app, &path).await;
    rename_unreported(read, id).await;
    let unreported = get_json(&app, &path).await;

    app.read.progress.committed(Commit {
        projection: "patients",
        streams: vec![(id, 2)],
        touched: vec![Touched {
            resource: "patient",
            id,
        }],
    });
    let response = get(&app, &path).await;

    assert_eq!(unreported["name"], "Ana Lima", "the cache answered");
    assert_eq!(response.headers()["etag"], "\"2\"");
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "Ana Souza");
    let metrics = get(&app, "/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("hap_query_cache_total{result=\"hit\"}"),
        "{metrics}"
    );
}

/// A query of two projections (a patient's consultations) woken by the first commit, then
/// polling, then woken by the second: the wait ends, with both applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_two_projections_woken_one_at_a_time_across_polls_ends_when_both_commit() {
    let db = TestDb::new().await;
    let read = hap_tests::read_model(&db, "waits").await;
    read.progress.start_projecting();
    let stream = Uuid::now_v7();
    let waiting = {
        let read = read.clone();
        tokio::spawn(async move {
            read.progress
                .wait_for(
                    &read.pool,
                    &["patients", "consultations"],
                    (stream, 1),
                    Duration::from_secs(10),
                    false,
                )
                .await
        })
    };
    let commit = |projection| Commit {
        projection,
        streams: vec![(stream, 1)],
        touched: vec![],
    };

    tokio::time::sleep(Duration::from_millis(20)).await;
    read.progress.committed(commit("patients"));
    // Longer than the first poll, so the wait looks at the database again in between.
    tokio::time::sleep(projections::progress::SAFETY_POLL + Duration::from_millis(150)).await;
    read.progress.committed(commit("consultations"));

    assert!(
        waiting.await.unwrap().unwrap(),
        "both projections reached it"
    );
}

/// A rebuild (another process, as `hap rebuild` is) swaps the read model's tables and reports
/// no row: the running service's cache must not go on answering what the old tables held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_resource_is_answered_anew_once_a_rebuild_swapped_its_table() {
    let (db, app) = start_app().await;
    app.read.progress.start_projecting();
    let id = app.register_patient("DOC-1").await;
    // The read model went wrong (no projector ran here): the row says what no event did.
    sqlx::query(
        "insert into patients (id, name, birth_date, document_number, status, version,
                               updated_at)
         values ($1, 'Wrong Name', '1990-05-01', 'DOC-1', 'active', 1, now())",
    )
    .bind(id)
    .execute(&app.read.pool)
    .await
    .unwrap();
    processed(&app.read.pool, "patients", id, 1).await;
    let path = format!("/patients/{id}");
    // Answered twice from the row, so the second answer came from the cache.
    get_json(&app, &path).await;
    assert_eq!(get_json(&app, &path).await["name"], "Wrong Name");

    let store = hap_tests::store(&db.pool);
    let schema = projections::schema::schema_name("test");
    projections::rebuild::rebuild(
        &store,
        &db.url,
        &schema,
        &["patients"],
        false,
        false,
        projections::rebuild::CHUNK_EVENTS,
    )
    .await
    .unwrap();

    let mended = hap_tests::eventually(Duration::from_secs(10), || async {
        get_json(&app, &path).await["name"] == "Ana Lima"
    })
    .await;
    assert!(mended, "the cache let go of the row the rebuild replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_query_route() {
    let (_db, app) = start_app().await;

    let document = get_json(&app, "/openapi.json").await;

    for path in [
        "/patients",
        "/patients/{id}",
        "/patients/{id}/consultations",
        "/physicians",
        "/physicians/{id}",
        "/physicians/{id}/agenda",
        "/consultations",
        "/consultations/{id}",
        "/consultations/{id}/records",
        "/records/{id}",
        "/patients/{id}/history",
        "/physicians/{id}/history",
        "/consultations/{id}/history",
        "/consultations/{id}/status/stream",
    ] {
        assert!(document["paths"][path]["get"].is_object(), "{path}");
    }
    let parameters = document["paths"]["/consultations"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = parameters
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in [
        "patientId",
        "physicianId",
        "status",
        "from",
        "to",
        "limit",
        "cursor",
    ] {
        assert!(names.contains(&name), "{names:?}");
    }
    assert!(names.contains(&"X-Min-Position"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_projectors_in_the_process_the_cache_is_bypassed() {
    let (_db, app) = start_app().await;
    let read = &app.read.pool;
    let id = insert_patient(read, "Ana Lima", "active").await;
    let path = format!("/patients/{id}");
    get_json(&app, &path).await;

    // Another process's projector changes the row; nothing reports it to this process.
    rename_unreported(read, id).await;

    assert_eq!(get_json(&app, &path).await["name"], "Ana Souza");
}
