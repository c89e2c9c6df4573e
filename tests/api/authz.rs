//! The authorization matrix: every protected endpoint x every kind of caller.

use hakikisha::accounts::{Role, tokens::TokenKeys};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::time::Duration;

use crate::backend_tests;

/// A validly signed token for an account that may not sign in (pending approval): proves the
/// server checks the account, not just the signature.
fn forged_token(user: &Value) -> String {
    let keys = TokenKeys::new(
        &SecretString::from(crate::helpers::JWT_SECRET),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let id = user["id"].as_str().unwrap().parse().unwrap();
    keys.issue_access(id, Role::FactChecker).unwrap()
}

backend_tests! {
    async fn every_protected_endpoint_checks_who_is_calling(app) {
        let (_, user) = app.user_with_role("plainuser", "user").await;
        let pending_user = app.register("waiting", "fact_checker").await;
        let pending = forged_token(&pending_user);
        let (_, checker) = app.user_with_role("checker", "fact_checker").await;
        let admin = app.admin_token().await;
        let nobody = uuid::Uuid::new_v4();
        let weak_password = json!({"current_password": PASSWORD, "new_password": "x"});
        let invalid_user = json!({"email": "bad", "username": "x", "password": "y", "role": "user"});

        // (method, path, body, [anonymous, user, pending fact-checker, fact-checker, admin])
        let matrix: Vec<(Method, String, Option<Value>, [u16; 5])> = vec![
            (Method::GET, "/api/v1/auth/me".into(), None, [401, 200, 403, 200, 200]),
            (Method::GET, "/api/v1/users/me".into(), None, [401, 200, 403, 200, 200]),
            (Method::PATCH, "/api/v1/users/me".into(), Some(json!({"bio": "hi"})), [401, 200, 403, 200, 200]),
            (Method::POST, "/api/v1/users/me/password".into(), Some(weak_password), [401, 422, 403, 422, 422]),
            (Method::GET, "/api/v1/admin/users".into(), None, [401, 403, 403, 403, 200]),
            (Method::POST, "/api/v1/admin/users".into(), Some(invalid_user), [401, 403, 403, 403, 422]),
            (Method::POST, format!("/api/v1/admin/users/{nobody}/approve"), Some(json!({})), [401, 403, 403, 403, 404]),
            (Method::POST, format!("/api/v1/admin/users/{nobody}/reject"), Some(json!({})), [401, 403, 403, 403, 404]),
            (Method::POST, format!("/api/v1/admin/users/{nobody}/suspend"), Some(json!({})), [401, 403, 403, 403, 404]),
            (Method::POST, format!("/api/v1/admin/users/{nobody}/activate"), Some(json!({})), [401, 403, 403, 403, 404]),
            (Method::DELETE, format!("/api/v1/admin/users/{nobody}"), None, [401, 403, 403, 403, 404]),
            // Public endpoints answer everyone.
            (Method::GET, "/api/v1/users/checker".into(), None, [200, 200, 200, 200, 200]),
            (Method::GET, "/api/health".into(), None, [200, 200, 200, 200, 200]),
        ];
        let callers: [Option<&str>; 5] = [None, Some(&user), Some(&pending), Some(&checker), Some(&admin)];
        let names = ["anonymous", "user", "pending fact_checker", "fact_checker", "admin"];
        let mut failures = Vec::new();
        for (method, path, body, expected) in &matrix {
            for (i, caller) in callers.iter().enumerate() {
                let res = app.request(method.clone(), path, *caller, body.clone()).await;
                if res.status.as_u16() != expected[i] {
                    failures.push(format!("{method} {path} as {}: expected {}, got {} {}", names[i], expected[i], res.status, res.body));
                }
                if res.status.is_client_error() && !res.is_problem() {
                    failures.push(format!("{method} {path} as {}: error is not problem+json", names[i]));
                }
                if res.status.as_u16() == 401 {
                    assert!(res.headers.contains_key("www-authenticate"), "401 must say how to authenticate");
                }
            }
        }
        assert!(failures.is_empty(), "authorization matrix mismatches:\n{}", failures.join("\n"));

        // Tokens signed with another key, expired or malformed are all 401.
        let foreign = TokenKeys::new(&SecretString::from("another-secret-another-secret-0000"), Duration::from_secs(60), Duration::from_secs(60))
            .issue_access(uuid::Uuid::new_v4(), Role::Admin).unwrap();
        app.get("/api/v1/admin/users", Some(&foreign)).await.assert(401);
        app.get("/api/v1/admin/users", Some("not.a.jwt")).await.assert(401);
    }
}
