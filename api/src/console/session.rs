//! Who the operator is, and how they sign in and out.
//!
//! The token comes from `Authorization: Bearer` (an authenticating proxy in front of HAP) or
//! from the session cookie, which holds a token the operator pasted into the sign-in form:
//! `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends it), scoped
//! to `/console`, expiring with the token, and `Secure` (sent over HTTPS only) when the
//! sign-in came over HTTPS ([`over_https`]). A token never travels in a URL. Writes are
//! refused when the browser says they come from another site, which with the cookie's
//! `SameSite=Strict` keeps them safe from cross-site request forgery.

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::layout::frame;
use crate::auth::{Caller, OpsRead, Scope, Verified, bearer};
use crate::error::ApiError;
use crate::state::AppState;

/// The session cookie's name.
const COOKIE: &str = "hap_console";

/// A caller allowed to see the console.
pub struct Operator(pub Caller);

impl Operator {
    /// The tenant the operator sees; `None` for a platform operator, who sees every tenant.
    pub fn tenant(&self) -> Option<&str> {
        (!self.0.is_platform_operator()).then_some(self.0.tenant_id.as_str())
    }
}

impl FromRequestParts<AppState> for Operator {
    /// A page: the sign-in form, or why the token is refused.
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let token = if app.auth.is_insecure() {
            None
        } else {
            match bearer(&parts.headers) {
                Ok(Some(token)) => Some(token),
                Ok(None) => session_token(&parts.headers),
                Err(error) => return Err(refused(&error)),
            }
        };
        match app.auth.verify(token) {
            Ok(verified) => operator(verified).ok_or_else(|| forbidden(OpsRead::NAME)),
            Err(ApiError::Unauthorized(None)) => Err(sign_in_page(StatusCode::OK, None)),
            Err(error) => Err(refused(&error)),
        }
    }
}

/// The operator a verified token makes; `None` when it lacks `ops:read`.
fn operator(verified: Verified) -> Option<Operator> {
    (verified.caller.may(OpsRead::NAME)).then_some(Operator(verified.caller))
}

/// The token in the request's session cookie, if any.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|token| !token.is_empty())
}

/// A 403 page naming the scope the token lacks.
pub fn forbidden(scope: &str) -> Response {
    let body = frame(
        "Not allowed",
        None,
        html! {
            h1 { "Not allowed" }
            p { "Your token does not grant " code { (scope) } "." }
        },
    );
    (StatusCode::FORBIDDEN, body).into_response()
}

/// The sign-in page again, saying why the token was refused (401).
fn refused(error: &ApiError) -> Response {
    sign_in_page(StatusCode::UNAUTHORIZED, Some(&error.to_string()))
}

fn sign_in_page(status: StatusCode, problem: Option<&str>) -> Response {
    let body = frame(
        "Sign in",
        None,
        html! {
            h1 { "Sign in to the HAP console" }
            @if let Some(problem) = problem {
                p.notice { "The token was refused: " (problem) }
            }
            p.muted { "Paste a token that grants " code { "ops:read" } ". It is kept in a cookie \
                       this browser sends only to the console, until the token expires." }
            form method="post" action="/console/session" {
                textarea name="token" rows="5" cols="80" required autocomplete="off" {}
                p { button type="submit" { "Sign in" } }
            }
        },
    );
    (status, body).into_response()
}

/// Whether a state-changing request comes from the console's own pages, as far as the
/// browser says: `Sec-Fetch-Site`, else `Origin` against `Host`. A request that says neither
/// comes from no browser (curl, a script), which no other site can forge.
pub fn same_site(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return matches!(site, "same-origin" | "none");
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        (Some(_), None) => false,
    }
}

/// The 403 a cross-site write gets.
pub fn cross_site() -> Response {
    let body = frame(
        "Refused",
        None,
        html! {
            h1 { "Refused" }
            p { "This request came from another site." }
        },
    );
    (StatusCode::FORBIDDEN, body).into_response()
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// `POST /console/session`: verifies the pasted token and keeps it in the session cookie.
pub async fn sign_in(
    State(app): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    let token = form.token.trim();
    let verified = match app.auth.verify(Some(token)) {
        Ok(verified) => verified,
        Err(error) => return refused(&error),
    };
    let expires_at = verified.expires_at;
    if operator(verified).is_none() {
        // The form again, saying why: the operator may have pasted the wrong token.
        let problem = format!("it does not grant {}", OpsRead::NAME);
        return sign_in_page(StatusCode::FORBIDDEN, Some(&problem));
    }
    let mut response = Redirect::to("/console").into_response();
    // With authentication off there is nothing to keep.
    if let Some(expires_at) = expires_at {
        let max_age = expires_at.saturating_sub(jsonwebtoken::get_current_timestamp());
        set_cookie(&mut response, token, max_age, over_https(&headers));
    }
    response
}

/// `POST /console/session/end`: forgets the session cookie.
pub async fn sign_out(headers: HeaderMap) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    let mut response = Redirect::to("/console").into_response();
    set_cookie(&mut response, "", 0, over_https(&headers));
    response
}

/// Whether the browser reached HAP over HTTPS. HAP itself serves plain HTTP, so that is
/// what the proxy in front of it that ends TLS says: `X-Forwarded-Proto: https`, or
/// `proto=https` in `Forwarded` (the first proxy's word, the one nearest the browser). The
/// headers are trusted without knowing the proxy because they can only make the cookie
/// stricter: a client that forges them gets a cookie its own plain-HTTP requests never send
/// back.
pub fn over_https(headers: &HeaderMap) -> bool {
    let first = |name: header::HeaderName| {
        let value = headers.get(name)?.to_str().ok()?;
        value
            .split(',')
            .next()
            .map(|v| v.trim().to_ascii_lowercase())
    };
    let forwarded_proto = first(header::HeaderName::from_static("x-forwarded-proto"));
    let forwarded = first(header::FORWARDED).and_then(|element| {
        element.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            name.eq_ignore_ascii_case("proto")
                .then(|| value.trim_matches('"').to_owned())
        })
    });
    forwarded_proto.as_deref() == Some("https") || forwarded.as_deref() == Some("https")
}

fn set_cookie(response: &mut Response, token: &str, max_age: u64, secure: bool) {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/console; Max-Age={max_age}{secure}"
    );
    // A JWT is base64url and dots; anything else was refused by the verification above.
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_session_token_is_read_from_among_other_cookies() {
        let h = headers(&[("cookie", "a=1; hap_console=abc.def; b=2")]);
        assert_eq!(session_token(&h), Some("abc.def"));
        assert_eq!(
            session_token(&headers(&[("cookie", "hap_consoleX=1")])),
            None
        );
        assert_eq!(session_token(&HeaderMap::new()), None);
    }

    #[test]
    fn writes_from_another_site_are_told_apart() {
        assert!(same_site(&headers(&[])));
        assert!(same_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_site(&headers(&[("sec-fetch-site", "same-site")])));
        let ours = [("origin", "http://hap:8080"), ("host", "hap:8080")];
        assert!(same_site(&headers(&ours)));
        let theirs = [("origin", "https://evil.example"), ("host", "hap:8080")];
        assert!(!same_site(&headers(&theirs)));
        assert!(!same_site(&headers(&[
            ("origin", "null"),
            ("host", "hap:8080")
        ])));
    }

    #[test]
    fn https_is_what_the_proxy_nearest_the_browser_says() {
        for (header, value, https) in [
            ("x-forwarded-proto", "https", true),
            ("x-forwarded-proto", "HTTPS, http", true),
            ("x-forwarded-proto", "http, https", false),
            (
                "forwarded",
                "for=192.0.2.60;proto=https;by=203.0.113.43",
                true,
            ),
            ("forwarded", "proto=\"https\", proto=http", true),
            ("forwarded", "for=192.0.2.60;proto=http", false),
        ] {
            let said = over_https(&headers(&[(header, value)]));
            assert_eq!(said, https, "{header}: {value}");
        }
        assert!(!over_https(&HeaderMap::new()));
    }
}
