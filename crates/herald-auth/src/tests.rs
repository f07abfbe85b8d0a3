use std::time::{SystemTime, UNIX_EPOCH};

use base64_free::b64url;
use serde_json::json;

use super::*;

const SECRET: &[u8] = b"test-secret-that-is-long-enough-for-hs512";
const RSA_PRIVATE: &str = include_str!("../testdata/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../testdata/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../testdata/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../testdata/ec_public.pem");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs_verifier() -> Verifier {
    Verifier::new(&AuthConfig::secret(SECRET)).unwrap()
}

fn claims(value: serde_json::Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

/// Base64url without padding, enough to forge unsigned tokens by hand.
mod base64_free {
    pub fn b64url(input: &[u8]) -> String {
        const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[test]
fn hs256_384_512_tokens_verify_with_the_secret() {
    for algorithm in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token =
            Signer::secret(SECRET).with_algorithm(algorithm).mint(&TokenSpec::new("alice").roles(&["admin"])).unwrap();
        let principal = hs_verifier().verify(&token).unwrap();
        assert_eq!(principal.user_id.as_str(), "alice");
        assert!(principal.is_admin());
        assert!(principal.expires_at.unwrap() > now());
    }
}

#[test]
fn rs256_and_es256_tokens_verify_with_the_public_key() {
    for (private, public) in [(RSA_PRIVATE, RSA_PUBLIC), (EC_PRIVATE, EC_PUBLIC)] {
        let signer = Signer::private_key_pem(private).unwrap();
        let token = signer.mint(&TokenSpec::new("bob")).unwrap();
        let config = AuthConfig { key: KeyConfig::PublicKeyPem(public.into()), ..AuthConfig::secret("x") };
        let principal = Verifier::new(&config).unwrap().verify(&token).unwrap();
        assert_eq!(principal.user_id.as_str(), "bob");
    }
}

#[test]
fn user_id_falls_back_to_user_id_then_id_and_accepts_numbers() {
    let signer = Signer::secret(SECRET);
    let exp = now() + 60;
    for (claim_set, expect) in [
        (json!({"sub": "s", "userId": "u", "id": "i", "exp": exp}), "s"),
        (json!({"userId": "u", "id": "i", "exp": exp}), "u"),
        (json!({"id": 42, "exp": exp}), "42"),
    ] {
        let token = signer.mint_claims(&claims(claim_set)).unwrap();
        assert_eq!(hs_verifier().verify(&token).unwrap().user_id.as_str(), expect);
    }
}

#[test]
fn roles_device_and_name_claims_are_read() {
    let token = Signer::secret(SECRET)
        .mint_claims(&claims(
            json!({"sub": "a", "role": "admin", "deviceId": "phone", "name": "Ann", "exp": now() + 60}),
        ))
        .unwrap();
    let principal = hs_verifier().verify(&token).unwrap();
    assert_eq!(principal.roles, ["admin"]);
    assert_eq!(principal.device.as_deref(), Some("phone"));
    assert_eq!(principal.name.as_deref(), Some("Ann"));
}

fn refused(token: &str, code: ErrorCode, fragment: &str) {
    let error = hs_verifier().verify(token).unwrap_err();
    assert_eq!(error.code, code, "{token}: {error}");
    assert!(error.message.contains(fragment), "{error} lacks {fragment:?}");
}

#[test]
fn bad_tokens_are_refused_with_stable_codes() {
    let signer = Signer::secret(SECRET);
    let expired = signer.mint_claims(&claims(json!({"sub": "a", "exp": now() - 3600}))).unwrap();
    refused(&expired, ErrorCode::TokenExpired, "expired");

    let wrong_key = Signer::secret(b"another-secret").mint(&TokenSpec::new("a")).unwrap();
    refused(&wrong_key, ErrorCode::TokenInvalid, "signature");

    let no_exp = signer.mint_claims(&claims(json!({"sub": "a"}))).unwrap();
    refused(&no_exp, ErrorCode::TokenInvalid, "exp");

    let no_user = signer.mint_claims(&claims(json!({"exp": now() + 60}))).unwrap();
    refused(&no_user, ErrorCode::TokenInvalid, "user id");

    let bad_user = signer.mint_claims(&claims(json!({"sub": "a b", "exp": now() + 60}))).unwrap();
    refused(&bad_user, ErrorCode::TokenInvalid, "user id");

    refused("not-a-token", ErrorCode::TokenInvalid, "malformed");
    refused("a.b.c", ErrorCode::TokenInvalid, "");
    refused("", ErrorCode::TokenMissing, "required");
    refused(&"x".repeat(MAX_TOKEN_LEN + 1), ErrorCode::TokenInvalid, "too long");
}

#[test]
fn alg_none_is_refused() {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(format!(r#"{{"sub":"mallory","exp":{}}}"#, now() + 60).as_bytes());
    refused(&format!("{header}.{payload}."), ErrorCode::TokenInvalid, "");
    refused(&format!("{header}.{payload}"), ErrorCode::TokenInvalid, "");
}

#[test]
fn a_token_signed_with_another_family_is_refused() {
    // An RS256 token must not verify against an HMAC secret, nor the reverse.
    let rs = Signer::private_key_pem(RSA_PRIVATE).unwrap().mint(&TokenSpec::new("a")).unwrap();
    refused(&rs, ErrorCode::TokenInvalid, "algorithm");
    let config = AuthConfig { key: KeyConfig::PublicKeyPem(RSA_PUBLIC.into()), ..AuthConfig::secret("x") };
    let hs = Signer::secret(SECRET).mint(&TokenSpec::new("a")).unwrap();
    assert_eq!(Verifier::new(&config).unwrap().verify(&hs).unwrap_err().code, ErrorCode::TokenInvalid);
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let config =
        AuthConfig { issuer: Some("herald".into()), audience: Some("app".into()), ..AuthConfig::secret(SECRET) };
    let verifier = Verifier::new(&config).unwrap();
    let mut spec = TokenSpec::new("a");
    assert!(verifier.verify(&Signer::secret(SECRET).mint(&spec).unwrap()).is_err());
    spec.issuer = Some("herald".into());
    spec.audience = Some("app".into());
    assert!(verifier.verify(&Signer::secret(SECRET).mint(&spec).unwrap()).is_ok());
}

#[test]
fn unusable_keys_are_startup_errors() {
    assert!(matches!(Verifier::new(&AuthConfig::secret("")), Err(KeyError::EmptySecret)));
    let config = AuthConfig { key: KeyConfig::PublicKeyPem("garbage".into()), ..AuthConfig::secret("x") };
    assert!(matches!(Verifier::new(&config), Err(KeyError::BadPem(_))));
}
