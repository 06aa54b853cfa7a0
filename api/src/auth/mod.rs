//! Who is calling: bearer tokens (JWT) verified with the configured key, the caller's tenant
//! and subject, and the scope each route needs.
//!
//! Every route that touches clinical data takes an [`Authorized<S>`] extractor, where `S` is
//! the scope it needs: the requirement is written in the handler's own signature, next to its
//! `#[utoipa::path]` (whose `security` names the same scope for `/openapi.json`). A request
//! without a valid token is a 401 before its body is even read; a valid token without the
//! scope is a 403.
//!
//! - [`token`]: verifying and minting tokens, the caller a token proves and the scopes it may
//!   grant.

pub mod token;

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

pub use token::{
    AuthConfigError, Caller, ConsultationsRead, ConsultationsWrite, INSECURE_TENANT, OpsPlatform,
    OpsRead, OpsWrite, PLATFORM_TENANT, PatientsErase, PatientsRead, PatientsWrite,
    PhysiciansErase, PhysiciansRead, PhysiciansWrite, RecordsRead, RecordsWrite, SCOPES, Scope,
    TokenRequest, Verified, Verifier, bearer, mint,
};

use crate::error::ApiError;
use crate::state::AppState;

/// A caller whose token grants scope `S`.
pub struct Authorized<S>(pub Caller, PhantomData<S>);

impl<S> std::ops::Deref for Authorized<S> {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.0
    }
}

impl<S: Scope> FromRequestParts<AppState> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let caller = app.auth.authenticate(&parts.headers)?;
        if !caller.may(S::NAME) {
            return Err(ApiError::Forbidden(S::NAME));
        }
        Ok(Self(caller, PhantomData))
    }
}
