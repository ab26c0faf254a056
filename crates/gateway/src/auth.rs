//! Bearer tokens: JWTs signed with HS256. Verification is written here (a few lines over
//! `hmac` + `sha2`) rather than pulling a JWT crate with several crypto backends; only HS256
//! is accepted, so algorithm confusion (`none`, RS256 with the secret as a key) cannot happen.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ficus_domain::service::Actor;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::ApiError;
use crate::AppState;

/// Longest bearer token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The claims Ficus reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm must be HS256")]
    Algorithm,
    #[error("token signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

/// Signs and verifies HS256 tokens with one shared secret.
pub struct Auth {
    secret: Vec<u8>,
}

impl Auth {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }

    /// A signed token for `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// Checks signature, algorithm and time window; returns the claims.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::Malformed)?;
        if header.alg != "HS256" {
            return Err(AuthError::Algorithm);
        }
        let sig = B64.decode(s).map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        mac.verify_slice(&sig).map_err(|_| AuthError::Signature)?;
        // A claims set is a JSON object (RFC 7519 §7.2); serde would also read a struct from
        // an array (`["root"]` as sub = "root"), so the shape is checked first.
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(serde_json::Value::is_object)
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or(AuthError::Malformed)?;
        if claims.sub.is_empty() {
            return Err(AuthError::Malformed);
        }
        if claims.exp.is_some_and(|exp| now_secs >= exp) {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now_secs < nbf) {
            return Err(AuthError::NotYetValid);
        }
        Ok(claims)
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme name is
/// case-insensitive (RFC 9110 §11.1).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The authenticated caller. Extracting it answers 401 when the token is missing or bad.
pub struct Caller(pub Actor);

impl Caller {
    pub fn require_role(&self, role: &str) -> Result<(), ApiError> {
        if self.0.has_role(role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this needs the {role} role")))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Err(unauthorized("missing Authorization: Bearer <token>".into()));
        }
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| unauthorized("Authorization must be: Bearer <token>".into()))?;
        let now = ficus_store::now_ms() / 1000;
        let claims = state
            .auth
            .verify(token, now)
            .map_err(|e| unauthorized(e.to_string()))?;
        Ok(Caller(Actor {
            user_id: claims.sub,
            roles: claims.roles,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: Option<i64>) -> Claims {
        Claims {
            sub: "ann".into(),
            roles: vec!["seller".into()],
            exp,
            nbf: None,
        }
    }

    #[test]
    fn mint_then_verify() {
        let auth = Auth::new("s3cret");
        let t = auth.mint(&claims(Some(2000)));
        assert_eq!(auth.verify(&t, 1000).unwrap(), claims(Some(2000)));
        assert_eq!(auth.verify(&t, 2000), Err(AuthError::Expired));
        assert_eq!(
            Auth::new("other").verify(&t, 1000),
            Err(AuthError::Signature)
        );
    }

    #[test]
    fn tampering_and_alg_none_are_refused() {
        let auth = Auth::new("s3cret");
        let t = auth.mint(&claims(None));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(br#"{"sub":"root","roles":["admin"]}"#);
        parts[1] = &forged;
        assert_eq!(auth.verify(&parts.join("."), 0), Err(AuthError::Signature));
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(br#"{"sub":"root","roles":["admin"]}"#)
        );
        assert_eq!(auth.verify(&none, 0), Err(AuthError::Algorithm));
        assert_eq!(auth.verify("a.b", 0), Err(AuthError::Malformed));
        // Claims that are an array, not an object, are refused even when properly signed.
        let header = B64.encode(br#"{"alg":"HS256"}"#);
        let payload = B64.encode(br#"["root",["admin"]]"#);
        let mut mac = auth.mac();
        mac.update(format!("{header}.{payload}").as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        assert_eq!(
            auth.verify(&format!("{header}.{payload}.{sig}"), 0),
            Err(AuthError::Malformed)
        );
        assert_eq!(auth.verify("", 0), Err(AuthError::Malformed));
    }
}
