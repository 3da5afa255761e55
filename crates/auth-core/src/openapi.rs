//! OpenAPI security schemes (utoipa) made from a guard's own configuration,
//! so the API documentation can never disagree with what is enforced.

use utoipa::Modify;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};

use crate::Guard;

/// The security schemes a [`Guard`] accepts: one API-key header scheme per
/// configured key header, and HTTP bearer when bearer is on. As a utoipa
/// [`Modify`], it adds them to a document's components and requires any one
/// of them (with the guard's scope, if it has one) on every operation.
///
/// ```
/// use auth_core::{Guard, StaticKey, openapi::SecuritySchemes};
/// use utoipa::Modify;
///
/// let guard = Guard::builder(StaticKey::new("k").unwrap()).build().unwrap();
/// let schemes = SecuritySchemes::of(&guard);
/// assert_eq!(schemes.names(), ["x-api-key", "bearer"]);
///
/// let mut doc = utoipa::openapi::OpenApiBuilder::new().build();
/// schemes.modify(&mut doc);
/// let json = doc.to_json().unwrap();
/// assert!(json.contains(r#""x-api-key":{"type":"apiKey","in":"header","name":"x-api-key""#));
/// assert!(json.contains(r#""bearer":{"type":"http","scheme":"bearer""#));
/// ```
#[derive(Clone)]
pub struct SecuritySchemes {
    schemes: Vec<(String, SecurityScheme)>,
    scope: Option<String>,
}

impl std::fmt::Debug for SecuritySchemes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecuritySchemes")
            .field("names", &self.names())
            .field("scope", &self.scope)
            .finish()
    }
}

impl SecuritySchemes {
    /// The schemes `guard` accepts.
    pub fn of(guard: &Guard) -> Self {
        let sources = guard.sources();
        let mut schemes: Vec<(String, SecurityScheme)> = sources
            .key_header_names()
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                        name.clone(),
                        format!("API key in the `{name}` header."),
                    ))),
                )
            })
            .collect();
        if sources.reads_bearer() {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some("API key as an `Authorization: Bearer` token.".to_owned());
            schemes.push(("bearer".to_owned(), SecurityScheme::Http(http)));
        }
        Self {
            schemes,
            scope: guard.required_scope().map(str::to_owned),
        }
    }

    /// The schemes' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.schemes.iter().map(|(n, _)| n.as_str()).collect()
    }
}

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, scheme) in &self.schemes {
            components.add_security_scheme(name.clone(), scheme.clone());
        }
        // Any one scheme satisfies the guard: one requirement per scheme.
        let scopes: Vec<String> = self.scope.iter().cloned().collect();
        openapi.security = Some(
            self.schemes
                .iter()
                .map(|(name, _)| SecurityRequirement::new(name.clone(), scopes.clone()))
                .collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CredentialSources, StaticKey};

    #[test]
    fn follows_the_guard_configuration() {
        let guard = Guard::builder(StaticKey::new("k").unwrap())
            .sources(
                CredentialSources::default()
                    .key_headers(["X-Service-Token", "X-Internal-Service-Key"])
                    .bearer(false),
            )
            .require_scope("stt")
            .build()
            .unwrap();
        let schemes = SecuritySchemes::of(&guard);
        assert_eq!(
            schemes.names(),
            ["x-service-token", "x-internal-service-key"]
        );
        let mut doc = utoipa::openapi::OpenApiBuilder::new().build();
        schemes.modify(&mut doc);
        let json = doc.to_json().unwrap();
        assert!(!json.contains("bearer"), "{json}");
        assert!(json.contains(r#"{"x-service-token":["stt"]}"#), "{json}");
        assert!(
            json.contains(r#"{"x-internal-service-key":["stt"]}"#),
            "{json}"
        );
    }
}
