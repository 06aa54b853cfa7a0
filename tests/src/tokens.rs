//! Settings that verify tokens, and tokens they accept, for the tests of authentication,
//! tenants and scopes.

use std::time::Duration;

/// The HS256 secret of [`settings`].
pub const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";
/// The master key of personal data of [`settings`].
pub const DATA_KEY: &str = "dGVzdHMtbWFzdGVyLWtleS0zMi1ieXRlcy1sb25nISE=";
pub const ISSUER: &str = "https://id.clinic.example";
pub const AUDIENCE: &str = "hap";

/// HAP's default settings, verifying tokens signed with [`SECRET`] by [`ISSUER`] for
/// [`AUDIENCE`].
pub fn settings() -> api::config::Settings {
    let mut settings = api::config::Settings::defaults();
    settings.auth_secret = Some(SECRET.parse().expect("a valid secret"));
    settings.data_key = Some(DATA_KEY.parse().expect("a valid data key"));
    settings.auth_issuer = Some(ISSUER.into());
    settings.auth_audience = Some(AUDIENCE.into());
    settings
}

/// A token of subject `user@{tenant}` for `tenant` with `scope`, as `hap token` makes it.
pub fn token(tenant: &str, scope: &str) -> String {
    let request = api::auth::TokenRequest {
        tenant: tenant.into(),
        subject: format!("user@{tenant}"),
        scope: scope.into(),
        ttl: Duration::from_secs(600),
    };
    api::auth::mint(&settings(), &request).expect("the settings can sign")
}

/// Settings with [`DATA_KEY`] as the master key of personal data, and authentication off.
pub fn keyed_settings() -> api::config::Settings {
    let mut settings = crate::insecure_settings();
    settings.data_key = Some(DATA_KEY.parse().expect("a valid data key"));
    settings
}
