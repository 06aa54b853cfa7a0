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
