//! Authentication: a token is verified once per connection and becomes a
//! [`Principal`]. Supports HS256/384/512 with a shared secret and RS256/ES256 (and their
//! 384/512 siblings) with a PEM public key. `alg: none` is never accepted.
//!
//! Claims: the user id comes from `sub`, falling back to `userId`, then `id` (strings or
//! numbers); roles from `roles` (array or string) or `role`; the device from `deviceId`
//! or `device`; the display name from `name`; expiry from `exp`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::{ErrorCode, Principal, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

/// What to verify tokens against.
#[derive(Clone)]
pub enum KeyConfig {
    /// A shared secret for HS256/384/512 (`JWT_SECRET`, `NEXTAUTH_SECRET`).
    Secret(Vec<u8>),
    /// A PEM public key: RSA (RS256/384/512, PS256/384/512) or EC (ES256/384).
    PublicKeyPem(String),
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyConfig::Secret(_) => f.write_str("Secret(..)"),
            KeyConfig::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
        }
    }
}

/// Verification settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub key: KeyConfig,
    /// When set, the `iss` claim must equal it.
    pub issuer: Option<String>,
    /// When set, the `aud` claim must contain it.
    pub audience: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
}

impl AuthConfig {
    pub fn secret(secret: impl Into<Vec<u8>>) -> Self {
        Self { key: KeyConfig::Secret(secret.into()), issuer: None, audience: None, leeway_secs: 0, require_exp: true }
    }
}

/// Why a token was refused. `code` is stable; `message` is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub code: ErrorCode,
    pub message: String,
}

impl AuthError {
    fn invalid(message: impl Into<String>) -> Self {
        Self { code: ErrorCode::TokenInvalid, message: message.into() }
    }

    pub fn missing() -> Self {
        Self { code: ErrorCode::TokenMissing, message: "authentication token required".into() }
    }
}

/// A key configuration that cannot be used (startup error).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the JWT secret must not be empty")]
    EmptySecret,
    #[error("the PEM key is neither an RSA nor an EC public key: {0}")]
    BadPem(String),
}

/// Verifies tokens. Cheap to share behind an `Arc`.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish()
    }
}

/// Longest token accepted, in bytes; anything longer is refused before parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

impl Verifier {
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        let (key, algorithms) = match &config.key {
            KeyConfig::Secret(secret) if secret.is_empty() => return Err(KeyError::EmptySecret),
            KeyConfig::Secret(secret) => {
                (DecodingKey::from_secret(secret), vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512])
            }
            KeyConfig::PublicKeyPem(pem) => match DecodingKey::from_rsa_pem(pem.as_bytes()) {
                Ok(key) => (
                    key,
                    vec![
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                        Algorithm::PS384,
                        Algorithm::PS512,
                    ],
                ),
                Err(rsa_error) => match DecodingKey::from_ec_pem(pem.as_bytes()) {
                    Ok(key) => (key, vec![Algorithm::ES256, Algorithm::ES384]),
                    Err(ec_error) => {
                        return Err(KeyError::BadPem(format!("rsa: {rsa_error}; ec: {ec_error}")));
                    }
                },
            },
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = config.leeway_secs;
        validation.validate_exp = true;
        validation.required_spec_claims.clear();
        if config.require_exp {
            validation.required_spec_claims.insert("exp".into());
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Self { key, validation })
    }

    /// Verifies `token` and builds the principal it names.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::missing());
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::invalid("token too long"));
        }
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation).map_err(
                |error| match error.kind() {
                    ErrorKind::ExpiredSignature => {
                        AuthError { code: ErrorCode::TokenExpired, message: "token expired".into() }
                    }
                    ErrorKind::InvalidSignature => AuthError::invalid("invalid token signature"),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        AuthError::invalid("token algorithm not accepted")
                    }
                    ErrorKind::MissingRequiredClaim(claim) => {
                        AuthError::invalid(format!("token lacks the {claim} claim"))
                    }
                    ErrorKind::InvalidIssuer => AuthError::invalid("token issuer not accepted"),
                    ErrorKind::InvalidAudience => AuthError::invalid("token audience not accepted"),
                    ErrorKind::ImmatureSignature => AuthError::invalid("token not valid yet"),
                    _ => AuthError::invalid("malformed token"),
                },
            )?;
        principal_from_claims(&data.claims)
    }
}

/// Extracts a string id from a claim that may be a string or a number.
fn id_claim(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn principal_from_claims(claims: &Map<String, Value>) -> Result<Principal, AuthError> {
    let raw_id = ["sub", "userId", "id"]
        .iter()
        .find_map(|name| claims.get(*name).and_then(id_claim))
        .ok_or_else(|| AuthError::invalid("token lacks a user id (sub, userId or id)"))?;
    let user_id = UserId::parse(&raw_id).map_err(|error| AuthError::invalid(format!("token user id: {error}")))?;
    let roles = match claims.get("roles").or_else(|| claims.get("role")) {
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(Value::String(role)) => vec![role.clone()],
        _ => Vec::new(),
    };
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    Ok(Principal {
        user_id,
        roles,
        device: text("deviceId").or_else(|| text("device")),
        name: text("name"),
        image: text("image").or_else(|| text("picture")),
        expires_at: claims.get("exp").and_then(Value::as_u64),
    })
}

/// What to put into a minted token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub sub: String,
    pub roles: Vec<String>,
    pub name: Option<String>,
    pub device: Option<String>,
    /// Lifetime; `None` mints a token without `exp` (refused unless `require_exp` is off).
    pub ttl: Option<Duration>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl TokenSpec {
    pub fn new(sub: impl Into<String>) -> Self {
        Self {
            sub: sub.into(),
            roles: Vec::new(),
            name: None,
            device: None,
            ttl: Some(Duration::from_secs(3600)),
            issuer: None,
            audience: None,
        }
    }

    pub fn roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|r| r.to_string()).collect();
        self
    }

    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Signs tokens (for `herald token`, development mode and tests).
pub struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("algorithm", &self.algorithm).finish()
    }
}

/// A signing key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign tokens: {0}")]
pub struct SignError(String);

impl Signer {
    /// HS256 with a shared secret.
    pub fn secret(secret: &[u8]) -> Self {
        Self { key: EncodingKey::from_secret(secret), algorithm: Algorithm::HS256 }
    }

    /// RS256 or ES256 with a PEM private key.
    pub fn private_key_pem(pem: &str) -> Result<Self, SignError> {
        if let Ok(key) = EncodingKey::from_rsa_pem(pem.as_bytes()) {
            return Ok(Self { key, algorithm: Algorithm::RS256 });
        }
        EncodingKey::from_ec_pem(pem.as_bytes())
            .map(|key| Self { key, algorithm: Algorithm::ES256 })
            .map_err(|error| SignError(format!("PEM is neither an RSA nor an EC private key: {error}")))
    }

    /// Signs with another algorithm of the same key family (e.g. HS512).
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    pub fn mint(&self, spec: &TokenSpec) -> Result<String, SignError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::String(spec.sub.clone()));
        claims.insert("iat".into(), Value::from(now));
        if let Some(ttl) = spec.ttl {
            claims.insert("exp".into(), Value::from(now + ttl.as_secs()));
        }
        if !spec.roles.is_empty() {
            claims.insert("roles".into(), Value::from(spec.roles.clone()));
        }
        for (name, value) in
            [("name", &spec.name), ("deviceId", &spec.device), ("iss", &spec.issuer), ("aud", &spec.audience)]
        {
            if let Some(value) = value {
                claims.insert(name.into(), Value::String(value.clone()));
            }
        }
        self.mint_claims(&claims)
    }

    /// Signs arbitrary claims; tests use it for malformed and expired tokens.
    pub fn mint_claims(&self, claims: &Map<String, Value>) -> Result<String, SignError> {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.key).map_err(|e| SignError(e.to_string()))
    }
}

pub use jsonwebtoken::Algorithm as JwtAlgorithm;

#[cfg(test)]
mod tests;
