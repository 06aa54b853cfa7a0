//! Bearer tokens (JWT): verifying them with the configured keys, minting them for `hap token`,
//! the caller a valid token proves and the scopes a token may grant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::error::ApiError;

/// A permission a token grants; each route needs one.
pub trait Scope: Send + Sync + 'static {
    const NAME: &'static str;
}

macro_rules! scopes {
    ($($scope:ident = $name:literal),+ $(,)?) => {
        $(
            #[doc = concat!("The `", $name, "` scope.")]
            pub struct $scope;

            impl Scope for $scope {
                const NAME: &'static str = $name;
            }
        )+

        /// Every scope HAP knows.
        pub const SCOPES: &[&str] = &[$($name),+];
    };
}

scopes! {
    PatientsRead = "patients:read",
    PatientsWrite = "patients:write",
    PatientsErase = "patients:erase",
    PhysiciansRead = "physicians:read",
    PhysiciansWrite = "physicians:write",
    PhysiciansErase = "physicians:erase",
    ConsultationsRead = "consultations:read",
    ConsultationsWrite = "consultations:write",
    RecordsRead = "records:read",
    RecordsWrite = "records:write",
    OpsRead = "ops:read",
    OpsWrite = "ops:write",
    OpsPlatform = "ops:platform",
}

/// The tenant and subject everything is done for when authentication is switched off.
pub const INSECURE_TENANT: &str = "default";
const INSECURE_SUBJECT: &str = "anonymous";

/// The `tenant` claim of a platform operator's token: with [`OpsPlatform`] it sees every
/// tenant in the console, and the clinical API honours none of its scopes.
pub const PLATFORM_TENANT: &str = "*";

/// Who is calling, as their token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The clinic: everything the caller reads or writes is scoped by it.
    pub tenant_id: String,
    /// Who acts (the token's `sub`): stored with every event the request causes.
    pub subject: String,
    /// Shared: a caller is cloned from the verified-token cache on every request.
    scopes: Arc<[String]>,
}

impl Caller {
    /// Whether the token grants `scope`. A token of the platform tenant grants only the
    /// console's scopes: it belongs to no clinic, so no clinical route may act for it.
    pub fn may(&self, scope: &str) -> bool {
        (self.tenant_id != PLATFORM_TENANT || scope.starts_with("ops:"))
            && self.scopes.iter().any(|s| s == scope)
    }

    /// Whether this is a platform operator, who sees every tenant in the console.
    pub fn is_platform_operator(&self) -> bool {
        self.tenant_id == PLATFORM_TENANT && self.may(OpsPlatform::NAME)
    }
}

/// A verified token: the caller it proves, and until when.
#[derive(Debug, Clone)]
pub struct Verified {
    pub caller: Caller,
    /// The token's `exp` (seconds since the epoch); `None` when authentication is off.
    pub expires_at: Option<u64>,
}

/// The claims HAP reads from a token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    /// Space-separated scopes.
    #[serde(default)]
    scope: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Why authentication is not configured well enough to serve.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "no key to verify tokens with: set HAP_AUTH_SECRET or HAP_AUTH_PUBLIC_KEY_FILE, or \
         HAP_INSECURE_NO_AUTH=true for a local experiment"
    )]
    NoKey,
    #[error("HAP_AUTH_PUBLIC_KEY_FILE {path}: {reason}")]
    PublicKey { path: String, reason: String },
    #[error("`hap token` signs with HAP_AUTH_SECRET, which is not set")]
    NoSecret,
    #[error(
        "no master key for personal data: set HAP_DATA_KEY or HAP_DATA_KEY_FILE (32 random \
         bytes, base64), or HAP_INSECURE_NO_AUTH=true for a local experiment"
    )]
    NoDataKey,
    #[error("{0}")]
    DataKey(String),
}

/// Seconds a token is still accepted after its `exp`, for clocks that differ a little.
const LEEWAY_SECONDS: u64 = 5;

/// How many verified tokens [`Verifier`] remembers. A client sends the same token with every
/// request until it expires, so this covers that many clients at once; past it, a token is
/// verified again.
const REMEMBERED_TOKENS: u64 = 10_000;

/// A configured key, with the checks a token signed by it must pass.
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Verifies tokens; cheap to share behind an `Arc`.
pub struct Verifier {
    /// `None`: authentication is off, every request acts as [`Verifier::anonymous`].
    keys: Option<Vec<Key>>,
    /// The caller of every request when authentication is off, made once.
    anonymous: Verified,
    /// Tokens verified already, by their exact text (signature included), and what each
    /// proved. Verifying costs a signature check and two JSON parses on every request (an
    /// RS256 or ES256 check many times an HS256 one); a token is the same bytes on every
    /// request of its client. An entry is only ever a token that passed every check, it
    /// leaves the cache when its `exp` (plus the leeway) passes, and a hit is refused past
    /// `exp` as a fresh verification would refuse it. The keys and the checks are fixed for
    /// the life of the process, so nothing else could make a remembered answer wrong.
    verified: Cache<String, Verified>,
}

impl Verifier {
    /// The verifier `settings` configure; an error if nothing is configured and insecure mode
    /// was not asked for.
    pub fn from_settings(settings: &Settings) -> Result<Self, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.auth_secret {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.expose().as_bytes()),
            ));
        }
        if let Some(path) = &settings.auth_public_key_file {
            let failed = |reason: String| AuthConfigError::PublicKey {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
            match DecodingKey::from_rsa_pem(&pem) {
                Ok(key) => keys.push((Algorithm::RS256, key)),
                Err(_) => {
                    let key = DecodingKey::from_ec_pem(&pem)
                        .map_err(|_| failed("not a PEM RSA or EC (P-256) public key".to_owned()))?;
                    keys.push((Algorithm::ES256, key));
                }
            }
        }
        let keys = match (keys.is_empty(), settings.insecure_no_auth) {
            (false, _) => Some(keys),
            (true, true) => None,
            (true, false) => return Err(AuthConfigError::NoKey),
        };
        let checked = |(algorithm, key)| Key {
            algorithm,
            key,
            validation: validation(algorithm, settings),
        };
        Ok(Self {
            keys: keys.map(|keys| keys.into_iter().map(checked).collect()),
            anonymous: Verified {
                caller: Caller {
                    tenant_id: INSECURE_TENANT.to_owned(),
                    subject: INSECURE_SUBJECT.to_owned(),
                    scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                },
                expires_at: None,
            },
            verified: Cache::builder()
                .max_capacity(REMEMBERED_TOKENS)
                .expire_after(UntilExpired)
                .build(),
        })
    }

    /// Whether requests are served without tokens.
    pub fn is_insecure(&self) -> bool {
        self.keys.is_none()
    }

    /// The caller a request's `Authorization` header proves, or the 401 that says why not.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = if self.is_insecure() {
            None
        } else {
            bearer(headers)?
        };
        Ok(self.verify(token)?.caller)
    }

    /// What `token` proves (`None`: the request carried none), or the 401 that says why not.
    /// With authentication off, every request is the insecure caller, token or not.
    pub fn verify(&self, token: Option<&str>) -> Result<Verified, ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(self.anonymous.clone());
        };
        let token = token.ok_or(ApiError::Unauthorized(None))?;
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(known) = self.verified.get(token)
            && known
                .expires_at
                .is_some_and(|exp| exp.saturating_add(LEEWAY_SECONDS) >= now)
        {
            return Ok(known);
        }
        let verified = verify(keys, token)?;
        self.verified.insert(token.to_owned(), verified.clone());
        Ok(verified)
    }
}

/// The checks a token signed with `algorithm` must pass, as `settings` configure them.
fn validation(algorithm: Algorithm, settings: &Settings) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = LEEWAY_SECONDS;
    match &settings.auth_issuer {
        Some(issuer) => validation.set_issuer(&[issuer]),
        None => validation.iss = None,
    }
    match &settings.auth_audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    validation
}

/// What `token` proves, checked against `keys`: its signature and its claims.
fn verify(keys: &[Key], token: &str) -> Result<Verified, ApiError> {
    // The header names the algorithm; only the configured keys' algorithms are accepted
    // (never `none`, which the library cannot even parse).
    let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
    let key = keys
        .iter()
        .find(|key| key.algorithm == header.alg)
        .ok_or_else(|| invalid("the token is signed with an algorithm HAP does not accept"))?;
    let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
        .map_err(|error| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match error.kind() {
                K::ExpiredSignature => "the token has expired",
                K::InvalidSignature => "the token's signature does not verify",
                K::InvalidIssuer => "the token was issued by another issuer",
                K::InvalidAudience => "the token is meant for another audience",
                K::MissingRequiredClaim(_) => "the token lacks a required claim",
                _ => "malformed token",
            })
        })?
        .claims;
    if claims.tenant != PLATFORM_TENANT && !valid_tenant(&claims.tenant) {
        return Err(invalid("the token's tenant is not a tenant id"));
    }
    if claims.sub.is_empty() {
        return Err(invalid("the token's subject is empty"));
    }
    Ok(Verified {
        caller: Caller {
            tenant_id: claims.tenant,
            subject: claims.sub,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
        },
        expires_at: Some(claims.exp),
    })
}

/// Keeps a verified token until its `exp` and the leeway have passed (on the cache's monotonic
/// clock; [`Verifier::verify`] also compares `exp` with the wall clock on every hit).
struct UntilExpired;

impl moka::Expiry<String, Verified> for UntilExpired {
    fn expire_after_create(
        &self,
        _token: &String,
        verified: &Verified,
        _created_at: Instant,
    ) -> Option<Duration> {
        let exp = verified.expires_at?;
        let left = exp
            .saturating_add(LEEWAY_SECONDS)
            .saturating_sub(jsonwebtoken::get_current_timestamp());
        Some(Duration::from_secs(left))
    }
}

/// The token of an `Authorization: Bearer <token>` header; `None` without the header, a 401
/// when it says something else.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| invalid("the Authorization header is not `Bearer <token>`"))
}

fn invalid(why: &'static str) -> ApiError {
    ApiError::Unauthorized(Some(why))
}

/// Tenant ids are short plain identifiers: they end up in keys, metrics and logs.
fn valid_tenant(tenant: &str) -> bool {
    (1..=64).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// What `hap token` signs.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub tenant: String,
    pub subject: String,
    pub scope: String,
    pub ttl: Duration,
}

/// A token for `request`, signed (HS256) with the configured secret, carrying the configured
/// issuer and audience.
pub fn mint(settings: &Settings, request: &TokenRequest) -> Result<String, AuthConfigError> {
    let secret = settings
        .auth_secret
        .as_ref()
        .ok_or(AuthConfigError::NoSecret)?;
    let exp = jsonwebtoken::get_current_timestamp() + request.ttl.as_secs();
    let claims = Claims {
        sub: request.subject.clone(),
        tenant: request.tenant.clone(),
        scope: request.scope.clone(),
        exp,
        iss: settings.auth_issuer.clone(),
        aud: settings.auth_audience.clone(),
    };
    let key = EncodingKey::from_secret(secret.expose().as_bytes());
    Ok(
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
            .expect("HS256 signing with a secret cannot fail"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_plain_identifiers() {
        assert!(valid_tenant("clinic-a"));
        assert!(valid_tenant("default"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("a b"));
        assert!(!valid_tenant(&"x".repeat(65)));
    }

    #[test]
    fn a_platform_token_grants_the_consoles_scopes_only() {
        let caller = |tenant: &str| Caller {
            tenant_id: tenant.to_owned(),
            subject: "ops".to_owned(),
            scopes: ["ops:read", "ops:platform", "patients:read"]
                .map(str::to_owned)
                .into(),
        };
        let platform = caller(PLATFORM_TENANT);
        assert!(platform.is_platform_operator());
        assert!(platform.may(OpsRead::NAME));
        assert!(!platform.may(PatientsRead::NAME));
        let clinic = caller("north");
        assert!(!clinic.is_platform_operator());
        assert!(clinic.may(PatientsRead::NAME));
    }
}
