//! Unit tests of the auth module: the verification matrix, revocation persistence, token
//! extraction, the token builder and the error body.
//!
//! Why here and not in tests/: every check is a pure function of (token, config, now), so the
//! whole matrix runs without sockets. Keys are the test-only pairs in tests/keys/.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::*;

const NOW: u64 = 2_000_000_000;
const SECRET: &str = "test-only-secret-that-is-at-least-32-bytes";

const RS_PRIVATE: &[u8] = include_bytes!("../../tests/keys/test-only-rs256-private.pem");
const RS_PUBLIC: &[u8] = include_bytes!("../../tests/keys/test-only-rs256-public.pem");
const ES_PRIVATE: &[u8] = include_bytes!("../../tests/keys/test-only-es256-private.pem");
const ES_PUBLIC: &[u8] = include_bytes!("../../tests/keys/test-only-es256-public.pem");
const ED_PRIVATE: &[u8] = include_bytes!("../../tests/keys/test-only-eddsa-private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../../tests/keys/test-only-eddsa-public.pem");
const P384_PUBLIC: &[u8] = include_bytes!("../../tests/keys/test-only-p384-public.pem");

fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.to_owned(),
        exp: NOW + 3600,
        nbf: None,
        iat: Some(NOW - 10),
        jti: Some(format!("jti-{sub}")),
        name: Some(format!("{sub} display")),
        role: Some(Role::Planner),
        weddings: BTreeMap::from([
            ("wedding-a".to_owned(), Access::Edit),
            ("wedding-v".to_owned(), Access::View),
        ]),
        iss: None,
        aud: None,
    }
}

fn hs_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.to_owned()),
        ..AuthConfig::default()
    }
}

fn hs_auth() -> Authenticator {
    Authenticator::new(&hs_config()).expect("valid HS256 config")
}

fn pem_auth(public: &[u8]) -> Authenticator {
    Authenticator::new(&AuthConfig {
        public_key_pem: Some(public.to_vec()),
        ..AuthConfig::default()
    })
    .expect("valid public key config")
}

fn hs(claims: &Claims) -> String {
    mint_hs256(SECRET, claims).expect("mint")
}

/// Sign any JSON payload (to build claims our `Claims` type cannot express).
fn sign_json(alg: Algorithm, key: &EncodingKey, payload: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), payload, key).expect("sign")
}

fn sign(alg: Algorithm, private_pem: &[u8], claims: &Claims) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem),
        other => panic!("no test key for {other:?}"),
    }
    .expect("test private key");
    jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("sign")
}

fn code(r: Result<Principal, AuthError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

// ---- the verification matrix ----------------------------------------------------------------

#[test]
fn valid_hs256_token_gives_its_principal() {
    let p = hs_auth().verify(&hs(&claims("alice")), NOW).expect("valid");
    assert_eq!(p.user, "alice");
    assert_eq!(p.name.as_deref(), Some("alice display"));
    assert_eq!(p.role, Some(Role::Planner));
    assert_eq!(p.expires_at, Some(NOW + 3600));
    assert_eq!(p.jti.as_deref(), Some("jti-alice"));
    assert!(!p.open_mode);
}

#[test]
fn missing_token_is_401_missing_token() {
    let auth = hs_auth();
    let e = auth.authenticate(None, NOW).unwrap_err();
    assert_eq!(e, AuthError::MissingToken);
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(code(auth.verify("", NOW)), "missing_token");
    assert_eq!(code(auth.verify("   ", NOW)), "missing_token");
}

#[test]
fn malformed_tokens_are_invalid_never_a_panic() {
    let auth = hs_auth();
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    for bad in [
        "abc",
        "a.b",
        "a.b.c",
        "....",
        "ÿÿÿ.ÿÿÿ.ÿÿÿ",
        "eyJhbGciOiJIUzI1NiJ9..",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
        huge.as_str(),
    ] {
        let e = auth.verify(bad, NOW).unwrap_err();
        assert_eq!(e.code(), "invalid_token", "{bad:.40}: {e}");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    }
}

#[test]
fn wrong_signature_is_invalid() {
    let auth = hs_auth();
    let other = mint_hs256("another-secret-another-secret-another", &claims("alice")).unwrap();
    assert_eq!(code(auth.verify(&other, NOW)), "invalid_token");

    // Tamper with the payload of a valid token: upgrade view to edit.
    let token = hs(&claims("alice"));
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims("alice");
    forged.weddings.insert("wedding-v".into(), Access::Edit);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    parts[1] = &payload;
    assert_eq!(code(auth.verify(&parts.join("."), NOW)), "invalid_token");
}

#[test]
fn alg_none_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("mallory")).unwrap());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
        format!("{header}.{payload}.AAAA"),
    ] {
        if token.matches('.').count() == 2 {
            // The header itself is refused: `none` is not an algorithm we know.
            let e = hs_auth().verify(&token, NOW).unwrap_err();
            assert!(e.to_string().contains("none"), "{e}");
        }
        assert_eq!(code(hs_auth().verify(&token, NOW)), "invalid_token");
        assert_eq!(
            code(pem_auth(RS_PUBLIC).verify(&token, NOW)),
            "invalid_token"
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_fails_on_an_rs256_server() {
    let auth = pem_auth(RS_PUBLIC);
    assert_eq!(auth.algorithm(), Some(KeyAlgorithm::RS256));
    let confused = sign_json(
        Algorithm::HS256,
        &EncodingKey::from_secret(RS_PUBLIC),
        &serde_json::to_value(claims("mallory")).unwrap(),
    );
    let e = auth.verify(&confused, NOW).unwrap_err();
    assert_eq!(e.code(), "invalid_token");
    assert!(e.to_string().contains("accepts only RS256"), "{e}");
}

#[test]
fn asymmetric_tokens_fail_on_an_hs256_server_and_across_key_types() {
    let rs = sign(Algorithm::RS256, RS_PRIVATE, &claims("alice"));
    let es = sign(Algorithm::ES256, ES_PRIVATE, &claims("alice"));
    let ed = sign(Algorithm::EdDSA, ED_PRIVATE, &claims("alice"));
    assert_eq!(code(hs_auth().verify(&rs, NOW)), "invalid_token");
    assert_eq!(code(pem_auth(RS_PUBLIC).verify(&es, NOW)), "invalid_token");
    assert_eq!(code(pem_auth(ES_PUBLIC).verify(&ed, NOW)), "invalid_token");
    assert_eq!(code(pem_auth(ED_PUBLIC).verify(&rs, NOW)), "invalid_token");
    assert_eq!(
        code(pem_auth(RS_PUBLIC).verify(&hs(&claims("a")), NOW)),
        "invalid_token"
    );
}

#[test]
fn rs256_es256_eddsa_happy_paths_with_detected_algorithm() {
    for (alg, expected, private, public) in [
        (Algorithm::RS256, KeyAlgorithm::RS256, RS_PRIVATE, RS_PUBLIC),
        (Algorithm::ES256, KeyAlgorithm::ES256, ES_PRIVATE, ES_PUBLIC),
        (Algorithm::EdDSA, KeyAlgorithm::EdDSA, ED_PRIVATE, ED_PUBLIC),
    ] {
        let auth = pem_auth(public);
        assert_eq!(auth.algorithm(), Some(expected));
        let p = auth
            .verify(&sign(alg, private, &claims("bob")), NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(p.user, "bob");
        assert_eq!(p.access_to("wedding-a"), Some(Access::Edit));
        // An explicit, matching algorithm works too.
        let explicit = Authenticator::new(&AuthConfig {
            public_key_pem: Some(public.to_vec()),
            algorithm: Some(expected),
            ..AuthConfig::default()
        });
        assert!(explicit.is_ok());
    }
}

#[test]
fn expiry_is_checked_against_the_given_clock_with_leeway() {
    let auth = hs_auth(); // leeway 5
    let mut c = claims("alice");
    c.exp = NOW - 10;
    assert_eq!(
        auth.verify(&hs(&c), NOW).unwrap_err(),
        AuthError::Expired { exp: NOW - 10 }
    );
    c.exp = NOW - 3; // expired 3 s ago: within the 5 s leeway
    assert!(auth.verify(&hs(&c), NOW).is_ok());
    c.exp = NOW - 5; // exactly at exp + leeway: refused
    assert_eq!(code(auth.verify(&hs(&c), NOW)), "token_expired");

    let strict = Authenticator::new(&AuthConfig {
        leeway_secs: 0,
        ..hs_config()
    })
    .unwrap();
    c.exp = NOW;
    assert_eq!(code(strict.verify(&hs(&c), NOW)), "token_expired");
    assert!(strict.verify(&hs(&c), NOW - 1).is_ok());
    // A token from far in the past, checked with our clock, not the machine's.
    c.exp = 1_000;
    assert!(strict.verify(&hs(&c), 999).is_ok());
    assert_eq!(code(strict.verify(&hs(&c), 1_000)), "token_expired");
}

#[test]
fn nbf_in_the_future_is_refused() {
    let auth = hs_auth();
    let mut c = claims("alice");
    c.nbf = Some(NOW + 60);
    let e = auth.verify(&hs(&c), NOW).unwrap_err();
    assert_eq!(e, AuthError::NotYetValid { nbf: NOW + 60 });
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    assert!(auth.verify(&hs(&c), NOW + 60).is_ok());
    c.nbf = Some(NOW + 3); // within leeway
    assert!(auth.verify(&hs(&c), NOW).is_ok());
}

#[test]
fn exp_and_sub_are_required() {
    let auth = hs_auth();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let no_exp = sign_json(Algorithm::HS256, &key, &serde_json::json!({"sub": "alice"}));
    assert_eq!(code(auth.verify(&no_exp, NOW)), "invalid_token");
    let no_sub = sign_json(
        Algorithm::HS256,
        &key,
        &serde_json::json!({"exp": NOW + 60}),
    );
    assert_eq!(code(auth.verify(&no_sub, NOW)), "invalid_token");
    let empty_sub = sign_json(
        Algorithm::HS256,
        &key,
        &serde_json::json!({"sub": "", "exp": NOW + 60}),
    );
    assert_eq!(code(auth.verify(&empty_sub, NOW)), "invalid_token");
    let string_exp = sign_json(
        Algorithm::HS256,
        &key,
        &serde_json::json!({"sub": "a", "exp": "tomorrow"}),
    );
    assert_eq!(code(auth.verify(&string_exp, NOW)), "invalid_token");
}

#[test]
fn malformed_known_claims_make_the_token_invalid() {
    let auth = hs_auth();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    for payload in [
        serde_json::json!({"sub": "a", "exp": NOW + 60, "weddings": {"w1": "owner"}}),
        serde_json::json!({"sub": "a", "exp": NOW + 60, "weddings": ["w1"]}),
        serde_json::json!({"sub": "a", "exp": NOW + 60, "role": "superuser"}),
    ] {
        let e = auth
            .verify(&sign_json(Algorithm::HS256, &key, &payload), NOW)
            .unwrap_err();
        assert_eq!(e.code(), "invalid_token", "{payload}");
    }
    // Unknown claims are ignored.
    let extra = serde_json::json!({"sub": "a", "exp": NOW + 60, "tenant": "x"});
    assert!(auth
        .verify(&sign_json(Algorithm::HS256, &key, &extra), NOW)
        .is_ok());
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let auth = Authenticator::new(&AuthConfig {
        issuer: Some("https://backend.example".into()),
        audience: Some("wedsync".into()),
        ..hs_config()
    })
    .unwrap();
    let good = Claims {
        iss: Some("https://backend.example".into()),
        aud: Some(Audience::One("wedsync".into())),
        ..claims("alice")
    };
    assert!(auth.verify(&hs(&good), NOW).is_ok());
    let many = Claims {
        aud: Some(Audience::Many(vec!["other".into(), "wedsync".into()])),
        ..good.clone()
    };
    assert!(auth.verify(&hs(&many), NOW).is_ok());

    for bad in [
        Claims {
            iss: None,
            ..good.clone()
        },
        Claims {
            iss: Some("https://evil.example".into()),
            ..good.clone()
        },
        Claims {
            aud: None,
            ..good.clone()
        },
        Claims {
            aud: Some(Audience::One("other".into())),
            ..good.clone()
        },
        Claims {
            aud: Some(Audience::Many(vec![])),
            ..good.clone()
        },
    ] {
        assert_eq!(
            code(auth.verify(&hs(&bad), NOW)),
            "invalid_token",
            "{bad:?}"
        );
    }

    // A server without iss/aud configured accepts tokens that carry them.
    assert!(hs_auth().verify(&hs(&good), NOW).is_ok());
}

// ---- access ---------------------------------------------------------------------------------

#[test]
fn a_wedding_a_token_has_no_access_to_wedding_b() {
    let p = hs_auth().verify(&hs(&claims("alice")), NOW).unwrap();
    assert_eq!(p.access_to("wedding-a"), Some(Access::Edit));
    assert_eq!(p.access_to("wedding-v"), Some(Access::View));
    assert_eq!(p.access_to("wedding-b"), None);
    let e = p.require("wedding-b", Access::View).unwrap_err();
    assert_eq!(e.status(), StatusCode::FORBIDDEN);
    assert_eq!(e.code(), "forbidden");
}

#[test]
fn view_access_is_enough_to_view_not_to_edit() {
    let p = hs_auth().verify(&hs(&claims("alice")), NOW).unwrap();
    assert_eq!(p.require("wedding-v", Access::View), Ok(Access::View));
    assert_eq!(
        p.require("wedding-v", Access::Edit).unwrap_err().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(p.require("wedding-a", Access::View), Ok(Access::Edit));
    assert!(Access::Edit > Access::View);
}

#[test]
fn admin_edits_every_wedding() {
    let c = Claims {
        role: Some(Role::Admin),
        weddings: BTreeMap::new(),
        ..claims("root")
    };
    let p = hs_auth().verify(&hs(&c), NOW).unwrap();
    assert_eq!(p.access_to("any-wedding"), Some(Access::Edit));
    assert_eq!(p.require("wedding-z", Access::Edit), Ok(Access::Edit));
}

#[test]
fn open_mode_lets_everyone_edit_and_is_marked() {
    let auth = Authenticator::open();
    assert!(auth.is_open());
    assert_eq!(auth.algorithm(), None);
    for token in [None, Some(""), Some("garbage")] {
        let p = auth.authenticate(token, NOW).unwrap();
        assert!(p.open_mode);
        assert_eq!(p.user, "dev");
        assert_eq!(p.access_to("anything"), Some(Access::Edit));
        assert_eq!(p.expires_at, None);
        assert!(!auth.is_expired(&p, u64::MAX));
        assert!(!auth.is_revoked_at(&p, NOW));
    }
    assert!(!hs_auth().is_open());
}

#[test]
fn session_deadline_matches_verify() {
    let auth = hs_auth();
    let p = auth.verify(&hs(&claims("alice")), NOW).unwrap();
    let deadline = auth.session_deadline(&p).unwrap();
    assert_eq!(deadline, NOW + 3600 + DEFAULT_LEEWAY_SECS);
    assert!(!auth.is_expired(&p, deadline - 1));
    assert!(auth.is_expired(&p, deadline));
    assert_eq!(
        code(auth.verify(&hs(&claims("alice")), deadline)),
        "token_expired"
    );
}

// ---- configuration ----------------------------------------------------------------------------

#[test]
fn bad_configurations_are_clear_config_errors() {
    let cases: Vec<(&str, AuthConfig)> = vec![
        (
            "both",
            AuthConfig {
                public_key_pem: Some(RS_PUBLIC.to_vec()),
                ..hs_config()
            },
        ),
        ("neither", AuthConfig::default()),
        (
            "empty secret",
            AuthConfig {
                hs256_secret: Some(String::new()),
                ..AuthConfig::default()
            },
        ),
        (
            "secret with RS256",
            AuthConfig {
                algorithm: Some(KeyAlgorithm::RS256),
                ..hs_config()
            },
        ),
        (
            "not a pem",
            AuthConfig {
                public_key_pem: Some(b"hello".to_vec()),
                ..AuthConfig::default()
            },
        ),
        (
            "binary",
            AuthConfig {
                public_key_pem: Some(vec![0xff, 0x00, 0x80]),
                ..AuthConfig::default()
            },
        ),
        (
            "bad base64",
            AuthConfig {
                public_key_pem: Some(
                    b"-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n".to_vec(),
                ),
                ..AuthConfig::default()
            },
        ),
        (
            "truncated",
            AuthConfig {
                public_key_pem: Some(RS_PUBLIC[..RS_PUBLIC.len() / 2].to_vec()),
                ..AuthConfig::default()
            },
        ),
        (
            "private key",
            AuthConfig {
                public_key_pem: Some(RS_PRIVATE.to_vec()),
                ..AuthConfig::default()
            },
        ),
        (
            "P-384",
            AuthConfig {
                public_key_pem: Some(P384_PUBLIC.to_vec()),
                ..AuthConfig::default()
            },
        ),
        (
            "mismatch",
            AuthConfig {
                public_key_pem: Some(ES_PUBLIC.to_vec()),
                algorithm: Some(KeyAlgorithm::RS256),
                ..AuthConfig::default()
            },
        ),
        (
            "leeway",
            AuthConfig {
                leeway_secs: 3600,
                ..hs_config()
            },
        ),
        (
            "empty issuer",
            AuthConfig {
                issuer: Some(String::new()),
                ..hs_config()
            },
        ),
    ];
    for (what, config) in cases {
        let e = Authenticator::new(&config).unwrap_err();
        assert_eq!(e.code(), "auth_misconfigured", "{what}: {e}");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let p384 = Authenticator::new(&AuthConfig {
        public_key_pem: Some(P384_PUBLIC.to_vec()),
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(p384.to_string().contains("P-256"), "{p384}");
    let private = Authenticator::new(&AuthConfig {
        public_key_pem: Some(ED_PRIVATE.to_vec()),
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(private.to_string().contains("private key"), "{private}");
    assert!("eddsa".parse::<KeyAlgorithm>().is_ok());
    assert!("none".parse::<KeyAlgorithm>().is_err());
}

#[test]
fn debug_output_never_shows_the_secret() {
    let shown = format!("{:?} {:?}", hs_config(), hs_auth());
    assert!(!shown.contains(SECRET), "{shown}");
}

// ---- revocation -------------------------------------------------------------------------------

#[test]
fn revocation_by_sub_and_jti_survives_a_reopen_of_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let alice = hs(&claims("alice"));
    let bob = hs(&claims("bob"));
    {
        let db = sled::open(dir.path()).unwrap();
        let auth = hs_auth()
            .with_revocation_tree_at(db.open_tree("revocations").unwrap(), NOW)
            .unwrap();
        assert!(auth.verify(&alice, NOW).is_ok());
        let bob_principal = auth.verify(&bob, NOW).unwrap();
        auth.revoke_at(Revocation::Sub("alice".into()), NOW + 3600, NOW)
            .unwrap();
        auth.revoke_at(Revocation::Jti("jti-bob".into()), NOW + 3600, NOW)
            .unwrap();
        assert_eq!(auth.verify(&alice, NOW).unwrap_err(), AuthError::Revoked);
        assert_eq!(auth.verify(&bob, NOW).unwrap_err().code(), "token_revoked");
        assert!(auth.is_revoked_at(&bob_principal, NOW));
    }
    let db = sled::open(dir.path()).unwrap();
    let auth = hs_auth()
        .with_revocation_tree_at(db.open_tree("revocations").unwrap(), NOW + 1)
        .unwrap();
    assert_eq!(code(auth.verify(&alice, NOW + 1)), "token_revoked");
    assert_eq!(code(auth.verify(&bob, NOW + 1)), "token_revoked");

    // A token issued after the sub revocation works: revoking sessions is not a ban.
    let fresh = Claims {
        iat: Some(NOW + 1),
        ..claims("alice")
    };
    assert!(auth.verify(&hs(&fresh), NOW + 1).is_ok());
    // A token without iat counts as old.
    let no_iat = Claims {
        iat: None,
        ..claims("alice")
    };
    assert_eq!(code(auth.verify(&hs(&no_iat), NOW + 1)), "token_revoked");
    // Bob's other tokens (another jti) are not hit.
    let bob2 = Claims {
        jti: Some("jti-bob-2".into()),
        ..claims("bob")
    };
    assert!(auth.verify(&hs(&bob2), NOW + 1).is_ok());
    // After `until` the entries stop applying.
    let long_lived = hs(&Claims {
        exp: NOW + 7200,
        ..claims("alice")
    });
    assert_eq!(code(auth.verify(&long_lived, NOW + 3599)), "token_revoked");
    assert!(auth.verify(&long_lived, NOW + 3600).is_ok());
}

#[test]
fn lapsed_revocations_are_pruned_on_load_and_on_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let tree = db.open_tree("revocations").unwrap();
    let auth = hs_auth()
        .with_revocation_tree_at(tree.clone(), NOW)
        .unwrap();
    auth.revoke_at(Revocation::Jti("short".into()), NOW + 10, NOW)
        .unwrap();
    auth.revoke_at(Revocation::Jti("long".into()), NOW + 1000, NOW)
        .unwrap();
    assert_eq!(tree.len(), 2);
    // A garbage record is dropped, not fatal.
    tree.insert(b"x:junk", b"nope").unwrap();
    drop(auth);
    let auth = hs_auth()
        .with_revocation_tree_at(tree.clone(), NOW + 100)
        .unwrap();
    assert_eq!(tree.len(), 1);
    auth.revoke_at(Revocation::Sub("carol".into()), NOW + 2000, NOW + 1500)
        .unwrap();
    assert_eq!(
        tree.len(),
        1,
        "the lapsed `long` entry is pruned by a new revocation"
    );
}

#[test]
fn is_revoked_finds_live_sessions_hit_by_a_revocation() {
    let auth = hs_auth();
    let alice = auth.verify(&hs(&claims("alice")), NOW).unwrap();
    let bob = auth.verify(&hs(&claims("bob")), NOW).unwrap();
    assert!(!auth.is_revoked_at(&alice, NOW));
    auth.revoke_at(Revocation::Sub("alice".into()), NOW + 60, NOW)
        .unwrap();
    assert!(auth.is_revoked_at(&alice, NOW));
    assert!(!auth.is_revoked_at(&bob, NOW));
    assert!(!auth.is_revoked_at(&alice, NOW + 60), "entry lapsed");
    // Works with the system clock too (the entry is in 2033, after today).
    assert!(auth.is_revoked(&alice) == (unix_now() < NOW + 60));
}

#[test]
fn revocation_json_shape() {
    let r: Revocation = serde_json::from_str(r#"{"sub":"alice"}"#).unwrap();
    assert_eq!(r, Revocation::Sub("alice".into()));
    let r: Revocation = serde_json::from_str(r#"{"jti":"x"}"#).unwrap();
    assert_eq!(r, Revocation::Jti("x".into()));
}

// ---- extraction -------------------------------------------------------------------------------

fn headers(auth: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(auth).unwrap());
    h
}

#[test]
fn token_from_percent_encoded_query() {
    let none = HeaderMap::new();
    assert_eq!(
        token_from_parts(Some("room=x&token=abc%2Edef%2Eghi&ack=1"), &none).unwrap(),
        Some("abc.def.ghi".to_owned())
    );
    assert_eq!(
        token_from_parts(Some("token=a.b.c"), &none).unwrap(),
        Some("a.b.c".into())
    );
    assert_eq!(token_from_parts(Some("ack=1"), &none).unwrap(), None);
    assert_eq!(token_from_parts(Some("token="), &none).unwrap(), None);
    assert_eq!(token_from_parts(Some(""), &none).unwrap(), None);
    assert_eq!(token_from_parts(None, &none).unwrap(), None);
    assert_eq!(
        token_from_parts(Some("token=a&token=b"), &none)
            .unwrap_err()
            .code(),
        "invalid_token"
    );
    assert!(token_from_parts(Some("token=%FF%FE"), &none).is_err());

    // End to end: a real token through the query string.
    let token = hs(&claims("alice"));
    let query = format!(
        "token={}",
        percent_encoding::utf8_percent_encode(&token, percent_encoding::NON_ALPHANUMERIC)
    );
    let got = token_from_parts(Some(&query), &none).unwrap().unwrap();
    assert_eq!(hs_auth().verify(&got, NOW).unwrap().user, "alice");
}

#[test]
fn token_from_bearer_header_case_insensitive() {
    for value in ["Bearer a.b.c", "bearer a.b.c", "BEARER   a.b.c  "] {
        assert_eq!(
            token_from_parts(None, &headers(value)).unwrap(),
            Some("a.b.c".to_owned()),
            "{value}"
        );
    }
    assert_eq!(token_from_parts(None, &headers("Bearer")).unwrap(), None);
    assert_eq!(
        token_from_parts(None, &headers("Basic dXNlcjpwYXNz"))
            .unwrap_err()
            .code(),
        "invalid_token"
    );
    // Same token in both places is fine; different tokens are not.
    assert!(token_from_parts(Some("token=a.b.c"), &headers("Bearer a.b.c")).is_ok());
    assert!(token_from_parts(Some("token=x.y.z"), &headers("Bearer a.b.c")).is_err());
    // Oversized.
    let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
    assert!(token_from_parts(None, &headers(&big)).is_err());
    // Two Authorization headers.
    let mut two = headers("Bearer a.b.c");
    two.append("authorization", HeaderValue::from_static("Bearer d.e.f"));
    assert!(token_from_parts(None, &two).is_err());
    // Non-ASCII header bytes.
    let mut odd = HeaderMap::new();
    odd.insert(
        "authorization",
        HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
    );
    assert!(token_from_parts(None, &odd).is_err());
}

// ---- minting and the CLI builder ----------------------------------------------------------------

#[test]
fn ttl_parsing() {
    assert_eq!(parse_ttl("45s").unwrap(), 45);
    assert_eq!(parse_ttl("30m").unwrap(), 1800);
    assert_eq!(parse_ttl("1h").unwrap(), 3600);
    assert_eq!(parse_ttl("2d").unwrap(), 172_800);
    for bad in [
        "",
        "h",
        "1",
        "1w",
        "-1h",
        "0s",
        "1.5h",
        "1hh",
        "99999999999999999999d",
        "1é",
        "é",
    ] {
        let e = parse_ttl(bad).unwrap_err();
        assert_eq!(e.code(), "invalid_argument", "{bad:?}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}

#[test]
fn wedding_grant_parsing() {
    assert_eq!(
        parse_wedding_grant("w-2026:edit").unwrap(),
        ("w-2026".to_owned(), Access::Edit)
    );
    assert_eq!(
        parse_wedding_grant("org:w1:view").unwrap(),
        ("org:w1".to_owned(), Access::View)
    );
    for bad in [
        "w1", "w1:", ":edit", "w1:owner", "w 1:edit", "w1:EDIT", "w/1:view",
    ] {
        assert_eq!(
            parse_wedding_grant(bad).unwrap_err().code(),
            "invalid_argument",
            "{bad}"
        );
    }
    assert!(parse_wedding_grant(&format!("{}:edit", "a".repeat(201))).is_err());
}

#[test]
fn token_spec_builds_claims_that_verify() {
    let spec = TokenSpec {
        sub: "alice".into(),
        name: Some("Alice".into()),
        role: Some("couple".into()),
        weddings: vec!["w1:edit".into(), "w2:view".into()],
        ttl: Some("30m".into()),
        ..TokenSpec::default()
    };
    let c = spec.to_claims(NOW).unwrap();
    assert_eq!(c.exp, NOW + 1800);
    assert_eq!(c.iat, Some(NOW));
    assert_eq!(c.role, Some(Role::Couple));
    assert_eq!(c.jti.as_ref().map(String::len), Some(32));
    let p = hs_auth()
        .verify(&mint_hs256(SECRET, &c).unwrap(), NOW)
        .unwrap();
    assert_eq!(p.access_to("w1"), Some(Access::Edit));
    assert_eq!(p.access_to("w2"), Some(Access::View));
    assert_eq!(p.display_name(), "Alice");

    let default_ttl = TokenSpec {
        ttl: None,
        ..spec.clone()
    }
    .to_claims(NOW)
    .unwrap();
    assert_eq!(default_ttl.exp, NOW + DEFAULT_TTL_SECS);

    for bad in [
        TokenSpec {
            sub: " ".into(),
            ..spec.clone()
        },
        TokenSpec {
            role: Some("boss".into()),
            ..spec.clone()
        },
        TokenSpec {
            weddings: vec![],
            ..spec.clone()
        },
        TokenSpec {
            weddings: vec!["w1:edit".into(), "w1:view".into()],
            ..spec.clone()
        },
        TokenSpec {
            ttl: Some("soon".into()),
            ..spec.clone()
        },
    ] {
        assert_eq!(
            bad.to_claims(NOW).unwrap_err().code(),
            "invalid_argument",
            "{bad:?}"
        );
    }
    let admin = TokenSpec {
        role: Some("admin".into()),
        weddings: vec![],
        ..spec
    };
    assert!(admin.to_claims(NOW).is_ok());
    assert_eq!(mint_hs256("", &c).unwrap_err().code(), "auth_misconfigured");
}

#[test]
fn claims_json_spelling() {
    let c = claims("alice");
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["role"], "planner");
    assert_eq!(v["weddings"]["wedding-a"], "edit");
    assert_eq!(v["weddings"]["wedding-v"], "view");
    assert!(
        v.get("nbf").is_none(),
        "absent optional claims are not serialized"
    );
}

// ---- the error body ---------------------------------------------------------------------------

#[tokio::test]
async fn errors_render_as_json_with_their_status() {
    let cases = [
        (
            AuthError::MissingToken,
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            AuthError::InvalidToken("x".into()),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            AuthError::Expired { exp: 1 },
            StatusCode::UNAUTHORIZED,
            "token_expired",
        ),
        (
            AuthError::NotYetValid { nbf: 1 },
            StatusCode::UNAUTHORIZED,
            "token_not_yet_valid",
        ),
        (
            AuthError::Revoked,
            StatusCode::UNAUTHORIZED,
            "token_revoked",
        ),
        (
            AuthError::Forbidden("x".into()),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            AuthError::Config("secret detail".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "auth_misconfigured",
        ),
    ];
    for (error, status, code) in cases {
        let unauthenticated = error.is_unauthenticated();
        let response = error.into_response();
        assert_eq!(response.status(), status);
        assert_eq!(
            response.headers().contains_key("www-authenticate"),
            unauthenticated
        );
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], code);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty());
        assert!(
            !message.contains("secret detail"),
            "server details stay in the log"
        );
    }
}
