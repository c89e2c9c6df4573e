//! Client mistakes get a clear 4xx problem+json, never a 5xx.

use reqwest::Method;
use serde_json::json;

use crate::backend_tests;

backend_tests! {
    async fn malformed_and_mistyped_bodies_are_client_errors(app) {
        let url = format!("{}/api/v1/auth/register", app.base);
        let send = |body: &'static str, content_type: Option<&'static str>| {
            let mut req = app.client.post(&url).body(body);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            req.send()
        };
        let cases = [
            ("{not json", Some("application/json"), 400),
            ("{\"email\": 5, \"username\": \"x\", \"password\": \"y\"}", Some("application/json"), 422),
            ("{\"email\": \"a@b.co\"}", Some("application/json"), 422),
            ("{\"email\": \"a@b.co\", \"username\": \"abc\", \"password\": \"correct horse 42\", \"is_admin\": true}", Some("application/json"), 422),
            ("{\"email\": \"a@b.co\", \"username\": \"abc\", \"password\": \"correct horse 42\"}", None, 415),
            ("{\"email\": \"a@b.co\", \"username\": \"abc\", \"password\": \"correct horse 42\"}", Some("text/plain"), 415),
            ("[]", Some("application/json"), 422),
            ("", Some("application/json"), 400),
        ];
        for (body, ct, expected) in cases {
            let res = send(body, ct).await.unwrap();
            let status = res.status().as_u16();
            let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
            let problem: serde_json::Value = res.json().await.unwrap();
            assert_eq!(status, expected, "{body:?} with {ct:?}: {problem}");
            assert_eq!(content_type, "application/problem+json");
            assert_eq!(problem["status"], expected);
            assert!(!problem["detail"].as_str().unwrap().is_empty());
        }
    }

    async fn invalid_fields_are_listed_one_by_one(app) {
        let res = app.post("/api/v1/auth/register", None,
            json!({"email": "not-an-email", "username": "a b", "password": "weak"})).await;
        res.assert(422);
        let mut fields = res.field_errors();
        fields.sort();
        assert_eq!(fields, vec!["email", "password", "username"]);
        let long = app.post("/api/v1/auth/register", None,
            json!({"email": "ok@example.com", "username": "okname", "password": "p".repeat(129) + "1"})).await;
        long.assert(422);
        assert_eq!(long.field_errors(), vec!["password"]);
    }

    async fn an_oversized_body_is_413(app) {
        let big = "x".repeat(2 * 1024 * 1024);
        let res = app.post("/api/v1/auth/register", None, json!({"email": big, "username": "u", "password": "p"})).await;
        res.assert(413);
    }

    async fn sql_and_html_payloads_are_stored_verbatim_and_returned_as_json(app) {
        let (_, token) = app.user_with_role("payload", "user").await;
        let sql = "Robert'); DROP TABLE users; --";
        let html = "<script>alert('x')</script> & <b>bold</b>";
        let res = app.request(Method::PATCH, "/api/v1/users/me", Some(&token),
            Some(json!({"display_name": sql, "bio": html}))).await;
        res.assert(200);
        assert_eq!(res.headers["content-type"], "application/json");
        assert_eq!(res.headers["x-content-type-options"], "nosniff");
        let public = app.get("/api/v1/users/payload", None).await;
        assert_eq!(public.body["display_name"], sql);
        assert_eq!(public.body["bio"], html);
        // The users table survived.
        app.login("payload", PASSWORD).await.assert(200);
        let search = app.get(&format!("/api/v1/admin/users?q={}", "%27%20OR%201%3D1%20--"), Some(&app.admin_token().await)).await;
        search.assert(200);
        assert_eq!(search.body["items"].as_array().unwrap().len(), 0);
    }

    async fn bad_paths_and_query_strings_are_client_errors(app) {
        let admin = app.admin_token().await;
        app.post("/api/v1/admin/users/not-a-uuid/approve", Some(&admin), json!({})).await.assert(400);
        app.get("/api/v1/admin/users?limit=abc", Some(&admin)).await.assert(400);
        app.get("/api/v1/admin/users?limit=1000", Some(&admin)).await.assert(422);
        app.get("/api/v1/admin/users?role=emperor", Some(&admin)).await.assert(400);
        app.get("/api/v1/admin/users?cursor=garbage", Some(&admin)).await.assert(422);
        app.get("/api/v1/no/such/route", None).await.assert(404);
        app.request(Method::PUT, "/api/v1/auth/login", None, Some(json!({}))).await.assert(405);
    }
}
