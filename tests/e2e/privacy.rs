//! Personal data at rest against a real PostgreSQL: uniqueness claims that keep keyed hashes.

use hap_tests::TestDb;
use uuid::Uuid;

/// Settings with a master key of personal data (and authentication off, for brevity).
fn keyed_settings() -> api::config::Settings {
    let mut settings = hap_tests::insecure_settings();
    settings.data_key = Some(hap_tests::tokens::DATA_KEY.parse().unwrap());
    settings
}

async fn claims_holding(db: &TestDb, text: &str) -> i64 {
    sqlx::query_scalar("select count(*) from unique_claims where value like '%' || $1 || '%'")
        .bind(text)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_number_is_claimed_as_a_keyed_hash_and_still_unique() {
    let db = TestDb::new().await;
    let app = hap_tests::TestApp::start_with(&db, keyed_settings()).await;
    app.register_patient("DOC-PRIVATE-1").await;
    assert_eq!(
        claims_holding(&db, "DOC-PRIVATE-1").await,
        0,
        "no clear value"
    );
    assert_eq!(claims_holding(&db, "hmac-sha256:").await, 1);

    let again = app
        .post("/patients", hap_tests::patient("DOC-PRIVATE-1"))
        .await;
    assert_eq!(again.status(), 409);
    let detail = again.text().await.unwrap();
    assert!(
        detail.contains("documentNumber") && detail.contains("DOC-PRIVATE-1"),
        "the caller is told the value it sent: {detail}"
    );
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
    let master = keyed_settings().master_key().unwrap().unwrap();
    let hash = || privacy::claims::hash_clear_claims(&db.pool, &master);
    assert_eq!(hash().await.unwrap().replaced, 1);
    assert_eq!(hash().await.unwrap(), Default::default(), "once");
    assert_eq!(claims_holding(&db, "DOC-OLD-1").await, 0);
    assert_eq!(claims_holding(&db, "kept-as-is").await, 1, "lookups stay");

    let app = hap_tests::TestApp::start_with(&db, keyed_settings()).await;
    let taken = app.post("/patients", hap_tests::patient("DOC-OLD-1")).await;
    assert_eq!(taken.status(), 409);

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
