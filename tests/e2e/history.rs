//! What a client sees of a resource's past and of a consultation's present: the audit trail
//! (`GET /{resource}/{id}/history`, paginated, tenant-scoped) and the live status stream
//! (`GET /consultations/{id}/status/stream`, Server-Sent Events that end at a final status).

use std::time::Duration;

use hap_tests::system::{Parts, System};
use hap_tests::tokens::{settings, token};
use hap_tests::{TestApp, TestDb, id_of, patient};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// `method path` as `token`, with `body` as JSON if any and `correlation` as its
/// correlation id: the status and the body.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
    correlation: &str,
) -> (StatusCode, Value) {
    let response = app
        .request(method, path)
        .bearer_auth(token)
        .header("X-Correlation-Id", correlation)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The id a command's answer names.
fn id_in(answer: &Value) -> Uuid {
    answer["id"].as_str().unwrap().parse().unwrap()
}

/// Every page of `path` (a history) as `token`, `limit` items a page: the items of all, and
/// how many pages there were.
async fn every_page(app: &TestApp, path: &str, token: &str, limit: u32) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(next) => format!("{path}?limit={limit}&cursor={next}"),
            None => format!("{path}?limit={limit}"),
        };
        let (status, page) = get(app, &query, token).await;
        assert_eq!(status, 200, "{query}: {page}");
        let got = page["items"].as_array().unwrap();
        assert!(got.len() <= limit as usize, "{page}");
        items.extend(got.iter().cloned());
        pages += 1;
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (items, pages),
        }
    }
}

/// A consultation requested with `token` under `correlation` and scheduled by the sagas, and
/// its patient: both registered for it (their numbers end in `tag`), with a physician.
async fn scheduled_as(system: &System, token: &str, tag: &str, correlation: &str) -> (Uuid, Uuid) {
    let app = &system.app;
    let patient = app.register_patient_as(token, &format!("DOC-{tag}")).await;
    let physician = app.register_physician_as(token, &format!("C-{tag}")).await;
    let at = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let request = json!({"patientId": patient, "physicianId": physician,
                         "startsAt": at, "reason": "check-up"});
    let (status, requested) = send(
        app,
        Method::POST,
        "/consultations",
        token,
        request,
        correlation,
    )
    .await;
    assert_eq!(status, 202, "{requested}");
    let id = id_in(&requested);
    system
        .wait_for_status_as(id, "scheduled", token, Duration::from_secs(30))
        .await;
    (id, patient)
}

/// Each history item's version, event type and correlation id, in order.
fn versions_types_and_correlations(items: &[Value]) -> Vec<(i64, &str, &str)> {
    items
        .iter()
        .map(|item| {
            (
                item["version"].as_i64().unwrap(),
                item["eventType"].as_str().unwrap(),
                item["correlationId"].as_str().unwrap(),
            )
        })
        .collect()
}

async fn get(app: &TestApp, path: &str, token: &str) -> (StatusCode, Value) {
    let response = app
        .request(Method::GET, path)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patients_history_lists_every_change_oldest_first_a_page_at_a_time() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let writer = token("north", "patients:read patients:write");
    let created = app
        .request(Method::POST, "/patients")
        .bearer_auth(&writer)
        .header("X-Correlation-Id", "corr-register")
        .json(&patient("DOC-H1"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = id_of(created).await;
    let updated = app
        .request(Method::PATCH, &format!("/patients/{id}"))
        .bearer_auth(&writer)
        .json(&json!({"phone": "+55 11 99999-0000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200, "{:?}", updated.text().await);

    let (status, trail) = get(&app, &format!("/patients/{id}/history"), &writer).await;
    assert_eq!(status, 200, "{trail}");
    let items = trail["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{trail}");
    assert_eq!(items[0]["version"], 1);
    assert_eq!(items[0]["eventType"], "PatientRegistered");
    assert_eq!(items[0]["actorId"], "user@north");
    assert_eq!(items[0]["correlationId"], "corr-register");
    assert_eq!(items[0]["changes"]["documentNumber"], "DOC-H1");
    assert!(items[0]["occurredAt"].is_string());
    assert_eq!(items[1]["version"], 2);
    assert_eq!(items[1]["eventType"], "PatientUpdated");
    assert_eq!(items[1]["changes"]["phone"], "+55 11 99999-0000");
    assert!(trail["next"].is_null());

    // A page at a time.
    let (_, first) = get(&app, &format!("/patients/{id}/history?limit=1"), &writer).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    assert_eq!(first["items"][0]["version"], 1);
    let next = first["next"].as_str().expect("a next page");
    let (_, second) = get(
        &app,
        &format!("/patients/{id}/history?limit=1&cursor={next}"),
        &writer,
    )
    .await;
    assert_eq!(second["items"][0]["version"], 2);
    assert!(second["next"].is_null(), "{second}");

    // Bad paging, the wrong kind of resource, another clinic, a missing scope.
    for query in ["limit=0", "limit=201", "cursor=x", "cursor=0"] {
        let (status, _) = get(&app, &format!("/patients/{id}/history?{query}"), &writer).await;
        assert_eq!(status, 400, "{query}");
    }
    let others = token("north", "physicians:read consultations:read");
    for path in [
        format!("/physicians/{id}/history"),
        format!("/consultations/{id}/history"),
    ] {
        assert_eq!(get(&app, &path, &others).await.0, 404, "{path}");
    }
    let unknown = format!("/patients/{}/history", Uuid::now_v7());
    assert_eq!(get(&app, &unknown, &writer).await.0, 404);
    let (status, _) = get(&app, &format!("/patients/{id}/history"), &others).await;
    assert_eq!(status, 403);
    let elsewhere = token("south", "patients:read");
    let (status, _) = get(&app, &format!("/patients/{id}/history"), &elsewhere).await;
    assert_eq!(status, 404);
}

/// The `status` events of a stream, in order, until the server ends it.
async fn status_events(response: reqwest::Response) -> Vec<Value> {
    let mut response = response;
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text.split("\n\n")
        .filter(|block| block.lines().any(|line| line == "event: status"))
        .map(|block| {
            let data = block
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .expect("a data line");
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

/// `GET /consultations/{id}/status/stream`, whatever the status.
async fn status_stream(app: &TestApp, id: Uuid) -> reqwest::Response {
    let path = format!("/consultations/{id}/status/stream");
    app.request(Method::GET, &path).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_stream_pushes_each_change_and_ends_at_a_final_status() {
    let db = TestDb::new().await;
    let system = System::start(&db, Duration::from_secs(600), Parts::ALL).await;
    let patient = system.app.register_patient("DOC-S1").await;
    let physician = system.app.register_physician("CRM-S1").await;
    let id = system.app.request_consultation(patient, physician).await;
    system.consultation(id).await;

    let response = status_stream(&system.app, id).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let events = tokio::spawn(status_events(response));

    system
        .wait_for_status(id, "scheduled", Duration::from_secs(30))
        .await;
    let path = format!("/consultations/{id}/cancel");
    system
        .app
        .post_expecting(&path, json!({"reason": "travel"}), 202)
        .await;
    let events = tokio::time::timeout(Duration::from_secs(30), events)
        .await
        .expect("the stream ends after the cancellation")
        .unwrap();

    let statuses: Vec<&str> = events
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"cancelled"), "{events:?}");
    assert!(
        ["requested", "scheduled"].contains(&statuses[0]),
        "{events:?}"
    );
    let versions: Vec<i64> = events
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert!(events.iter().all(|e| e["failureReason"].is_null()));

    // A final status is sent once, and the stream ends at once.
    let again = status_stream(&system.app, id).await;
    let events = status_events(again).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["status"], "cancelled");

    let unknown = status_stream(&system.app, Uuid::now_v7()).await;
    assert_eq!(unknown.status(), 404);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_physicians_history_lists_its_changes_with_who_and_why_a_page_at_a_time() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let writer = token("north", "physicians:read physicians:write");
    let physician = hap_tests::physician("CRM-H1");
    let (status, created) = send(
        &app,
        Method::POST,
        "/physicians",
        &writer,
        physician,
        "corr-hire",
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = id_in(&created);
    let path = format!("/physicians/{id}");
    let changes = [
        json!({"specialty": "neurology"}),
        json!({"name": "Dr. Rui C. Costa"}),
    ];
    for (n, change) in changes.iter().enumerate() {
        let correlation = format!("corr-update-{n}");
        let (status, answer) = send(
            &app,
            Method::PATCH,
            &path,
            &writer,
            change.clone(),
            &correlation,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }

    let history = format!("{path}/history");
    let (status, trail) = get(&app, &history, &writer).await;
    assert_eq!(status, 200, "{trail}");
    assert!(trail["next"].is_null(), "{trail}");
    let items = trail["items"].as_array().unwrap();
    let seen = versions_types_and_correlations(items);
    assert_eq!(
        seen,
        [
            (1, "PhysicianRegistered", "corr-hire"),
            (2, "PhysicianUpdated", "corr-update-0"),
            (3, "PhysicianUpdated", "corr-update-1"),
        ]
    );
    for item in items {
        assert_eq!(item["actorId"], "user@north", "{item}");
        assert!(item["causationId"].is_null(), "a request's own: {item}");
        assert!(item["occurredAt"].is_string(), "{item}");
    }
    assert_eq!(items[0]["changes"]["licenseNumber"], "CRM-H1");
    assert_eq!(items[0]["changes"]["specialty"], "cardiology");
    assert_eq!(items[1]["changes"]["specialty"], "neurology");
    assert!(items[1]["changes"].get("name").is_none(), "{}", items[1]);
    assert_eq!(items[2]["changes"]["name"], "Dr. Rui C. Costa");
    assert!(
        items[2]["changes"].get("specialty").is_none(),
        "{}",
        items[2]
    );

    // A page at a time, following `next`: the same trail.
    let (paged, pages) = every_page(&app, &history, &writer, 2).await;
    assert_eq!(pages, 2);
    assert_eq!(&paged, items);

    // Another clinic's operator, and a token without the scope.
    let (status, _) = get(&app, &history, &token("south", "physicians:read")).await;
    assert_eq!(status, 404);
    let (status, _) = get(&app, &history, &token("north", "patients:read")).await;
    assert_eq!(status, 403);
    let unknown = format!("/physicians/{}/history", Uuid::now_v7());
    assert_eq!(get(&app, &unknown, &writer).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consultations_history_shows_the_request_and_the_sagas_steps_with_their_causes() {
    let db = TestDb::new().await;
    let system = System::start_with(&db, Duration::from_secs(600), Parts::ALL, settings()).await;
    let app = &system.app;
    let all = "patients:read patients:write physicians:read physicians:write \
               consultations:read consultations:write";
    let north = token("north", all);
    let (id, patient) = scheduled_as(&system, &north, "H2", "corr-book").await;
    let path = format!("/consultations/{id}/cancel");
    let reason = json!({"reason": "travel"});
    let (status, _) = send(app, Method::POST, &path, &north, reason, "corr-cancel").await;
    assert_eq!(status, 202);
    system
        .wait_for_status_as(id, "cancelled", &north, Duration::from_secs(30))
        .await;

    let history = format!("/consultations/{id}/history");
    let reader = token("north", "consultations:read");
    let (status, trail) = get(app, &history, &reader).await;
    assert_eq!(status, 200, "{trail}");
    let items = trail["items"].as_array().unwrap();
    let seen = versions_types_and_correlations(items);
    assert_eq!(
        seen,
        [
            (1, "ConsultationSchedulingStarted", "corr-book"),
            (2, "ConsultationScheduled", "corr-book"),
            (3, "ConsultationCancellationRequested", "corr-cancel"),
            (4, "ConsultationCancelled", "corr-cancel"),
        ],
        "{trail}"
    );
    // The saga's steps keep the actor of the request that started them, and name their cause.
    for item in items {
        assert_eq!(item["actorId"], "user@north", "{item}");
    }
    assert!(items[0]["causationId"].is_null(), "{}", items[0]);
    assert!(items[1]["causationId"].is_string(), "{}", items[1]);
    assert!(items[3]["causationId"].is_string(), "{}", items[3]);
    assert_eq!(items[0]["changes"]["patientId"], patient.to_string());
    assert_eq!(items[0]["changes"]["reason"], "check-up");
    assert_eq!(
        items[1]["changes"]["startsAt"],
        items[0]["changes"]["startsAt"]
    );
    assert_eq!(items[2]["changes"]["reason"], "travel");

    let (paged, pages) = every_page(app, &history, &reader, 3).await;
    assert_eq!(pages, 2);
    assert_eq!(&paged, items);
    let (_, first) = get(app, &format!("{history}?limit=1"), &reader).await;
    assert_eq!(first["items"][0]["version"], 1);
    assert!(first["next"].is_string(), "{first}");

    // Another clinic's, the wrong scope, the wrong kind of resource.
    let (status, _) = get(app, &history, &token("south", "consultations:read")).await;
    assert_eq!(status, 404);
    let (status, _) = get(app, &history, &token("north", "patients:read")).await;
    assert_eq!(status, 403);
    let as_patient = format!("/patients/{id}/history");
    assert_eq!(get(app, &as_patient, &token("north", all)).await.0, 404);
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_stream_is_its_tenants_and_needs_consultations_read() {
    let db = TestDb::new().await;
    let system = System::start_with(&db, Duration::from_secs(600), Parts::ALL, settings()).await;
    let app = &system.app;
    let north = token(
        "north",
        "patients:write physicians:write consultations:read consultations:write",
    );
    let (id, _) = scheduled_as(&system, &north, "S2", "corr-s2").await;

    let path = format!("/consultations/{id}/status/stream");
    let open = |token: Option<String>| {
        let mut request = app.request(Method::GET, &path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // Its tenant's reader gets the stream, which starts with the status now.
    let mut response = open(Some(token("north", "consultations:read")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk())
        .await
        .expect("the status at once")
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(first.contains("event: status"), "{first}");
    assert!(first.contains(r#""status":"scheduled""#), "{first}");
    drop(response);

    // Another clinic's reader: as if it did not exist, with no status in the answer.
    let elsewhere = open(Some(token("south", "consultations:read")))
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);
    let body = elsewhere.text().await.unwrap();
    assert!(!body.contains("scheduled"), "{body}");
    // Its own clinic's token without consultations:read, and no token at all.
    let unscoped = open(Some(token("north", "patients:read"))).await.unwrap();
    assert_eq!(unscoped.status(), 403);
    let body = unscoped.text().await.unwrap();
    assert!(body.contains("consultations:read"), "{body}");
    assert_eq!(open(None).await.unwrap().status(), 401);
    system.stop().await;
}
