//! Every account flow.

use serde_json::json;

use crate::backend_tests;

backend_tests! {
    async fn a_user_registers_and_signs_in_with_email_or_username(app) {
        let user = app.register("amina", "user").await;
        assert_eq!(user["role"], "user");
        assert_eq!(user["status"], "active");
        assert!(user.get("password_hash").is_none());

        for login in ["amina", "AMINA@example.com"] {
            let res = app.login(login, PASSWORD).await;
            res.assert(200);
            assert_eq!(res.body["token_type"], "Bearer");
            assert_eq!(res.body["expires_in"], 900);
            let token = res.body["access_token"].as_str().unwrap();
            let me = app.get("/api/v1/auth/me", Some(token)).await;
            me.assert(200);
            assert_eq!(me.body["username"], "amina");
        }
        let wrong = app.login("amina", "not the password 1").await;
        wrong.assert(401);
        let unknown = app.login("nobody", PASSWORD).await;
        unknown.assert(401);
        assert_eq!(wrong.body["detail"], unknown.body["detail"], "no hint whether the account exists");
    }

    async fn duplicate_email_or_username_is_a_conflict(app) {
        app.register("baraka", "user").await;
        let same_email = app.post("/api/v1/auth/register", None,
            json!({"email": "BARAKA@example.com", "username": "other", "password": PASSWORD})).await;
        same_email.assert(409);
        assert!(same_email.body["detail"].as_str().unwrap().contains("email"));
        let same_name = app.post("/api/v1/auth/register", None,
            json!({"email": "x@example.com", "username": "Baraka", "password": PASSWORD})).await;
        same_name.assert(409);
        assert!(same_name.body["detail"].as_str().unwrap().contains("username"));
    }

    async fn nobody_can_register_as_admin(app) {
        let res = app.post("/api/v1/auth/register", None,
            json!({"email": "eve@example.com", "username": "eve", "password": PASSWORD, "role": "admin"})).await;
        res.assert(422);
        app.login("eve", PASSWORD).await.assert(401);
    }

    async fn a_fact_checker_waits_for_approval(app) {
        let fc = app.register("checker", "fact_checker").await;
        assert_eq!(fc["status"], "pending");
        let res = app.login("checker", PASSWORD).await;
        res.assert(403);
        assert!(res.body["detail"].as_str().unwrap().contains("pending"));

        let admin = app.admin_token().await;
        let id = fc["id"].as_str().unwrap();
        let approved = app.post(&format!("/api/v1/admin/users/{id}/approve"), Some(&admin), json!({})).await;
        approved.assert(200);
        assert_eq!(approved.body["status"], "active");
        let token = app.token("checker", PASSWORD).await;
        let me = app.get("/api/v1/auth/me", Some(&token)).await;
        assert_eq!(me.body["role"], "fact_checker");
        // Approving twice is an illegal transition.
        app.post(&format!("/api/v1/admin/users/{id}/approve"), Some(&admin), json!({})).await.assert(409);
    }

    async fn a_rejected_fact_checker_cannot_sign_in_until_activated(app) {
        let fc = app.register("maybe", "fact_checker").await;
        let admin = app.admin_token().await;
        let id = fc["id"].as_str().unwrap();
        app.post(&format!("/api/v1/admin/users/{id}/reject"), Some(&admin), json!({})).await.assert(200);
        app.login("maybe", PASSWORD).await.assert(403);
        app.post(&format!("/api/v1/admin/users/{id}/approve"), Some(&admin), json!({})).await.assert(409);
        app.post(&format!("/api/v1/admin/users/{id}/activate"), Some(&admin), json!({})).await.assert(200);
        app.login("maybe", PASSWORD).await.assert(200);
    }

    async fn refresh_rotates_and_reuse_revokes_the_family(app) {
        app.register("rota", "user").await;
        let first = app.login("rota", PASSWORD).await;
        let r1 = first.body["refresh_token"].as_str().unwrap().to_owned();

        let second = app.post("/api/v1/auth/refresh", None, json!({"refresh_token": r1})).await;
        second.assert(200);
        let r2 = second.body["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(r1, r2);
        assert!(second.body["access_token"].is_string());
        assert_eq!(second.body["user"]["username"], "rota");

        // Replaying the used token is theft: it fails and takes the whole family with it.
        let replay = app.post("/api/v1/auth/refresh", None, json!({"refresh_token": r1})).await;
        replay.assert(401);
        app.post("/api/v1/auth/refresh", None, json!({"refresh_token": r2})).await.assert(401);

        // Other sessions are untouched.
        let other = app.login("rota", PASSWORD).await;
        let r3 = other.body["refresh_token"].as_str().unwrap();
        app.post("/api/v1/auth/refresh", None, json!({"refresh_token": r3})).await.assert(200);

        app.post("/api/v1/auth/refresh", None, json!({"refresh_token": "made-up"})).await.assert(401);
    }

    async fn logout_revokes_the_refresh_token(app) {
        app.register("leaver", "user").await;
        let tokens = app.login("leaver", PASSWORD).await;
        let r = tokens.body["refresh_token"].as_str().unwrap();
        let res = app.post("/api/v1/auth/logout", None, json!({"refresh_token": r})).await;
        assert_eq!(res.status.as_u16(), 204);
        app.post("/api/v1/auth/refresh", None, json!({"refresh_token": r})).await.assert(401);
        // Idempotent.
        assert_eq!(app.post("/api/v1/auth/logout", None, json!({"refresh_token": r})).await.status.as_u16(), 204);
    }

    async fn a_suspended_user_is_locked_out_at_once(app) {
        let (user, token) = app.user_with_role("suspect", "user").await;
        let refresh = app.login("suspect", PASSWORD).await.body["refresh_token"].as_str().unwrap().to_owned();
        let admin = app.admin_token().await;
        let id = user["id"].as_str().unwrap();
        // The account is cached after the first request: the second one is a memory hit.
        let accounts = || app.state.cache.snapshot().namespaces.into_iter().find(|n| n.namespace == "accounts").unwrap();
        app.get("/api/v1/auth/me", Some(&token)).await.assert(200);
        let hits = accounts().memory_hits;
        app.get("/api/v1/auth/me", Some(&token)).await.assert(200);
        assert!(accounts().memory_hits > hits, "the second request reads the cached account");
        app.post(&format!("/api/v1/admin/users/{id}/suspend"), Some(&admin), json!({})).await.assert(200);

        let me = app.get("/api/v1/auth/me", Some(&token)).await;
        me.assert(403);
        assert!(me.body["detail"].as_str().unwrap().contains("suspended"));
        app.login("suspect", PASSWORD).await.assert(403);
        assert!(app.post("/api/v1/auth/refresh", None, json!({"refresh_token": refresh})).await.status.is_client_error());
        app.get("/api/v1/users/suspect", None).await.assert(404);

        app.post(&format!("/api/v1/admin/users/{id}/activate"), Some(&admin), json!({})).await.assert(200);
        app.get("/api/v1/auth/me", Some(&token)).await.assert(200);
        app.login("suspect", PASSWORD).await.assert(200);
    }

    async fn profile_changes_show_at_once_to_the_signed_in_user(app) {
        let (_, token) = app.user_with_role("amani", "user").await;
        assert_eq!(app.get("/api/v1/auth/me", Some(&token)).await.body["display_name"], "amani");
        app.request(reqwest::Method::PATCH, "/api/v1/users/me", Some(&token), Some(json!({"display_name": "Amani K."})))
            .await.assert(200);
        assert_eq!(app.get("/api/v1/auth/me", Some(&token)).await.body["display_name"], "Amani K.");
    }

    async fn changing_the_password_needs_the_current_one_and_signs_out_elsewhere(app) {
        let (_, token) = app.user_with_role("changer", "user").await;
        let refresh = app.login("changer", PASSWORD).await.body["refresh_token"].as_str().unwrap().to_owned();
        let wrong = app.post("/api/v1/users/me/password", Some(&token),
            json!({"current_password": "wrong password 1", "new_password": "brand new secret 9"})).await;
        wrong.assert(403);
        let weak = app.post("/api/v1/users/me/password", Some(&token),
            json!({"current_password": PASSWORD, "new_password": "short"})).await;
        weak.assert(422);
        assert_eq!(weak.field_errors(), vec!["new_password"]);
        let ok = app.post("/api/v1/users/me/password", Some(&token),
            json!({"current_password": PASSWORD, "new_password": "brand new secret 9"})).await;
        assert_eq!(ok.status.as_u16(), 204);
        app.login("changer", PASSWORD).await.assert(401);
        app.login("changer", "brand new secret 9").await.assert(200);
        app.post("/api/v1/auth/refresh", None, json!({"refresh_token": refresh})).await.assert(401);
    }

    async fn profiles_are_editable_and_public_ones_hide_private_fields(app) {
        let (_, token) = app.user_with_role("writer", "user").await;
        let res = app.request(reqwest::Method::PATCH, "/api/v1/users/me", Some(&token),
            Some(json!({"display_name": "Writer W.", "bio": "I check facts", "avatar_url": "https://img.example.com/w.png"}))).await;
        res.assert(200);
        assert_eq!(res.body["display_name"], "Writer W.");
        let bad = app.request(reqwest::Method::PATCH, "/api/v1/users/me", Some(&token),
            Some(json!({"avatar_url": "javascript:alert(1)", "display_name": ""}))).await;
        bad.assert(422);
        let mut fields = bad.field_errors();
        fields.sort();
        assert_eq!(fields, vec!["avatar_url", "display_name"]);

        let public = app.get("/api/v1/users/WRITER", None).await;
        public.assert(200);
        assert_eq!(public.body["bio"], "I check facts");
        assert!(public.body.get("email").is_none());
        assert!(public.body.get("id").is_none());
        app.get("/api/v1/users/nobody_here", None).await.assert(404);
        app.register("pendingfc", "fact_checker").await;
        app.get("/api/v1/users/pendingfc", None).await.assert(404);
    }

    async fn admins_page_through_users_without_gaps_or_duplicates(app) {
        for i in 0..7 {
            app.register(&format!("member{i}"), if i % 2 == 0 { "user" } else { "fact_checker" }).await;
        }
        let admin = app.admin_token().await;
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/api/v1/admin/users?limit=3&cursor={c}"),
                None => "/api/v1/admin/users?limit=3".to_owned(),
            };
            let page = app.get(&path, Some(&admin)).await;
            page.assert(200);
            for u in page.body["items"].as_array().unwrap() {
                seen.push(u["username"].as_str().unwrap().to_owned());
            }
            match page.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(seen.len(), 8, "7 members + the admin: {seen:?}");
        assert_eq!(unique.len(), 8);

        let pending = app.get("/api/v1/admin/users?role=fact_checker&status=pending", Some(&admin)).await;
        pending.assert(200);
        assert_eq!(pending.body["items"].as_array().unwrap().len(), 3);
        let search = app.get("/api/v1/admin/users?q=member3", Some(&admin)).await;
        assert_eq!(search.body["items"].as_array().unwrap().len(), 1);
        let none = app.get("/api/v1/admin/users?q=%25", Some(&admin)).await;
        assert_eq!(none.body["items"].as_array().unwrap().len(), 0, "% is matched literally");
    }

    async fn admins_create_and_delete_accounts_but_not_their_own(app) {
        let admin = app.admin_token().await;
        let created = app.post("/api/v1/admin/users", Some(&admin), json!({
            "email": "staff@example.com", "username": "staff", "password": PASSWORD, "role": "fact_checker"})).await;
        created.assert(201);
        assert_eq!(created.body["status"], "active");
        app.login("staff", PASSWORD).await.assert(200);

        let me = app.get("/api/v1/auth/me", Some(&admin)).await;
        let my_id = me.body["id"].as_str().unwrap();
        app.request(reqwest::Method::DELETE, &format!("/api/v1/admin/users/{my_id}"), Some(&admin), None).await.assert(409);
        app.post(&format!("/api/v1/admin/users/{my_id}/suspend"), Some(&admin), json!({})).await.assert(409);

        let id = created.body["id"].as_str().unwrap();
        let del = app.request(reqwest::Method::DELETE, &format!("/api/v1/admin/users/{id}"), Some(&admin), None).await;
        assert_eq!(del.status.as_u16(), 204);
        app.request(reqwest::Method::DELETE, &format!("/api/v1/admin/users/{id}"), Some(&admin), None).await.assert(404);
        app.login("staff", PASSWORD).await.assert(401);
    }
}
