//! Nobody reads or writes clinical data anonymously, and one clinic never sees another's:
//! every way a token can be wrong, the scope each route needs, two tenants side by side, who
//! acted in the store and on the wire, and what the logs never say.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hap_tests::system::{Parts, System};
use hap_tests::tokens::{AUDIENCE, DATA_KEY, ISSUER, SECRET, settings, token};
use hap_tests::{TestApp, TestDb, id_of, patient};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

const ALL: &str = "patients:read patients:write physicians:read physicians:write \
                   consultations:read consultations:write records:read records:write";

/// A token signed with `secret`, carrying `claims`.
fn signed(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(tenant: &str, scope: &str) -> Value {
    json!({"sub": format!("user@{tenant}"), "tenant": tenant, "scope": scope,
           "iss": ISSUER, "aud": AUDIENCE,
           "exp": jsonwebtoken::get_current_timestamp() + 600})
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.request(method, path).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_token_can_be_wrong_is_a_401_with_a_bearer_challenge() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let expired = {
        let mut c = claims("a", ALL);
        c["exp"] = json!(jsonwebtoken::get_current_timestamp() - 600);
        signed(SECRET, c)
    };
    let unsigned = {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims("a", ALL).to_string());
        format!("{header}.{payload}.")
    };
    let wrong_issuer = {
        let mut c = claims("a", ALL);
        c["iss"] = json!("https://elsewhere.example");
        signed(SECRET, c)
    };
    let wrong_audience = {
        let mut c = claims("a", ALL);
        c["aud"] = json!("another-service");
        signed(SECRET, c)
    };
    let no_tenant = {
        let mut c = claims("a", ALL);
        c.as_object_mut().unwrap().remove("tenant");
        signed(SECRET, c)
    };
    let cases = [
        ("no token", None),
        ("not bearer", Some("Basic dXNlcjpwYXNz".to_owned())),
        ("malformed", Some("Bearer not.a.token".to_owned())),
        ("expired", Some(format!("Bearer {expired}"))),
        (
            "bad signature",
            Some(format!(
                "Bearer {}",
                signed(
                    "another-secret-that-is-long-enough-0123456789",
                    claims("a", ALL)
                )
            )),
        ),
        ("wrong issuer", Some(format!("Bearer {wrong_issuer}"))),
        ("wrong audience", Some(format!("Bearer {wrong_audience}"))),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        ("no tenant", Some(format!("Bearer {no_tenant}"))),
    ];
    for (case, authorization) in cases {
        let mut request = app
            .request(Method::POST, "/patients")
            .json(&patient("DOC-1"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{case}: {challenge}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 401, "{case}");
    }
    assert_eq!(app.event_count().await, 0, "nothing was appended");
    // Health, metrics and the OpenAPI document stay open.
    for path in ["/health/live", "/metrics", "/openapi.json"] {
        let response = app.request(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

/// A verified token is remembered, so that its client's next requests need not verify it again;
/// once its `exp` and the leeway have passed, it is refused all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_accepted_before_is_refused_once_it_has_expired() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let exp = jsonwebtoken::get_current_timestamp();
    let token = {
        let mut c = claims("a", ALL);
        c["exp"] = json!(exp);
        signed(SECRET, c)
    };
    let register = async |document: &str| {
        let body = Some(patient(document));
        send(&app, Method::POST, "/patients", &token, body).await
    };
    // Within the 5 s leeway HAP allows for clocks that differ.
    assert_eq!(register("DOC-1").await.status(), StatusCode::CREATED);
    while jsonwebtoken::get_current_timestamp() <= exp + 5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = register("DOC-2").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["detail"], "the token has expired", "{problem}");
    assert_eq!(app.event_count().await, 1, "only the first was appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_family_guards_its_routes_with_a_403() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let id = Uuid::now_v7();
    // (method, path, body, the scope it needs)
    let routes = [
        (
            Method::POST,
            "/patients".to_owned(),
            Some(patient("DOC-1")),
            "patients:write",
        ),
        (
            Method::GET,
            format!("/patients/{id}"),
            None,
            "patients:read",
        ),
        (
            Method::POST,
            "/physicians".to_owned(),
            Some(json!({"name": "Dr. Rui", "specialty": "cardiology", "licenseNumber": "C-1"})),
            "physicians:write",
        ),
        (
            Method::GET,
            "/physicians".to_owned(),
            None,
            "physicians:read",
        ),
        (
            Method::POST,
            format!("/consultations/{id}/cancel"),
            Some(json!({"reason": "x"})),
            "consultations:write",
        ),
        (
            Method::GET,
            format!("/consultations/{id}"),
            None,
            "consultations:read",
        ),
        (
            Method::POST,
            format!("/consultations/{id}/records"),
            Some(json!({"content": "x"})),
            "records:write",
        ),
        (Method::GET, format!("/records/{id}"), None, "records:read"),
        (
            Method::GET,
            format!("/consultations/{id}/records"),
            None,
            "records:read",
        ),
    ];
    for (method, path, body, scope) in routes {
        let others: Vec<&str> = ALL.split_whitespace().filter(|s| *s != scope).collect();
        let without = token("a", &others.join(" "));
        let response = send(&app, method.clone(), &path, &without, body.clone()).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} without {scope}"
        );
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains(scope));
        let with = token("a", scope);
        let response = send(&app, method.clone(), &path, &with, body).await;
        assert_ne!(
            response.status(),
            StatusCode::FORBIDDEN,
            "{method} {path} with {scope}"
        );
        assert_ne!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path} with {scope}"
        );
    }
    // The document names the scheme and each route's scope.
    let openapi: Value = app.get_json("/openapi.json").await;
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        openapi["paths"]["/records/{id}"]["get"]["security"][0]["bearer"][0],
        "records:read"
    );
    // The schemas carry the rules the handlers enforce, so generated clients send valid data.
    let schemas = &openapi["components"]["schemas"];
    assert_eq!(
        schemas["RegisterPatient"]["properties"]["name"]["maxLength"],
        200
    );
    assert_eq!(
        schemas["RegisterPatient"]["properties"]["documentNumber"]["maxLength"],
        40
    );
    assert_eq!(
        schemas["RequestConsultation"]["properties"]["durationMinutes"]["minimum"],
        5
    );
    assert_eq!(
        schemas["RecordBody"]["properties"]["content"]["maxLength"],
        20000
    );
    for (path, operations) in openapi["paths"].as_object().unwrap() {
        if path.starts_with("/health") || path == "/metrics" {
            continue;
        }
        for (method, operation) in operations.as_object().unwrap() {
            assert!(
                operation["security"][0]["bearer"][0].is_string(),
                "{method} {path} names its scope"
            );
            // The answers any request can get are documented, as problem+json, as HAP serves
            // them.
            for status in ["400", "401", "403", "503"] {
                assert!(
                    operation["responses"][status]["content"]["application/problem+json"]
                        .is_object(),
                    "{method} {path} documents {status}"
                );
            }
            assert_eq!(
                operation["responses"]["503"]["headers"]["Retry-After"]["schema"]["type"],
                "integer",
                "{method} {path} documents Retry-After with its 503"
            );
            for (status, answer) in operation["responses"].as_object().unwrap() {
                assert!(
                    !answer["content"]["application/json"]["schema"]["$ref"]
                        .as_str()
                        .is_some_and(|r| r.ends_with("/Problem")),
                    "{method} {path} {status} is documented as application/problem+json"
                );
            }
            // Headers are strings with their rules, never `null`.
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] == "header" {
                    assert_eq!(parameter["schema"]["type"], "string", "{parameter}");
                    assert!(parameter["schema"]["pattern"].is_string(), "{parameter}");
                }
            }
        }
    }
    // A body that must change something says so.
    assert_eq!(schemas["UpdatePatient"]["minProperties"], 1);
    assert_eq!(
        schemas["UpdatePatient"]["properties"]["name"]["type"],
        "string"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clinics_share_a_deployment_and_never_see_each_other() {
    let db = TestDb::new().await;
    let system = System::start_with(&db, Duration::from_secs(600), Parts::ALL, settings()).await;
    let app = &system.app;
    let (a, b) = (token("clinic-a", ALL), token("clinic-b", ALL));

    // The same document number in both clinics.
    let mut patients = vec![];
    for t in [&a, &b] {
        let response = send(app, Method::POST, "/patients", t, Some(patient("DOC-SAME"))).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        patients.push(id_of(response).await);
    }
    let physician = json!({"name": "Dr. Rui", "specialty": "cardiology", "licenseNumber": "C-1"});
    let response = send(app, Method::POST, "/physicians", &a, Some(physician)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let physician_a = id_of(response).await;

    // Books clinic a's physician tomorrow, as `token`'s clinic, for `patient`.
    let at = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let book = |token, patient| {
        let body = json!({"patientId": patient, "physicianId": physician_a, "startsAt": at});
        send(app, Method::POST, "/consultations", token, Some(body))
    };

    // Clinic b cannot book clinic a's physician: it does not exist for b.
    let response = book(&b, patients[1]).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Clinic a schedules one and writes a record; its saga stays in clinic a.
    let response = book(&a, patients[0]).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let consultation = id_of(response).await;
    let scheduled = hap_tests::eventually(Duration::from_secs(30), || async {
        let response = send(
            app,
            Method::GET,
            &format!("/consultations/{consultation}"),
            &a,
            None,
        )
        .await;
        response.status() == 200 && response.json::<Value>().await.unwrap()["status"] == "scheduled"
    })
    .await;
    assert!(scheduled);
    let response = send(
        app,
        Method::POST,
        &format!("/consultations/{consultation}/records"),
        &a,
        Some(json!({"content": "blood pressure 12/8"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let record = id_of(response).await;
    let tenants: Vec<String> =
        sqlx::query_scalar("select distinct tenant_id from events where stream_id <> $1")
            .bind(patients[1])
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(tenants, ["clinic-a"], "every saga step stayed in clinic a");

    // Each id of clinic a is unknown to clinic b, for reads and writes alike.
    let readable = hap_tests::eventually(Duration::from_secs(10), || async {
        send(app, Method::GET, &format!("/records/{record}"), &a, None)
            .await
            .status()
            == 200
    })
    .await;
    assert!(readable);
    for path in [
        format!("/patients/{}", patients[0]),
        format!("/physicians/{physician_a}"),
        format!("/consultations/{consultation}"),
        format!("/consultations/{consultation}/records"),
        format!("/records/{record}"),
        format!("/patients/{}/consultations", patients[0]),
    ] {
        let response = send(app, Method::GET, &path, &b, None).await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "GET {path} as clinic b"
        );
        let response = send(app, Method::GET, &path, &a, None).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path} as clinic a");
    }
    let response = send(
        app,
        Method::PATCH,
        &format!("/patients/{}", patients[0]),
        &b,
        Some(json!({"name": "Someone Else"})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Lists show only the caller's own.
    for (t, own) in [(&a, patients[0]), (&b, patients[1])] {
        let listed = hap_tests::eventually(Duration::from_secs(10), || async {
            let page: Value = send(app, Method::GET, "/patients", t, None)
                .await
                .json()
                .await
                .unwrap();
            let ids: Vec<&str> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap())
                .collect();
            ids == [own.to_string().as_str()]
        })
        .await;
        assert!(listed, "each clinic lists its own patient only");
    }
    let page: Value = send(app, Method::GET, "/consultations", &b, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"], json!([]));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_acted_is_stored_with_every_event_and_sent_as_actor_id() {
    let db = TestDb::new().await;
    let system = System::start_with(&db, Duration::from_secs(600), Parts::ALL, settings()).await;
    let capture = hap_tests::broker::Capture::start(&system.prefix).await;
    let a = token("clinic-a", ALL);
    let response = send(
        &system.app,
        Method::POST,
        "/patients",
        &a,
        Some(patient("DOC-1")),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let physician = json!({"name": "Dr. Rui", "specialty": "cardiology", "licenseNumber": "C-1"});
    let physician = id_of(
        send(
            &system.app,
            Method::POST,
            "/physicians",
            &a,
            Some(physician),
        )
        .await,
    )
    .await;
    let patient_id = sqlx::query_scalar::<_, Uuid>("select stream_id from events limit 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let at = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let response = send(
        &system.app,
        Method::POST,
        "/consultations",
        &a,
        Some(json!({"patientId": patient_id, "physicianId": physician, "startsAt": at})),
    )
    .await;
    let consultation = id_of(response).await;
    system
        .wait_for_status_as(consultation, "scheduled", &a, Duration::from_secs(30))
        .await;

    let actors: Vec<(String, Option<String>)> =
        sqlx::query_as("select event_type, actor_id from events order by position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(actors.len() >= 6, "{actors:?}");
    for (event_type, actor) in &actors {
        assert_eq!(
            actor.as_deref(),
            Some("user@clinic-a"),
            "{event_type}: saga steps too"
        );
    }
    let messages = capture
        .wait_until(Duration::from_secs(10), |m| m.len() >= actors.len())
        .await;
    for message in &messages {
        let body = hap_tests::broker::body(message);
        assert_eq!(body["actorId"], "user@clinic-a", "{body}");
        assert_eq!(body["tenantId"], "clinic-a");
    }
    capture.clean_up().await;
    system.stop().await;
}

/// `hap serve` as a user starts it, logging at `rust_log` into a file; its address.
struct Served {
    child: tokio::process::Child,
    base: String,
    log: std::path::PathBuf,
}

async fn serve(db: &TestDb, prefix: &str, env: &[(&str, &str)], rust_log: &str) -> Served {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::env::temp_dir().join(format!("hap-auth-{}.log", Uuid::now_v7()));
    let file = std::fs::File::create(&log).unwrap();
    let mut command = tokio::process::Command::new(hap_tests::process::hap_binary());
    command
        .args(["serve", "--http-addr", &format!("127.0.0.1:{port}")])
        .env("HAP_DATABASE_URL", &db.url)
        .env("HAP_EXCHANGE_PREFIX", prefix)
        .env("HAP_INSTANCE", "logs")
        .env("RUST_LOG", rust_log)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let up = hap_tests::eventually(Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/health/live")).await.is_ok()
    })
    .await;
    assert!(up, "hap serve answers");
    Served { child, base, log }
}

/// What `hap serve` prints as it refuses to start with `set` and without `removed` (exit 1).
async fn refused_start(db: &TestDb, set: &[(&str, &str)], removed: &[&str]) -> String {
    let mut command = tokio::process::Command::new(hap_tests::process::hap_binary());
    command
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .env("HAP_DATABASE_URL", &db.url);
    for (name, value) in set {
        command.env(name, value);
    }
    for name in removed {
        command.env_remove(name);
    }
    let output = command.output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_hap_serve_refuses_to_start_unless_told_it_is_insecure() {
    let db = TestDb::new().await;
    let no_key = [
        "HAP_AUTH_SECRET",
        "HAP_AUTH_PUBLIC_KEY_FILE",
        "HAP_INSECURE_NO_AUTH",
    ];
    let stderr = refused_start(&db, &[], &no_key).await;
    assert!(stderr.contains("HAP_AUTH_SECRET"), "{stderr}");
    // A key to verify tokens is not enough: personal data needs its master key too.
    let no_data_key = ["HAP_DATA_KEY", "HAP_DATA_KEY_FILE", "HAP_INSECURE_NO_AUTH"];
    let stderr = refused_start(&db, &[("HAP_AUTH_SECRET", SECRET)], &no_data_key).await;
    assert!(stderr.contains("HAP_DATA_KEY"), "{stderr}");

    let prefix = hap_tests::broker::unique_prefix();
    let mut served = serve(&db, &prefix, &[("HAP_INSECURE_NO_AUTH", "true")], "warn").await;
    let response = reqwest::Client::new()
        .post(format!("{}/patients", served.base))
        .json(&patient("DOC-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "anonymous, on purpose"
    );
    served.child.start_kill().unwrap();
    served.child.wait().await.unwrap();
    let log = std::fs::read_to_string(&served.log).unwrap();
    assert!(log.contains("authentication is OFF"), "{log}");
    std::fs::remove_file(&served.log).ok();
    hap_tests::broker::delete_instance_queues(&prefix, "logs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hap_token_mints_what_hap_serve_accepts_and_debug_logs_hold_no_personal_data() {
    let db = TestDb::new().await;
    let prefix = hap_tests::broker::unique_prefix();
    let env = [
        ("HAP_AUTH_SECRET", SECRET),
        ("HAP_DATA_KEY", DATA_KEY),
        ("HAP_SCHEDULING_TIMEOUT_MS", "600000"),
    ];
    let mut served = serve(&db, &prefix, &env, "debug").await;
    let token = tokio::process::Command::new(hap_tests::process::hap_binary())
        .args([
            "token", "--tenant", "clinic-a", "--sub", "dr-who", "--scope", ALL, "--ttl", "10m",
        ])
        .env("HAP_AUTH_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let client = reqwest::Client::new();
    let call = |method: Method, path: &str, body: Option<Value>| {
        let mut request = client
            .request(method, format!("{}{path}", served.base))
            .bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move { request.send().await.unwrap() }
    };

    // Personal data, as distinctive as can be so that any trace of it is found.
    let (name, document, email, phone, content) = (
        "Zuleika Quintanilha",
        "DOC-PHI-97315",
        "zuleika.q@example.org",
        "+55 11 97777-3151",
        "diagnosis-xylophone-7731",
    );
    let response = call(
        Method::POST,
        "/patients",
        Some(
            json!({"name": name, "birthDate": "1980-02-03", "documentNumber": document,
                    "email": email, "phone": phone}),
        ),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "hap token's token is accepted"
    );
    let patient_id = id_of(response).await;
    // Error paths too: a duplicate document, an invalid e-mail, a name search.
    let duplicate = call(
        Method::POST,
        "/patients",
        Some(json!({"name": name, "birthDate": "1980-02-03", "documentNumber": document})),
    )
    .await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    let invalid = call(
        Method::PATCH,
        &format!("/patients/{patient_id}"),
        Some(json!({"email": format!("{name} not an email")})),
    )
    .await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    call(Method::GET, &format!("/patients?name={}", &name[..7]), None).await;
    let physician = call(
        Method::POST,
        "/physicians",
        Some(json!({"name": "Dr. Rui", "specialty": "cardiology", "licenseNumber": "C-1"})),
    )
    .await;
    let physician = id_of(physician).await;
    let at = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let consultation = call(
        Method::POST,
        "/consultations",
        Some(json!({"patientId": patient_id, "physicianId": physician, "startsAt": at})),
    )
    .await;
    let consultation = id_of(consultation).await;
    let scheduled = hap_tests::eventually(Duration::from_secs(30), || async {
        let response = call(Method::GET, &format!("/consultations/{consultation}"), None).await;
        response.status() == 200 && response.json::<Value>().await.unwrap()["status"] == "scheduled"
    })
    .await;
    assert!(scheduled, "the sagas run in hap serve");
    let record = call(
        Method::POST,
        &format!("/consultations/{consultation}/records"),
        Some(json!({"content": content})),
    )
    .await;
    assert_eq!(record.status(), StatusCode::CREATED);
    let record = id_of(record).await;
    let read = hap_tests::eventually(Duration::from_secs(10), || async {
        call(Method::GET, &format!("/records/{record}"), None)
            .await
            .status()
            == 200
    })
    .await;
    assert!(read);

    served.child.start_kill().unwrap();
    served.child.wait().await.unwrap();
    let log = std::fs::read_to_string(&served.log).unwrap();
    std::fs::remove_file(&served.log).ok();
    assert!(log.lines().count() > 100, "debug logging was on");
    for secret in [name, &name[..7], document, email, phone, content] {
        assert!(!log.contains(secret), "the log holds {secret:?}");
    }
    hap_tests::broker::delete_instance_queues(&prefix, "logs").await;
}

/// A token signed by an identity provider's private key (`tests/fixtures`).
fn signed_by_provider(algorithm: Algorithm, private_pem: &str, claims: Value) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).unwrap()
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_an_identity_provider_are_verified_with_its_rsa_or_ec_public_key() {
    for (algorithm, public, private) in [
        (
            Algorithm::RS256,
            "idp-rsa-public.pem",
            "idp-rsa-private.pem",
        ),
        (Algorithm::ES256, "idp-ec-public.pem", "idp-ec-private.pem"),
    ] {
        let db = TestDb::new().await;
        let mut settings = settings();
        settings.auth_secret = None;
        settings.auth_public_key_file = Some(fixture(public));
        settings.auth_issuer = Some(ISSUER.into());
        settings.auth_audience = Some(AUDIENCE.into());
        let app = TestApp::start_with(&db, settings).await;

        let provided = signed_by_provider(algorithm, private, claims("clinic-a", ALL));
        let response = send(
            &app,
            Method::POST,
            "/patients",
            &provided,
            Some(patient("DOC-1")),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{algorithm:?}");

        // A token HAP could have signed itself is no good here: no secret is configured.
        let response = send(
            &app,
            Method::POST,
            "/patients",
            &token("clinic-a", ALL),
            Some(patient("DOC-2")),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{algorithm:?}");
    }
}
