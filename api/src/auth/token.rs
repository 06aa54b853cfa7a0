//! Bearer tokens (JWT): verifying them with the configured keys, minting them for `hap token`,
//! the caller a valid token proves and the scopes a token may grant.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
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
    PhysiciansRead = "physicians:read",
    PhysiciansWrite = "physicians:write",
    ConsultationsRead = "consultations:read",
    ConsultationsWrite = "consultations:write",
    RecordsRead = "records:read",
    RecordsWrite = "records:write",
}

/// The tenant and subject everything is done for when authentication is switched off.
pub const INSECURE_TENANT: &str = "default";
const INSECURE_SUBJECT: &str = "anonymous";

/// Who is calling, as their token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The clinic: everything the caller reads or writes is scoped by it.
    pub tenant_id: String,
    /// Who acts (the token's `sub`): stored with every event the request causes.
    pub subject: String,
    scopes: Vec<String>,
}

impl Caller {
    pub fn may(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
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
}

/// Verifies tokens; cheap to share behind an `Arc`.
pub struct Verifier {
    /// `None`: authentication is off, every request acts as the insecure caller.
    keys: Option<Vec<(Algorithm, DecodingKey)>>,
    issuer: Option<String>,
    audience: Option<String>,
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
        Ok(Self {
            keys,
            issuer: settings.auth_issuer.clone(),
            audience: settings.auth_audience.clone(),
        })
    }

    /// Whether requests are served without tokens.
    pub fn is_insecure(&self) -> bool {
        self.keys.is_none()
    }

    /// The caller a request's `Authorization` header proves, or the 401 that says why not.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(Caller {
                tenant_id: INSECURE_TENANT.to_owned(),
                subject: INSECURE_SUBJECT.to_owned(),
                scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            });
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(None));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("the Authorization header is not `Bearer <token>`"))?;
        // The header names the algorithm; only the configured keys' algorithms are accepted
        // (never `none`, which the library cannot even parse).
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        let (algorithm, key) = keys
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .ok_or_else(|| invalid("the token is signed with an algorithm HAP does not accept"))?;
        let mut validation = Validation::new(*algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        match &self.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
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
        if !valid_tenant(&claims.tenant) {
            return Err(invalid("the token's tenant is not a tenant id"));
        }
        if claims.sub.is_empty() {
            return Err(invalid("the token's subject is empty"));
        }
        Ok(Caller {
            tenant_id: claims.tenant,
            subject: claims.sub,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
        })
    }
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
}
