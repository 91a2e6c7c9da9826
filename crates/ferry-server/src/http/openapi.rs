//! The OpenAPI description of the API (`docs/openapi.json`), generated from
//! the handlers' annotations; a test keeps the file equal to it.

use super::{rollouts, services, system};
use ferry_api::ErrorBody;

/// What every route behind the token may answer besides its own answers.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description, never built
pub(super) enum TokenErrors {
    /// Missing or wrong bearer token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// Too many requests without a valid token from this address
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// The request was not received and answered in time
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// The state store failed
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// What every route that reads a JSON body may answer about it.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description, never built
pub(super) enum BodyErrors {
    /// The body is not valid JSON for this request, or the name is invalid
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The body is larger than the API takes
    #[response(status = 413)]
    TooLarge(ErrorBody),
}

/// The OpenAPI description of this API (`docs/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Ferry API",
        description = "Ferry's daemon API: deploy, roll back, gate and watch releases. See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        system::livez, system::readyz, system::health, system::metrics, services::list,
        services::get, services::history, services::revision, services::deploy,
        services::rollback, services::approve, services::abort, services::promote,
        services::pause, services::resume, rollouts::get, rollouts::events,
        rollouts::measurements, services::slo, services::delivery, system::audit, system::upgrade, system::shutdown
    ),
    modifiers(&BearerToken)
)]
pub struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use utoipa::OpenApi;

    /// `docs/openapi.json` is generated from the code; this keeps it so.
    /// Regenerate with `UPDATE_OPENAPI=1 cargo test -p ferry-server openapi`.
    #[test]
    fn docs_openapi_json_matches_the_code() {
        let text = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the description serializes")
            + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &text).unwrap();
            return;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "docs/openapi.json is not what the code describes; regenerate it with `UPDATE_OPENAPI=1 cargo test -p ferry-server openapi`"
        );
    }
}
