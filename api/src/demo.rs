//! `hap demo`: fills a system with realistic sample data through the real command path (the
//! same router `hap serve` runs, called in-process), and prints what it did.

use anyhow::Context;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{Duration, Timelike, Utc};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const PHYSICIANS: [(&str, &str); 4] = [
    ("Dra. Helena Prado", "cardiology"),
    ("Dr. Tomás Ribeiro", "dermatology"),
    ("Dra. Sofia Almeida", "pediatrics"),
    ("Dr. Rui Carvalho", "orthopedics"),
];

const PATIENTS: [(&str, &str); 10] = [
    ("Ana Beatriz Lima", "1987-03-14"),
    ("Bruno Costa", "1992-11-02"),
    ("Carla Mendes", "1979-06-21"),
    ("Diego Fernandes", "2001-01-30"),
    ("Eduarda Rocha", "1995-08-09"),
    ("Felipe Nunes", "1968-12-17"),
    ("Gabriela Souza", "2015-04-05"),
    ("Henrique Dias", "1983-09-26"),
    ("Isabela Martins", "1990-02-11"),
    ("João Pedro Alves", "1975-07-19"),
];

/// Sends one command through the router; anything but `expected` is an error.
async fn send(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: Value,
    expected: StatusCode,
) -> anyhow::Result<Value> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("x-correlation-id", "hap-demo")
        .body(Body::from(body.to_string()))
        .expect("a valid request");
    let response = router.clone().oneshot(request).await?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    anyhow::ensure!(
        status == expected,
        "{method} {path} answered {status}: {value}"
    );
    Ok(value)
}

fn id(value: &Value) -> anyhow::Result<Uuid> {
    value["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("a command response without an id")
}

/// Registers physicians and patients, updates some, deactivates one and requests consultations.
pub async fn run(router: axum::Router, store: &eventstore::EventStore) -> anyhow::Result<()> {
    // Document and license numbers are unique: a suffix lets the demo run more than once.
    let run = &Uuid::now_v7().simple().to_string()[20..];
    let mut physicians = vec![];
    for (n, (name, specialty)) in PHYSICIANS.iter().enumerate() {
        let body = json!({"name": name, "specialty": specialty,
                          "licenseNumber": format!("CRM-{run}-{n}")});
        physicians.push(id(&send(
            &router,
            "POST",
            "/physicians",
            body,
            StatusCode::CREATED,
        )
        .await?)?);
        println!("registered physician {name} ({specialty})");
    }
    let mut patients = vec![];
    for (n, (name, birth)) in PATIENTS.iter().enumerate() {
        let email = format!(
            "{}@example.org",
            name.split(' ').next().unwrap_or("patient").to_lowercase()
        );
        let body = json!({"name": name, "birthDate": birth,
                          "documentNumber": format!("DOC-{run}-{n}"), "email": email});
        patients.push(id(&send(
            &router,
            "POST",
            "/patients",
            body,
            StatusCode::CREATED,
        )
        .await?)?);
        println!("registered patient {name}");
    }
    send(
        &router,
        "PATCH",
        &format!("/patients/{}", patients[1]),
        json!({"phone": "+55 11 98765-4321"}),
        StatusCode::OK,
    )
    .await?;
    println!("updated the phone of {}", PATIENTS[1].0);
    send(
        &router,
        "PATCH",
        &format!("/physicians/{}", physicians[3]),
        json!({"specialty": "sports medicine"}),
        StatusCode::OK,
    )
    .await?;
    println!("updated the specialty of {}", PHYSICIANS[3].0);

    let tomorrow = (Utc::now() + Duration::days(1))
        .with_hour(9)
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .context("a valid time")?;
    let mut requested = 0;
    for (n, patient) in patients.iter().enumerate() {
        let physician = physicians[n % physicians.len()];
        let starts_at = tomorrow + Duration::minutes(30 * (n / physicians.len()) as i64);
        let body = json!({"patientId": patient, "physicianId": physician,
                          "startsAt": starts_at.to_rfc3339(), "durationMinutes": 30,
                          "reason": "routine check-up"});
        send(
            &router,
            "POST",
            "/consultations",
            body,
            StatusCode::ACCEPTED,
        )
        .await?;
        requested += 1;
    }
    println!("requested {requested} consultations for tomorrow from 09:00 UTC");
    send(
        &router,
        "POST",
        &format!("/patients/{}/deactivate", patients[9]),
        json!({"reason": "moved abroad"}),
        StatusCode::OK,
    )
    .await?;
    println!("deactivated patient {}", PATIENTS[9].0);
    // A running server's publisher lives in another process: wake it rather than let it find
    // the demo's events on its next poll.
    sqlx::query("select pg_notify($1, '')")
        .bind(eventstore::wakeup::CHANNEL)
        .execute(store.pool())
        .await
        .context("Failed to notify the publisher")?;
    println!(
        "done: {} physicians, {} patients, {requested} consultations; try GET /patients",
        physicians.len(),
        patients.len()
    );
    Ok(())
}
