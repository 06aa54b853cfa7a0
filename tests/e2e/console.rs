//! The operators' console (`/console`): who may see it (a token with `ops:read`, from the
//! `Authorization` header or the session cookie of the sign-in form), what a tenant's
//! operator sees and a platform operator sees, cross-site writes refused, and the pages
//! answering what is wrong: the processes, a stuck consultation, the live numbers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::ScreenshotParams;
use futures::StreamExt;

use eventstore::processes::{ProcessInfo, keep_recorded};
use eventstore::samples::Vitals;
use eventstore::{EventStore, RecordedEvent, StreamVersion};
use hap_tests::broker::{dead_letter, publish_to_queue, wait_for_queue};
use hap_tests::system::{Parts, System};
use hap_tests::tokens::{settings, token};
use hap_tests::{TestApp, TestDb, eventually, test_append};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use messaging::{QueueNames, dlq};
use reqwest::{Method, StatusCode, header};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A client that shows redirects instead of following them: the sign-in answers one.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `GET path` with `token` as bearer (none if `None`): the status and the page.
async fn page(app: &TestApp, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = app.request(Method::GET, path);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// Records a process of a fresh instance name, as `hap serve` does, its figures as `measure`
/// says, until the token is cancelled; returns once the store lists it.
async fn record_a_process(
    db: &TestDb,
    app: &TestApp,
    measure: impl Fn() -> Vitals + Send + 'static,
) -> (String, CancellationToken) {
    let instance = format!("console-{}", uuid::Uuid::now_v7().simple());
    let info = ProcessInfo {
        instance: instance.clone(),
        roles: vec!["query".into()],
        version: "0.1.0".into(),
        host: "test-host".into(),
        pid: 4242,
        http_addr: app.base.clone(),
    };
    let shutdown = CancellationToken::new();
    let store = db.plain_store();
    tokio::spawn(keep_recorded(
        store.clone(),
        info,
        measure,
        shutdown.clone(),
    ));
    assert!(
        eventually(Duration::from_secs(10), || async {
            !store.processes().await.unwrap().is_empty()
        })
        .await
    );
    (instance, shutdown)
}

/// What a busy process measures of itself at each beat: it leads the publisher, its
/// projectors lag 1.5 s with 7 messages waiting and 2 dead letters, and it has served ten
/// commands (one failing) since the beat before.
fn busy() -> impl Fn() -> Vitals + Send + 'static {
    let beats = std::sync::atomic::AtomicI64::new(0);
    move || {
        let beat = beats.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Vitals {
            commands: 10 * beat,
            command_errors: beat,
            publisher_leader: true,
            projector_lag_seconds: 1.5,
            queue_depth: 7,
            dead_letters: 2,
        }
    }
}

/// `POST /console/session` with the sign-in form's body and `headers`.
async fn sign_in(app: &TestApp, token: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}/console/session", app.base))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={token}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_console_asks_to_sign_in_and_without_ops_read_it_refuses() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;

    let (status, body) = page(&app, "/console", None).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#"action="/console/session""#), "{body}");
    assert!(!body.contains("Processes"), "{body}");

    let clinician = token("north", "patients:read consultations:read");
    let (status, body) = page(&app, "/console", Some(&clinician)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("ops:read"), "{body}");
    assert_eq!(page(&app, "/console/sagas", Some(&clinician)).await.0, 403);
    assert_eq!(page(&app, "/console/live", Some(&clinician)).await.0, 403);
    let refused = sign_in(&app, &clinician, &[]).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get(header::SET_COOKIE).is_none());
    let form = refused.text().await.unwrap();
    assert!(
        form.contains("The token was refused: it does not grant ops:read"),
        "{form}"
    );
    assert!(form.contains(r#"action="/console/session""#), "{form}");

    let (status, body) = page(&app, "/console", Some("not-a-token")).await;
    assert_eq!(status, 401);
    assert!(body.contains("The token was refused"), "{body}");
    assert_eq!(sign_in(&app, "not-a-token", &[]).await.status(), 401);

    // A platform operator's token opens the console, never the clinical API.
    let platform = token("*", "ops:read ops:platform patients:read");
    assert_eq!(page(&app, "/console", Some(&platform)).await.0, 200);
    let response = app
        .request(Method::GET, "/patients")
        .bearer_auth(&platform)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_operator_sees_the_running_processes_on_the_overview() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let (instance, shutdown) = record_a_process(&db, &app, api::vitals::measure).await;

    let operator = token("north", "ops:read");
    let signed_in = sign_in(&app, &operator, &[("origin", app.base.as_str())]).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()[header::LOCATION], "/console");
    let cookie = signed_in.headers()[header::SET_COOKIE].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();

    let overview = app
        .request(Method::GET, "/console")
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), 200);
    let body = overview.text().await.unwrap();
    assert!(body.contains(&instance), "{body}");
    assert!(body.contains("publisher lag"), "{body}");
    assert!(body.contains("tenant north"), "{body}");

    let signed_out = client()
        .post(format!("{}/console/session/end", app.base))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), 303);
    let cleared = signed_out.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.starts_with("hap_console=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_from_another_site_is_refused() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let operator = token("north", "ops:read");
    for headers in [
        [("origin", "https://evil.example")],
        [("sec-fetch-site", "cross-site")],
    ] {
        let response = sign_in(&app, &operator, &headers).await;
        assert_eq!(response.status(), 403, "{headers:?}");
        assert!(response.headers().get(header::SET_COOKIE).is_none());
    }
    let sign_out = client()
        .post(format!("{}/console/session/end", app.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(sign_out.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_operator_sees_only_its_streams_and_a_platform_operator_every_one() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let writer = token("north", "patients:write");
    let id = app.register_patient_as(&writer, "DOC-C1").await;
    let path = format!("/console/streams/{id}");

    let (status, body) = page(&app, &path, Some(&token("north", "ops:read"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("PatientRegistered"), "{body}");
    assert!(body.contains("DOC-C1"), "{body}");

    let (status, body) = page(&app, &path, Some(&token("south", "ops:read"))).await;
    assert_eq!(status, 404);
    assert!(!body.contains("DOC-C1"), "{body}");
    // `*` without `ops:platform` is no platform operator.
    assert_eq!(
        page(&app, &path, Some(&token("*", "ops:read"))).await.0,
        404
    );

    let platform = token("*", "ops:read ops:platform");
    let (status, body) = page(&app, &path, Some(&platform)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("PatientRegistered"), "{body}");
    assert!(body.contains("every tenant"), "{body}");

    // The search form leads to the stream's page; no id in it is no page.
    let found = client()
        .get(format!("{}/console/streams?id={id}", app.base))
        .bearer_auth(&platform)
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), 303);
    assert_eq!(found.headers()[header::LOCATION], path.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sagas_page_shows_a_consultation_stuck_past_its_deadline() {
    let db = TestDb::new().await;
    // No saga and no timer: the request is never validated, and its deadline never fires.
    let parts = Parts {
        sagas: false,
        timer: false,
    };
    let system = System::start(&db, Duration::from_millis(500), parts).await;
    let (patient, physician) = system.app.register_patient_and_physician().await;
    let id = system.app.request_consultation(patient, physician).await;
    system.consultation(id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (status, body) = page(&system.app, "/console/sagas", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&id.to_string()), "{body}");
    assert!(body.contains("stuck: past its deadline"), "{body}");

    // Its stream shows the request, and the trail of the request across streams.
    let (status, body) = page(&system.app, &format!("/console/streams/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Causal trail"), "{body}");
    system.stop().await;
}

/// The first `overview` event of `/console/live`, read as `token`.
async fn live_numbers(app: &TestApp, token: &str) -> serde_json::Value {
    let mut response = app
        .request(Method::GET, "/console/live")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE].to_str().unwrap(),
        "text/event-stream"
    );
    let mut text = String::new();
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            if let Some(block) = text.split("\n\n").find(|b| b.contains("event: overview")) {
                return block.to_owned();
            }
        }
        panic!("the stream ended: {text}");
    })
    .await
    .expect("an event within seconds");
    let data = event
        .lines()
        .find_map(|line| line.strip_prefix("data: "))
        .expect("a data line");
    serde_json::from_str(data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_endpoint_sends_the_overviews_numbers_those_of_every_tenant_to_platform_operators_only()
 {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let every_tenant = [
        "lagEvents",
        "deadLetters",
        "commandsPerSecond",
        "errorsPerSecond",
    ];
    let platform = live_numbers(&app, &token("*", "ops:read ops:platform")).await;
    for name in [
        "processesUp",
        "lagEvents",
        "lagSeconds",
        "deadlinesOverdue",
        "deadLetters",
    ] {
        assert!(platform[name].is_i64(), "{platform}");
    }
    for name in ["commandsPerSecond", "errorsPerSecond"] {
        assert!(platform[name].is_number(), "{platform}");
    }
    let clinic = live_numbers(&app, &token("north", "ops:read")).await;
    assert!(clinic["processesUp"].is_i64(), "{clinic}");
    assert!(clinic["lagSeconds"].is_i64(), "{clinic}");
    for name in every_tenant {
        assert!(clinic.get(name).is_none(), "{clinic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_waiting_to_be_published_show_to_platform_operators_only() {
    let db = TestDb::new().await;
    // No publisher runs: what is registered waits to be published.
    let app = TestApp::start_with(&db, settings()).await;
    let (instance, shutdown) = record_a_process(&db, &app, busy()).await;
    for document in ["DOC-L1", "DOC-L2"] {
        let writer = token("south", "patients:write");
        app.register_patient_as(&writer, document).await;
    }
    let waiting = r#"<b data-live="lagEvents">2</b>events not yet published"#;
    let leader = format!("Leader: <strong>{instance}</strong>");
    let platform = token("*", "ops:read ops:platform");
    let shown = eventually(Duration::from_secs(10), || async {
        page(&app, "/console", Some(&platform))
            .await
            .1
            .contains(&leader)
    })
    .await;
    let (_, every) = page(&app, "/console", Some(&platform)).await;
    assert!(shown, "{every}");
    assert!(every.contains(waiting), "{every}");
    assert!(every.contains("2 events and <span"), "{every}");

    // Another clinic's operator learns nothing of south's traffic; the lag in seconds, the
    // health of the publisher every clinic shares, shows.
    let (status, north) = page(&app, "/console", Some(&token("north", "ops:read"))).await;
    assert_eq!(status, 200, "{north}");
    assert!(!north.contains("events not yet published"), "{north}");
    assert!(!north.contains(r#"data-live="lagEvents""#), "{north}");
    assert!(!north.contains("2 events"), "{north}");
    assert!(north.contains("seconds of publisher lag"), "{north}");
    assert!(north.contains(&leader), "{north}");
    assert!(north.contains(r#"<span class="lag-seconds">"#), "{north}");
    shutdown.cancel();
}

/// A message of `tenant` that no projector can apply (its event type is unknown): its event
/// id, body and properties.
fn nonsense(tenant: &str) -> (String, Vec<u8>, BasicProperties) {
    nonsense_of(tenant, uuid::Uuid::now_v7().to_string())
}

/// [`nonsense`] with the event id `event`.
fn nonsense_of(tenant: &str, event: String) -> (String, Vec<u8>, BasicProperties) {
    let body = json!({
        "eventId": event, "eventType": "Nonsense", "occurredAt": "2026-01-02T03:04:05.000000Z",
        "sourceService": "patient-service", "aggregateType": "patient",
        "aggregateId": uuid::Uuid::now_v7(), "version": 1, "position": "42",
        "tenantId": tenant, "correlationId": "corr-1", "causationId": null, "actorId": null,
        "schemaVersion": 1, "payload": {}
    });
    let properties = BasicProperties::default()
        .with_message_id(event.as_str().into())
        .with_type("Nonsense".into());
    (event, body.to_string().into_bytes(), properties)
}

/// Puts a message of `tenant` that no projector can apply into the dead-letter queue of
/// `names`, as a consumer would have; returns its event id.
async fn poison(names: &QueueNames, tenant: &str) -> String {
    poison_of(names, tenant, uuid::Uuid::now_v7().to_string()).await
}

/// [`poison`] with the event id `event`, and no replay counted in its headers.
async fn poison_of(names: &QueueNames, tenant: &str, event: String) -> String {
    let (event, body, properties) = nonsense_of(tenant, event);
    let mut headers = FieldTable::default();
    headers.insert(
        messaging::headers::ERROR.into(),
        AMQPValue::LongString("unknown event type Nonsense at position 42".into()),
    );
    headers.insert(
        messaging::headers::DEAD_LETTERED_AT.into(),
        AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
    );
    publish_to_queue(&names.dead_letters, &body, properties.with_headers(headers)).await;
    event
}

/// Sends a message of `tenant` that no projector can apply to the queue of `names`, and waits
/// until its consumer has dead-lettered it; returns its event id.
async fn fail(names: &QueueNames, tenant: &str) -> String {
    let (event, body, properties) = nonsense(tenant);
    publish_to_queue(&names.main, &body, properties).await;
    let failed = eventually(Duration::from_secs(15), || async {
        letters(names)
            .await
            .iter()
            .any(|l| l.event_id.as_deref() == Some(&event))
    })
    .await;
    assert!(failed, "{event} was never dead-lettered");
    event
}

/// The dead letters of `names`' queue, left in place.
async fn letters(names: &QueueNames) -> Vec<dlq::DeadLetter> {
    dlq::list(&hap_tests::broker::amqp_urls(), &names.main)
        .await
        .unwrap()
}

/// HAP with authentication, instance `test`'s projectors and no saga: the names of the queue
/// of its scheduling-service projector, whose dead letters the tests make.
async fn with_projectors(db: &TestDb) -> (System, QueueNames) {
    let mut settings = settings();
    settings.instance = "test".into();
    let parts = Parts {
        sagas: false,
        timer: false,
    };
    let system = System::start_with(db, Duration::from_secs(600), parts, settings).await;
    let names = QueueNames::new(&system.prefix, "scheduling-service", "test");
    wait_for_queue(&names.dead_letters).await;
    (system, names)
}

/// `POST /console/dead-letters/resolve` as `token`, from the console's own page unless
/// `origin` says otherwise.
async fn resolve(
    app: &TestApp,
    token: &str,
    form: &[(&str, &str)],
    origin: &str,
) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    client()
        .post(format!("{}/console/dead-letters/resolve", app.base))
        .bearer_auth(token)
        .header("origin", origin)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_shows_under_its_failure_and_is_replayed_or_discarded_after_a_confirmation() {
    let db = TestDb::new().await;
    let (system, names) = with_projectors(&db).await;
    let app = &system.app;
    let event = poison(&names, "north").await;

    let reader = token("north", "ops:read");
    let (status, page_text) = page(app, "/console/dead-letters", Some(&reader)).await;
    assert_eq!(status, 200, "{page_text}");
    assert!(page_text.contains(&event), "{page_text}");
    assert!(
        page_text.contains("unknown event type Nonsense at position #"),
        "{page_text}"
    );
    assert!(page_text.contains("needs ops:write"), "{page_text}");
    let (_, elsewhere) = page(
        app,
        "/console/dead-letters",
        Some(&token("south", "ops:read")),
    )
    .await;
    assert!(!elsewhere.contains(&event), "{elsewhere}");

    let confirm = format!(
        "/console/dead-letters/confirm?queue={}&event={event}&action=discard",
        names.main
    );
    assert_eq!(page(app, &confirm, Some(&reader)).await.0, 403);
    let writer = token("north", "ops:read ops:write");
    let (status, form) = page(app, &confirm, Some(&writer)).await;
    assert_eq!(status, 200, "{form}");
    assert!(
        form.contains(r#"action="/console/dead-letters/resolve""#),
        "{form}"
    );

    let choice = [
        ("queue", names.main.as_str()),
        ("event", event.as_str()),
        ("action", "discard"),
    ];
    let ours = app.base.as_str();
    assert_eq!(
        resolve(app, &writer, &choice, "https://evil.example")
            .await
            .status(),
        403
    );
    assert_eq!(resolve(app, &reader, &choice, ours).await.status(), 403);
    let other = token("south", "ops:read ops:write");
    assert_eq!(resolve(app, &other, &choice, ours).await.status(), 404);

    // Replayed, the poisoned message goes back to its queue, whose projector dead-letters it
    // again; discarded, it is gone.
    let replay = [choice[0], choice[1], ("action", "replay")];
    assert_eq!(resolve(app, &writer, &replay, ours).await.status(), 303);
    // Listed again: the list links to it (the recent actions name it anyway).
    let listed = format!("event={event}");
    let back = eventually(Duration::from_secs(15), || async {
        page(app, "/console/dead-letters", Some(&reader))
            .await
            .1
            .contains(&listed)
    })
    .await;
    assert!(
        back,
        "the replayed message failed again into its dead-letter queue"
    );
    let done = resolve(app, &writer, &choice, ours).await;
    assert_eq!(done.status(), 303);

    let (_, after) = page(app, "/console/dead-letters", Some(&reader)).await;
    assert!(!after.contains(&listed), "{after}");
    system.stop().await;
}

/// The text of the first element of `page` with class `class` (and no markup inside).
fn text_of<'a>(page: &'a str, class: &str) -> &'a str {
    let opening = format!(r#"class="{class}">"#);
    let start = page
        .find(&opening)
        .unwrap_or_else(|| panic!("no {class} in {page}"))
        + opening.len();
    let length = page[start..].find('<').unwrap();
    &page[start..start + length]
}

/// The form of the confirmation link for `action` on a whole failure group on `page`.
fn group_choice(page: &str, action: &str) -> Vec<(String, String)> {
    let ending = format!("action={action}\"");
    let link = page
        .split("href=\"")
        .map(|rest| &rest[..rest.find('"').map_or(0, |end| end + 1)])
        .find(|link| link.contains("failure=") && link.ends_with(&ending))
        .unwrap_or_else(|| panic!("no {action} link of a group in {page}"));
    let query = link.trim_end_matches('"').split_once('?').unwrap().1;
    url::form_urlencoded::parse(query.replace("&amp;", "&").as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_group_shows_when_it_was_first_and_last_seen_and_its_replays_and_is_resolved_whole()
 {
    let db = TestDb::new().await;
    let (system, names) = with_projectors(&db).await;
    let app = &system.app;
    // Dead-lettered by the projector itself, a second apart, and one of another clinic.
    let first = fail(&names, "north").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = fail(&names, "north").await;
    let theirs = fail(&names, "south").await;

    let reader = token("north", "ops:read");
    let (status, body) = page(app, "/console/dead-letters", Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&first) && body.contains(&second), "{body}");
    assert!(!body.contains(&theirs), "another clinic's letter: {body}");
    assert!(body.contains(" · 2 × "), "one group of two: {body}");
    let seen: Vec<_> = (letters(&names).await.into_iter())
        .filter(|l| l.tenant_id.as_deref() == Some("north"))
        .map(|l| {
            l.dead_lettered_at
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .collect();
    assert_eq!(text_of(&body, "first-seen"), seen.iter().min().unwrap());
    assert_eq!(text_of(&body, "last-seen"), seen.iter().max().unwrap());
    assert_ne!(text_of(&body, "first-seen"), text_of(&body, "last-seen"));
    assert_eq!(text_of(&body, "replays"), "0");
    assert!(!body.contains("replay all"), "ops:read alone: {body}");

    let writer = token("north", "ops:read ops:write");
    let (_, body) = page(app, "/console/dead-letters", Some(&writer)).await;
    let replay = group_choice(&body, "replay");
    let discard = group_choice(&body, "discard");
    let query = |choice: &[(String, String)]| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(choice)
            .finish()
    };
    let confirm = format!("/console/dead-letters/confirm?{}", query(&replay));
    assert_eq!(page(app, &confirm, Some(&reader)).await.0, 403);
    let (status, form) = page(app, &confirm, Some(&writer)).await;
    assert_eq!(status, 200, "{form}");
    assert!(form.contains("(2 now)"), "{form}");
    assert!(form.contains(r#"name="failure""#), "{form}");

    let ours = app.base.as_str();
    let post = |token: String, choice: Vec<(String, String)>| async move {
        let choice: Vec<(&str, &str)> = choice
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        resolve(app, &token, &choice, ours).await.status()
    };
    assert_eq!(post(reader.clone(), discard.clone()).await, 403);
    // The other clinic's operator discards the same failure: only its own letter goes.
    assert_eq!(
        post(token("south", "ops:read ops:write"), discard.clone()).await,
        303
    );
    let left: Vec<_> = letters(&names)
        .await
        .into_iter()
        .filter_map(|l| l.event_id)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&theirs), "{left:?}");

    // Replayed twice, both fail again into the group, each counting its replays.
    for replays in [1, 2] {
        assert_eq!(post(writer.clone(), replay.clone()).await, 303);
        let counted = eventually(Duration::from_secs(15), || async {
            let now = letters(&names).await;
            now.len() == 2 && now.iter().all(|l| l.replays == replays)
        })
        .await;
        assert!(counted, "{:?}", letters(&names).await);
    }
    let (_, body) = page(app, "/console/dead-letters", Some(&reader)).await;
    assert_eq!(text_of(&body, "replays"), "4", "{body}");
    assert_eq!(
        body.matches(r#"<td class="num replays">2</td>"#).count(),
        2,
        "{body}"
    );

    assert_eq!(post(writer.clone(), discard.clone()).await, 303);
    assert!(letters(&names).await.is_empty());
    assert_eq!(
        post(writer.clone(), discard.clone()).await,
        404,
        "nothing left"
    );
    let metrics = app.get_text("/metrics").await;
    for counted in [
        r#"hap_console_dead_letter_actions_total{action="replay"} 4"#,
        r#"hap_console_dead_letter_actions_total{action="discard"} 3"#,
    ] {
        assert!(metrics.contains(counted), "{counted} in {metrics}");
    }
    system.stop().await;
}

/// An action recorded in `operator_actions`: actor, tenant, action, queue, event id, failure,
/// messages and event ids.
type RecordedAction = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i32,
    Vec<String>,
);

/// Every action recorded in `db`, oldest first.
async fn recorded_actions(db: &TestDb) -> Vec<RecordedAction> {
    sqlx::query_as(
        "select actor, tenant_id, action, queue, event_id, failure, messages, event_ids
           from operator_actions order by id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letters_show_when_the_record_of_actions_cannot_be_read() {
    let db = TestDb::new().await;
    let (system, names) = with_projectors(&db).await;
    let event = fail(&names, "north").await;
    // What a database that does not answer does to the page's record, and to it alone.
    sqlx::query("drop table operator_actions")
        .execute(&db.pool)
        .await
        .unwrap();

    let reader = token("north", "ops:read");
    let (status, body) = page(&system.app, "/console/dead-letters", Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&event), "the letter is listed: {body}");
    assert!(body.contains("The database did not answer"), "{body}");
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replay_and_discard_is_recorded_with_its_operator_and_listed_to_its_tenant_only() {
    let db = TestDb::new().await;
    let (system, names) = with_projectors(&db).await;
    let app = &system.app;
    let ours = app.base.as_str();
    let writer = token("north", "ops:read ops:write");
    // Dead-lettered by the projector itself, as the replayed one will be again: one failure.
    let event = fail(&names, "north").await;
    let unseen = |text: &str| !text.contains("<td class=\"actor\">");
    let (_, before) = page(app, "/console/dead-letters", Some(&writer)).await;
    assert!(before.contains("No replay or discard yet"), "{before}");
    assert!(unseen(&before), "{before}");

    // One message replayed: it fails again, back in its dead-letter queue.
    let replay = [
        ("queue", names.main.as_str()),
        ("event", event.as_str()),
        ("action", "replay"),
    ];
    assert_eq!(resolve(app, &writer, &replay, ours).await.status(), 303);
    let back = eventually(Duration::from_secs(15), || async {
        letters(&names).await.iter().any(|l| l.replays == 1)
    })
    .await;
    assert!(back, "{:?}", letters(&names).await);
    let north = |action: &str, event_id: Option<&str>, failure: Option<&str>, ids: &[&String]| {
        (
            "user@north".to_owned(),
            "north".to_owned(),
            action.to_owned(),
            names.main.clone(),
            event_id.map(str::to_owned),
            failure.map(str::to_owned),
            ids.len() as i32,
            ids.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        recorded_actions(&db).await,
        [north("replay", Some(&event), None, &[&event])]
    );

    // A second message of the same failure, and the whole group discarded.
    let second = fail(&names, "north").await;
    let (_, body) = page(app, "/console/dead-letters", Some(&writer)).await;
    assert!(body.contains(" · 2 × "), "one group of two: {body}");
    let discard = group_choice(&body, "discard");
    let form: Vec<(&str, &str)> = discard
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(resolve(app, &writer, &form, ours).await.status(), 303);
    assert!(letters(&names).await.is_empty());
    let failure = &discard.iter().find(|(k, _)| k == "failure").unwrap().1;
    assert!(failure.contains("\"Nonsense\""), "{failure}");
    // Recorded without what the error quotes (it could be a person's name).
    let failure = &failure.replace("\"Nonsense\"", "\"…\"");
    let recorded = recorded_actions(&db).await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    let mut group = recorded[1].clone();
    group.7.sort();
    let mut both = [&event, &second];
    both.sort();
    assert_eq!(group, north("discard", None, Some(failure), &both));

    // The page lists both, newest first, to north's operators.
    let (_, listed) = page(
        app,
        "/console/dead-letters",
        Some(&token("north", "ops:read")),
    )
    .await;
    assert!(listed.contains("Recent actions"), "{listed}");
    assert_eq!(
        listed
            .matches(r#"<td class="actor">user@north</td>"#)
            .count(),
        2,
        "{listed}"
    );
    let shown = failure.replace('"', "&quot;");
    let discarded = listed.find(&format!("the failure <code>{shown}</code>"));
    let replayed = listed.find(&format!("the dead letter <code>{event}</code>"));
    assert!(
        discarded.is_some() && replayed.is_some() && discarded < replayed,
        "{listed}"
    );
    // Not to another clinic's; a platform operator's page lists every tenant's, with it.
    let (_, south) = page(
        app,
        "/console/dead-letters",
        Some(&token("south", "ops:read")),
    )
    .await;
    assert!(unseen(&south), "{south}");
    assert!(!south.contains(&event), "{south}");
    assert!(south.contains("No replay or discard yet"), "{south}");
    let platform = token("*", "ops:read ops:platform");
    let (_, every) = page(app, "/console/dead-letters", Some(&platform)).await;
    assert_eq!(
        every
            .matches(r#"<td class="actor">user@north</td>"#)
            .count(),
        2,
        "{every}"
    );
    assert!(every.contains("<td>north</td>"), "{every}");

    // The replayed message comes back without its replay header (published anew, say): the
    // page still counts the replay recorded of it.
    poison_of(&names, "north", event.clone()).await;
    let (_, again) = page(app, "/console/dead-letters", Some(&writer)).await;
    assert!(again.contains(&format!("event={event}")), "{again}");
    assert_eq!(letters(&names).await[0].replays, 0);
    assert_eq!(text_of(&again, "replays"), "1", "{again}");
    assert!(
        again.contains(r#"<td class="num replays">1</td>"#),
        "{again}"
    );
    system.stop().await;
}

/// The address of the page of the dead letter `event` of `names`' queue.
fn message_page(names: &QueueNames, event: &str) -> String {
    format!(
        "/console/dead-letters/message?queue={}&event={event}",
        names.main
    )
}

/// The event ids of `names`' dead letters, in the queue's order.
async fn order(names: &QueueNames) -> Vec<Option<String>> {
    letters(names)
        .await
        .into_iter()
        .map(|l| l.event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letters_page_shows_its_headers_error_and_body_to_its_tenant_and_leaves_it_in_place()
{
    let db = TestDb::new().await;
    let (system, names) = with_projectors(&db).await;
    let app = &system.app;
    let first = poison(&names, "north").await;
    let event = poison(&names, "north").await;
    let mut record = unpublished(
        "record",
        "ConsultationRecordCreated",
        json!({"recordId": uuid::Uuid::now_v7(), "notes": "a private diagnosis"}),
    );
    record.tenant_id = "north".into();
    dead_letter(&names, &record, "database down").await;
    let before = order(&names).await;
    assert_eq!(before.len(), 3);

    let reader = token("north", "ops:read");
    let (status, body) = page(app, &message_page(&names, &event), Some(&reader)).await;
    assert_eq!(status, 200, "{body}");
    let body = body.replace("&quot;", "\"");
    for shown in [
        "unknown event type Nonsense at position 42",
        "x-error",
        "x-dead-lettered-at",
        "routing key",
        names.dead_letters.as_str(),
        // The body, pretty-printed.
        r#""eventType": "Nonsense""#,
        r#""tenantId": "north""#,
        "needs ops:write",
    ] {
        assert!(body.contains(shown), "{shown}: {body}");
    }
    let writer = token("north", "ops:read ops:write");
    let (_, actions) = page(app, &message_page(&names, &event), Some(&writer)).await;
    let replay = format!(
        "/console/dead-letters/confirm?queue={}&amp;event={event}&amp;action=replay",
        names.main
    );
    assert!(actions.contains(&replay), "{actions}");
    let (_, list) = page(app, "/console/dead-letters", Some(&reader)).await;
    assert!(
        list.contains(&message_page(&names, &event).replace('&', "&amp;")),
        "the list leads to the page: {list}"
    );

    let south = token("south", "ops:read");
    let (status, elsewhere) = page(app, &message_page(&names, &event), Some(&south)).await;
    assert_eq!(status, 404, "{elsewhere}");
    assert!(!elsewhere.contains("Nonsense at position"), "{elsewhere}");
    let unknown = format!("/console/dead-letters/message?queue=elsewhere&event={event}");
    assert_eq!(page(app, &unknown, Some(&reader)).await.0, 404);

    // A clinical record's content is the records API's to show: not without records:read.
    let record_page = message_page(&names, &record.event_id.to_string());
    let (status, hidden) = page(app, &record_page, Some(&reader)).await;
    assert_eq!(status, 200, "{hidden}");
    assert!(hidden.contains("hidden: needs records:read"), "{hidden}");
    assert!(!hidden.contains("a private diagnosis"), "{hidden}");
    // Its error too: a decoding error quotes what it could not read.
    assert!(!hidden.contains("database down"), "{hidden}");
    let clinician = token("north", "ops:read records:read");
    let (_, shown) = page(app, &record_page, Some(&clinician)).await;
    assert!(shown.contains("a private diagnosis"), "{shown}");
    assert!(shown.contains("database down"), "{shown}");

    // A body that does not parse names no kind: it may be a record's, so it is hidden as one.
    let garbled = uuid::Uuid::now_v7().to_string();
    let mut headers = FieldTable::default();
    headers.insert(
        messaging::headers::ERROR.into(),
        AMQPValue::LongString("expected value at \"a private note\"".into()),
    );
    let properties = BasicProperties::default()
        .with_message_id(garbled.as_str().into())
        .with_headers(headers);
    publish_to_queue(
        &names.dead_letters,
        b"{\"notes\": \"a private note",
        properties,
    )
    .await;
    let platform = token("*", "ops:read ops:platform");
    let (status, garbled_page) = page(app, &message_page(&names, &garbled), Some(&platform)).await;
    assert_eq!(status, 200, "{garbled_page}");
    assert!(!garbled_page.contains("a private note"), "{garbled_page}");
    assert!(
        garbled_page.contains("hidden: needs records:read"),
        "{garbled_page}"
    );

    // Looked at again and again, every message is still there, in its place.
    let after = order(&names).await;
    assert_eq!(after[..before.len()], before[..]);
    assert_eq!(
        after.len(),
        before.len() + 1,
        "and the garbled one behind them"
    );
    assert_eq!(before[0].as_deref(), Some(first.as_str()));
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_names_the_publisher_leader_and_each_instances_figures_as_every_process_recorded_them()
 {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let (instance, shutdown) = record_a_process(&db, &app, busy()).await;

    let platform = token("*", "ops:read ops:platform");
    let plotted = eventually(Duration::from_secs(20), || async {
        page(&app, "/console", Some(&platform))
            .await
            .1
            .contains("<rect")
    })
    .await;
    let (status, body) = page(&app, "/console", Some(&platform)).await;
    assert_eq!(status, 200, "{body}");
    assert!(plotted, "two beats make a rate: {body}");
    assert!(
        body.contains(&format!("Leader: <strong>{instance}</strong>")),
        "{body}"
    );
    assert!(body.contains(r#"<td class="num">1.5</td>"#), "{body}");
    assert!(
        body.contains(r#"<td class="num">7</td><td class="num">2</td>"#),
        "{body}"
    );
    assert!(body.contains("errors per second"), "{body}");

    // A clinic's operator sees who leads and the lags, not what every tenant's traffic adds
    // up to.
    let (status, clinic) = page(&app, "/console", Some(&token("north", "ops:read"))).await;
    assert_eq!(status, 200, "{clinic}");
    assert!(
        clinic.contains(&format!("Leader: <strong>{instance}</strong>")),
        "{clinic}"
    );
    assert!(clinic.contains(r#"<td class="num">1.5</td>"#), "{clinic}");
    assert!(!clinic.contains("<rect"), "{clinic}");
    assert!(!clinic.contains("Queues per instance"), "{clinic}");
    assert!(!clinic.contains("dead letters</div>"), "{clinic}");

    // Stopped, it leads no more.
    shutdown.cancel();
    let gone = eventually(Duration::from_secs(10), || async {
        page(&app, "/console", Some(&platform))
            .await
            .1
            .contains("No running process says it leads")
    })
    .await;
    assert!(gone);
}

/// Appends a failed scheduling of `tenant` for `reason`.
async fn failed_scheduling(store: &EventStore, tenant: &str, reason: &str) {
    let consultation = uuid::Uuid::now_v7();
    let mut append = test_append(consultation, StreamVersion::EMPTY, 0);
    append.aggregate_type = "consultation".into();
    append.metadata.tenant_id = tenant.into();
    append.events = vec![eventstore::NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "ConsultationSchedulingFailed".into(),
        payload: json!({"consultationId": consultation, "reason": reason, "detail": "test"}),
        occurred_at: chrono::Utc::now(),
        schema_version: 1,
    }];
    store.append(append).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sagas_page_charts_the_failures_of_the_operators_tenant_by_reason() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let store = db.plain_store();
    for (tenant, reason) in [
        ("north", "physician_unavailable"),
        ("north", "physician_unavailable"),
        ("south", "patient_invalid"),
    ] {
        failed_scheduling(&store, tenant, reason).await;
    }

    let (status, north) = page(&app, "/console/sagas", Some(&token("north", "ops:read"))).await;
    assert_eq!(status, 200, "{north}");
    assert!(
        north.contains(r#"<td>physician_unavailable</td><td class="num">2</td>"#),
        "{north}"
    );
    assert!(
        north.contains("<title>physician_unavailable failures per hour</title>"),
        "{north}"
    );
    assert!(north.contains("<rect"), "{north}");
    assert!(!north.contains("patient_invalid"), "{north}");

    let (_, south) = page(&app, "/console/sagas", Some(&token("south", "ops:read"))).await;
    assert!(
        south.contains(r#"<td>patient_invalid</td><td class="num">1</td>"#),
        "{south}"
    );
    assert!(!south.contains("physician_unavailable"), "{south}");

    let (_, every) = page(
        &app,
        "/console/sagas",
        Some(&token("*", "ops:read ops:platform")),
    )
    .await;
    assert!(every.contains("physician_unavailable") && every.contains("patient_invalid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_secure_when_the_sign_in_came_over_https() {
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let operator = token("north", "ops:read");
    let cookie = |response: reqwest::Response| {
        assert_eq!(response.status(), 303);
        response.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let plain = cookie(sign_in(&app, &operator, &[]).await);
    assert!(!plain.contains("Secure"), "{plain}");
    for proxy in [
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=192.0.2.60;proto=https"),
    ] {
        let secure = cookie(sign_in(&app, &operator, &[proxy]).await);
        assert!(secure.ends_with("; Secure"), "{proxy:?}: {secure}");
        let signed_out = client()
            .post(format!("{}/console/session/end", app.base))
            .header(proxy.0, proxy.1)
            .send()
            .await
            .unwrap();
        assert!(cookie(signed_out).ends_with("; Secure"));
    }
}

/// Debian's Chromium, which the browser test drives headless.
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium with a profile of its own, and the task that reads its events.
struct Chromium {
    browser: Browser,
    events: tokio::task::JoinHandle<()>,
    profile: PathBuf,
}

impl Chromium {
    /// Whether a browser test runs: always, unless `HAP_SKIP_BROWSER_TESTS=1` says to skip
    /// it (and it then says so). Without [`CHROMIUM`] it fails, saying how to install it:
    /// a browser test that passes without a browser would hide that nothing was tested.
    fn wanted() -> bool {
        if std::env::var("HAP_SKIP_BROWSER_TESTS").is_ok_and(|skip| skip == "1") {
            eprintln!("skipped: HAP_SKIP_BROWSER_TESTS=1");
            return false;
        }
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is not installed, and the console's browser tests need it: install it \
             with `HAP_WITH_BROWSER=1 bash scripts/services.sh` (as root) or \
             `sudo apt-get install chromium`, or skip these tests with HAP_SKIP_BROWSER_TESTS=1"
        );
        true
    }

    async fn launch() -> Self {
        let profile = std::env::temp_dir().join(format!("hap-chromium-{}", uuid::Uuid::now_v7()));
        let config = BrowserConfig::builder()
            .chrome_executable(CHROMIUM)
            .no_sandbox()
            .user_data_dir(&profile)
            .window_size(1280, 900)
            .build()
            .unwrap();
        let (browser, mut handler) = Browser::launch(config).await.unwrap();
        let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Self {
            browser,
            events,
            profile,
        }
    }

    async fn open(&self, url: &str) -> chromiumoxide::Page {
        self.browser.new_page(url).await.unwrap()
    }

    async fn close(mut self) {
        self.browser.close().await.unwrap();
        self.browser.wait().await.unwrap();
        self.events.await.unwrap();
        std::fs::remove_dir_all(&self.profile).ok();
    }
}

/// Saves the whole of `page` as `target/console/{name}.png`.
async fn screenshot(page: &chromiumoxide::Page, name: &str) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console");
    std::fs::create_dir_all(&folder).unwrap();
    let params = ScreenshotParams::builder().full_page(true).build();
    page.save_screenshot(params, folder.join(format!("{name}.png")))
        .await
        .unwrap();
}

/// Clicks the element of `page` that `selector` finds.
async fn click(page: &chromiumoxide::Page, selector: impl Into<String>) {
    let element = page.find_element(selector).await.unwrap();
    element.click().await.unwrap();
}

/// Waits until `page` (which may be navigating) shows `text`.
async fn shows(page: &chromiumoxide::Page, text: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        // While the page navigates, its document is briefly not there to read.
        (page.content().await).is_ok_and(|html| html.contains(text))
    })
    .await
}

/// Pastes `token` into the sign-in form on `page` and sends it, as an operator would: the
/// browser posts it with its own `Origin` and `Sec-Fetch-Site`, and keeps the cookie the
/// answer sets.
async fn sign_in_with_the_form(page: &chromiumoxide::Page, token: &str) {
    assert!(shows(page, "Sign in to the HAP console").await);
    click(page, "textarea").await;
    page.evaluate(format!(
        "document.querySelector('textarea').value = '{token}'"
    ))
    .await
    .unwrap();
    click(page, "form[action='/console/session'] button").await;
}

/// What the page's script `expression` returns, as JSON.
async fn evaluated(page: &chromiumoxide::Page, expression: &str) -> serde_json::Value {
    (page.evaluate(expression).await.unwrap())
        .into_value()
        .unwrap()
}

/// The text of the element of `page` that `selector` finds.
async fn text_in(page: &chromiumoxide::Page, selector: &str) -> String {
    let expression = format!("document.querySelector(\"{selector}\").textContent");
    match evaluated(page, &expression).await {
        serde_json::Value::String(text) => text,
        other => panic!("no text in {selector}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_an_operator_signs_in_with_the_form_and_sees_the_processes_and_the_lags() {
    if !Chromium::wanted() {
        return;
    }
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let (instance, shutdown) = record_a_process(&db, &app, busy()).await;
    // One event no publisher ever publishes: the publisher lags one event behind.
    let writer = token("north", "patients:write");
    app.register_patient_as(&writer, "DOC-B1").await;
    let chromium = Chromium::launch().await;
    let page = chromium.open(&format!("{}/console", app.base)).await;
    let html = page.content().await.unwrap();
    assert!(html.contains("Sign in to the HAP console"), "{html}");
    screenshot(&page, "sign-in").await;

    // A platform operator's overview has it all.
    sign_in_with_the_form(&page, &token("*", "ops:read ops:platform")).await;
    assert!(
        shows(&page, &instance).await,
        "{}",
        page.content().await.unwrap()
    );
    // Once the process has beaten twice, its commands show as a rate.
    let plotted = eventually(Duration::from_secs(20), || async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        page.reload().await.is_ok()
            && (page.content().await).is_ok_and(|html| html.contains("<rect"))
    })
    .await;
    assert!(plotted, "{}", page.content().await.unwrap());
    // The lags: the publisher's in events and seconds (on the cards, kept current by the
    // live script, and in the leader's line), and each instance's projectors'.
    assert_eq!(text_in(&page, "[data-live=lagEvents]").await, "1");
    let seconds = text_in(&page, "[data-live=lagSeconds]").await;
    assert!(seconds.parse::<u64>().is_ok(), "{seconds}");
    let leader = text_in(&page, "#leader").await;
    assert!(leader.contains(&format!("Leader: {instance}")), "{leader}");
    assert!(leader.contains(" 1 events and "), "{leader}");
    assert!(leader.ends_with(" s behind the store."), "{leader}");
    let behind = text_in(&page, "#leader .lag-seconds").await;
    assert!(behind.parse::<f64>().is_ok_and(|s| s >= 0.0), "{behind}");
    let lags = evaluated(
        &page,
        "Array.from(document.querySelectorAll('tr')).filter(r => r.textContent.includes('test-host'))\
             .map(r => r.cells[r.cells.length - 1].textContent)",
    )
    .await;
    assert!(
        lags.as_array().unwrap().contains(&json!("1.5")),
        "the projector lag of the instance: {lags}"
    );
    screenshot(&page, "overview").await;
    // The live script keeps the numbers current without a reload.
    app.register_patient_as(&writer, "DOC-B2").await;
    let live = eventually(Duration::from_secs(10), || async {
        text_in(&page, "[data-live=lagEvents]").await == "2"
    })
    .await;
    assert!(live, "{}", page.content().await.unwrap());
    let cookies = page.evaluate("document.cookie").await.unwrap();
    assert_eq!(
        cookies.value().and_then(|v| v.as_str()),
        Some(""),
        "the session cookie is HttpOnly"
    );

    chromium.close().await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_token_without_an_ops_scope_is_refused_on_the_sign_in_form() {
    if !Chromium::wanted() {
        return;
    }
    let db = TestDb::new().await;
    let app = TestApp::start_with(&db, settings()).await;
    let chromium = Chromium::launch().await;
    let page = chromium.open(&format!("{}/console", app.base)).await;
    let clinician = token("north", "patients:read patients:write consultations:read");
    sign_in_with_the_form(&page, &clinician).await;
    assert!(
        shows(&page, "The token was refused: it does not grant").await,
        "{}",
        page.content().await.unwrap()
    );
    let html = page.content().await.unwrap();
    assert!(html.contains("ops:read"), "{html}");
    assert!(
        html.contains(r#"action="/console/session""#),
        "the form again: {html}"
    );
    screenshot(&page, "sign-in-refused").await;
    let cookies = page.get_cookies().await.unwrap();
    assert!(
        cookies.iter().all(|cookie| cookie.name != "hap_console"),
        "no session: {cookies:?}"
    );

    // No page of the console opens after it: each asks to sign in.
    for path in ["/console", "/console/dead-letters", "/console/sagas"] {
        page.goto(format!("{}{path}", app.base)).await.unwrap();
        assert!(shows(&page, "Sign in to the HAP console").await, "{path}");
        let html = page.content().await.unwrap();
        assert!(!html.contains("Sign out"), "{path}: {html}");
    }
    chromium.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_scheduled_consultations_causal_trail_crosses_its_streams() {
    if !Chromium::wanted() {
        return;
    }
    let db = TestDb::new().await;
    let parts = Parts {
        sagas: true,
        timer: false,
    };
    let system = System::start_with(&db, Duration::from_secs(600), parts, settings()).await;
    let app = &system.app;
    let clinic = token(
        "north",
        "patients:write physicians:write consultations:read consultations:write",
    );
    let patient = app.register_patient_as(&clinic, "DOC-T1").await;
    let physician = app.register_physician_as(&clinic, "CRM-T1").await;
    let id = app
        .request_consultation_as(&clinic, patient, physician)
        .await;
    system
        .wait_for_status_as(id, "scheduled", &clinic, Duration::from_secs(30))
        .await;

    let chromium = Chromium::launch().await;
    let page = chromium
        .open(&format!("{}/console/streams/{id}", app.base))
        .await;
    sign_in_with_the_form(&page, &token("north", "ops:read")).await;
    // Signed in, the overview; the stream's page from the streams form.
    assert!(shows(&page, "Overview").await);
    click(&page, "a[href='/console/streams']").await;
    assert!(shows(&page, "Show its events").await);
    click(&page, "input[name=id]").await;
    page.evaluate(format!(
        "document.querySelector('input[name=id]').value = '{id}'"
    ))
    .await
    .unwrap();
    click(&page, "form[action='/console/streams'] button").await;
    assert!(
        shows(&page, "Causal trail").await,
        "{}",
        page.content().await.unwrap()
    );
    // Each row of the trail: its stream's kind and id, version and event type.
    let rows = evaluated(
        &page,
        "Array.from(document.querySelectorAll('h2 + table tr')).slice(1).map(r => \
             [r.cells[1].textContent, r.cells[2].textContent, r.cells[3].textContent])",
    )
    .await;
    let rows: Vec<(String, String, String)> = serde_json::from_value(rows).unwrap();
    let step = |kind: &str, event_type: &str| {
        rows.iter()
            .position(|(stream, _, t)| stream.starts_with(&format!("{kind} ")) && t == event_type)
            .unwrap_or_else(|| panic!("no {event_type} of a {kind} in {rows:?}"))
    };
    let started = step("consultation", "ConsultationSchedulingStarted");
    let validated = step("patient", "PatientValidatedForConsultation");
    let confirmed = step("physician-schedule", "PhysicianAvailabilityConfirmed");
    let scheduled = step("consultation", "ConsultationScheduled");
    assert!(started < validated && started < confirmed, "{rows:?}");
    assert!(validated < scheduled && confirmed < scheduled, "{rows:?}");
    assert_eq!(rows[started].0, format!("consultation {id}"));
    assert_eq!(rows[started].1, "1");
    assert_eq!(rows[validated].0, format!("patient {patient}"));
    assert_eq!(rows[scheduled].1, "2");
    screenshot(&page, "causal-trail").await;

    // Each stream of the trail links to its own page.
    click(&page, format!("a[href='/console/streams/{patient}']")).await;
    assert!(shows(&page, "PatientRegistered").await);
    let html = page.content().await.unwrap();
    assert!(html.contains("PatientValidatedForConsultation"), "{html}");
    chromium.close().await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_stuck_consultation_shows_and_a_dead_letter_replayed_reaches_the_read_model()
{
    if !Chromium::wanted() {
        return;
    }
    let db = TestDb::new().await;
    // Authentication on: the operator signs in with the form, and the replay is posted by the
    // browser itself, through the console's check of where writes come from.
    let mut settings = settings();
    settings.instance = "test".into();
    let parts = Parts {
        sagas: false,
        timer: false,
    };
    let system = System::start_with(&db, Duration::from_millis(500), parts, settings).await;
    let clinic = token(
        "north",
        "patients:read patients:write physicians:write consultations:read consultations:write",
    );
    let patient = system.app.register_patient_as(&clinic, "DOC-1").await;
    let physician = system.app.register_physician_as(&clinic, "CRM-1").await;
    let id = system
        .app
        .request_consultation_as(&clinic, patient, physician)
        .await;
    system
        .wait_for_status_as(id, "requested", &clinic, Duration::from_secs(10))
        .await;
    let scheduling = QueueNames::new(&system.prefix, "scheduling-service", "test");
    wait_for_queue(&scheduling.dead_letters).await;
    poison(&scheduling, "north").await;
    // A patient's registration that its projector failed to apply (the read database was
    // down, say): it is nowhere but in the dead-letter queue, so only a replay shows it.
    let patients = QueueNames::new(&system.prefix, "patient-service", "test");
    wait_for_queue(&patients.dead_letters).await;
    let mut registered = unpublished_registration("Ana Replayed");
    registered.tenant_id = "north".into();
    dead_letter(&patients, &registered, "database down").await;
    let path = format!("/patients/{}", registered.stream_id);
    let patient_page = || {
        system
            .app
            .request(Method::GET, &path)
            .bearer_auth(&clinic)
            .send()
    };
    assert_eq!(patient_page().await.unwrap().status(), 404);
    // A consultation that failed, as the saga records one for an inactive patient (no saga
    // runs here, or the stuck one would not stay stuck): the page charts it.
    let store = db.plain_store();
    failed_scheduling(&store, "north", "patient_invalid").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let chromium = Chromium::launch().await;
    let sagas = chromium
        .open(&format!("{}/console/sagas", system.app.base))
        .await;
    sign_in_with_the_form(&sagas, &token("north", "ops:read ops:write")).await;
    assert!(shows(&sagas, "Overview").await);
    sagas
        .goto(format!("{}/console/sagas", system.app.base))
        .await
        .unwrap();
    assert!(shows(&sagas, "stuck: past its deadline").await);
    assert!(shows(&sagas, "patient_invalid failures per hour").await);
    let html = sagas.content().await.unwrap();
    assert!(html.contains(&id.to_string()), "{html}");
    assert!(html.contains("<rect"), "the failure is charted: {html}");
    screenshot(&sagas, "sagas").await;

    // A second tab of the same browser shares the session.
    let letters = chromium
        .open(&format!("{}/console/dead-letters", system.app.base))
        .await;
    let event = registered.event_id.to_string();
    assert!(shows(&letters, &event).await);
    assert!(shows(&letters, "Nonsense").await);
    assert!(shows(&letters, "No replay or discard yet").await);
    // The registration's own page, and from it the replay.
    click(
        &letters,
        format!("a[href*='/message?'][href*='event={event}']"),
    )
    .await;
    assert!(shows(&letters, "x-original-queue").await);
    let html = letters.content().await.unwrap();
    assert!(html.contains("database down"), "{html}");
    assert!(html.contains("Ana Replayed"), "{html}");
    screenshot(&letters, "dead-letter").await;
    click(
        &letters,
        format!("a[href*='event={event}'][href*='action=replay']"),
    )
    .await;
    assert!(shows(&letters, "Yes, replay").await);
    screenshot(&letters, "dead-letters-confirm").await;
    click(
        &letters,
        "form[action='/console/dead-letters/resolve'] button",
    )
    .await;
    // Back on the list, which names who replayed what; the replayed registration is applied
    // this time.
    assert!(
        shows(&letters, r#"<td class="actor">user@north</td>"#).await,
        "{}",
        letters.content().await.unwrap()
    );
    let html = letters.content().await.unwrap();
    assert!(
        html.contains(&format!("the dead letter <code>{event}</code>")),
        "{html}"
    );
    assert!(shows(&letters, "Nonsense at position").await);
    screenshot(&letters, "dead-letters").await;
    let applied = eventually(Duration::from_secs(15), || async {
        let response = patient_page().await.unwrap();
        response.status() == 200
            && response.json::<serde_json::Value>().await.unwrap()["name"] == "Ana Replayed"
    })
    .await;
    assert!(applied, "the replayed registration reached the read model");
    let reader = token("north", "ops:read");
    let (_, after) = page(&system.app, "/console/dead-letters", Some(&reader)).await;
    assert!(!after.contains(&format!("event={event}")), "{after}");
    let metrics = system.app.get_text("/metrics").await;
    assert!(
        metrics.contains("hap_console_dead_letter_actions_total{action=\"replay\"} 1"),
        "the replay is counted: {metrics}"
    );
    let recorded = recorded_actions(&db).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        (
            recorded[0].0.as_str(),
            recorded[0].1.as_str(),
            recorded[0].2.as_str()
        ),
        ("user@north", "north", "replay")
    );

    chromium.close().await;
    system.stop().await;
}

/// A patient's registration as the store would have recorded it, never stored nor published.
fn unpublished_registration(name: &str) -> RecordedEvent {
    let patient = uuid::Uuid::now_v7();
    let payload = json!({"patientId": patient, "name": name, "birthDate": "1990-01-01",
                         "documentNumber": format!("D-{patient}")});
    let mut event = unpublished("patient", "PatientRegistered", payload);
    event.stream_id = patient;
    event
}

/// An event of the insecure tenant as the store would have recorded it, never stored nor
/// published.
fn unpublished(
    aggregate_type: &str,
    event_type: &str,
    payload: serde_json::Value,
) -> RecordedEvent {
    RecordedEvent {
        position: 1,
        transaction_id: 1,
        event_id: uuid::Uuid::now_v7(),
        stream_id: uuid::Uuid::now_v7(),
        aggregate_type: aggregate_type.into(),
        version: 1,
        event_type: event_type.into(),
        payload: serde_json::value::RawValue::from_string(payload.to_string()).unwrap(),
        tenant_id: api::auth::INSECURE_TENANT.into(),
        correlation_id: "console-test".into(),
        causation_id: None,
        actor_id: None,
        schema_version: 1,
        occurred_at: chrono::Utc::now(),
    }
}
