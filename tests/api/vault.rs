//! The API-key vault: sealing, reveal, rotation, expiry, lists and stats, bulk changes, owner
//! isolation and bad input, on both backends.

use chrono::{DateTime, Duration, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{backend_tests, helpers::*};

pub const SECRET: &str = "sk_live_51HfakeSecretValue9f3a";
pub const PASSPHRASE: &str = "river stone 1987";

pub fn key_body(name: &str) -> Value {
    json!({
        "name": name, "service": "Stripe", "secret": SECRET, "passphrase": PASSPHRASE,
        "environment": "production", "tags": ["payments", "Billing"],
        "description": "Live payments key", "website_url": "https://stripe.com",
        "monthly_limit": 100000, "monthly_cost": 25.5
    })
}

pub async fn create_key(app: &TestApp, token: &str, body: Value) -> Value {
    let res = app.post("/api/v1/keys", Some(token), body).await;
    res.assert(201);
    res.body
}

pub fn uuid_of(public: &Value) -> Uuid {
    hakikisha::vault::parse_public_id(public.as_str().expect("id")).expect("ak_ id")
}

fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("timestamp"))
        .expect("rfc3339")
        .with_timezone(&Utc)
}

async fn reveal(app: &TestApp, token: &str, id: &str, passphrase: &str) -> Resp {
    app.post(
        &format!("/api/v1/keys/{id}/reveal"),
        Some(token),
        json!({"passphrase": passphrase}),
    )
    .await
}

/// Moves a key's rotation clock into the past (as if it had been rotated at `rotated_at`).
async fn backdate(app: &TestApp, id: Uuid, rotated_at: DateTime<Utc>, interval_days: i64) {
    const SQL: &str = "UPDATE api_keys SET secret_rotated_at = $1, expires_at = $2 WHERE id = $3";
    let expires = rotated_at + Duration::days(interval_days);
    hakikisha::db_write!(&app.db, "test.backdate", SQL, |pool| {
        sqlx::query(SQL)
            .bind(rotated_at)
            .bind(expires)
            .bind(id)
            .execute(pool)
            .await
            .map(drop)
    })
    .expect("backdate");
}

type SealColumns = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

async fn seal_columns(app: &TestApp, id: Uuid) -> SealColumns {
    const SQL: &str =
        "SELECT salt, nonce, ciphertext, passphrase_check FROM api_keys WHERE id = $1";
    hakikisha::db_write!(&app.db, "test.read_seal", SQL, |pool| {
        sqlx::query_as::<_, SealColumns>(SQL)
            .bind(id)
            .fetch_one(pool)
            .await
    })
    .expect("seal columns")
}

async fn write_seal(app: &TestApp, id: Uuid, c: &SealColumns) {
    const SQL: &str = "UPDATE api_keys SET salt = $1, nonce = $2, ciphertext = $3, passphrase_check = $4 WHERE id = $5";
    hakikisha::db_write!(&app.db, "test.write_seal", SQL, |pool| {
        sqlx::query(SQL)
            .bind(&c.0)
            .bind(&c.1)
            .bind(&c.2)
            .bind(&c.3)
            .bind(id)
            .execute(pool)
            .await
            .map(drop)
    })
    .expect("write seal");
}

async fn key_count(app: &TestApp, token: &str) -> usize {
    let res = app.get("/api/v1/keys?limit=100", Some(token)).await;
    res.assert(200);
    res.body["items"].as_array().expect("items").len()
}

backend_tests! {
    async fn a_key_is_stored_sealed_and_only_reveal_returns_the_secret(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let key = create_key(&app, &token, key_body("Stripe live")).await;
        let id = key["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("ak_") && id.len() == 35, "{id}");
        assert_eq!(key["preview"], "****9f3a");
        assert_eq!(key["status"], "active");
        assert_eq!(key["environment"], "production");
        assert_eq!(key["rotation_interval_days"], 90);
        assert_eq!(key["tags"], json!(["payments", "billing"]));
        assert_eq!(ts(&key["expires_at"]) - ts(&key["secret_rotated_at"]), Duration::days(90));
        assert!(key.get("secret").is_none() && key.get("passphrase").is_none());
        assert!(!key.to_string().contains(SECRET));

        let one = app.get(&format!("/api/v1/keys/{id}"), Some(&token)).await;
        one.assert(200);
        assert!(!one.body.to_string().contains(SECRET));
        let list = app.get("/api/v1/keys", Some(&token)).await;
        list.assert(200);
        assert_eq!(list.body["items"][0]["id"], id.as_str());
        assert!(list.body["next_cursor"].is_null());
        assert!(!list.body.to_string().contains(SECRET));

        let revealed = reveal(&app, &token, &id, PASSPHRASE).await;
        revealed.assert(200);
        assert_eq!(revealed.body["secret"], SECRET);
        assert_eq!(revealed.headers["cache-control"], "no-store");

        // At rest: neither the secret nor the passphrase is in the record.
        let (salt, nonce, ciphertext, check) = seal_columns(&app, uuid_of(&key["id"])).await;
        assert_eq!((salt.len(), nonce.len(), check.len()), (16, 12, 32));
        assert_eq!(ciphertext.len(), SECRET.len() + 16);
        assert!(!ciphertext.windows(8).any(|w| w == &SECRET.as_bytes()[..8]));
    }

    async fn a_wrong_passphrase_is_a_403_without_a_hint(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let key = create_key(&app, &token, key_body("k")).await;
        let id = key["id"].as_str().unwrap();
        let wrong = reveal(&app, &token, id, "river stone 1988").await;
        wrong.assert(403);
        assert!(!wrong.body.to_string().contains(SECRET));
        let detail = wrong.body["detail"].as_str().unwrap().to_lowercase();
        assert!(!detail.contains("length") && !detail.contains("character"), "{detail}");
        // Still opens with the right one afterwards.
        reveal(&app, &token, id, PASSPHRASE).await.assert(200);
    }

    async fn tampered_records_fail_their_integrity_check_and_never_yield_garbage(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let is_integrity = |r: &Resp| {
            r.assert(500);
            assert_eq!(r.body["type"], "/problems/integrity");
            assert_eq!(r.body["detail"], "the stored secret failed its integrity check");
            assert!(r.body.get("secret").is_none());
        };

        // A flipped ciphertext bit.
        let key = create_key(&app, &token, key_body("a")).await;
        let id = uuid_of(&key["id"]);
        let mut cols = seal_columns(&app, id).await;
        cols.2[3] ^= 0x01;
        write_seal(&app, id, &cols).await;
        is_integrity(&reveal(&app, &token, key["id"].as_str().unwrap(), PASSPHRASE).await);
        // Rotation refuses it too (it must prove the current secret opens).
        let rot = app.post(&format!("/api/v1/keys/{}/rotate", key["id"].as_str().unwrap()), Some(&token),
            json!({"secret": "new-secret-value-0001", "passphrase": PASSPHRASE})).await;
        is_integrity(&rot);

        // A changed nonce.
        let key = create_key(&app, &token, key_body("b")).await;
        let id = uuid_of(&key["id"]);
        let mut cols = seal_columns(&app, id).await;
        cols.1[0] ^= 0x80;
        write_seal(&app, id, &cols).await;
        is_integrity(&reveal(&app, &token, key["id"].as_str().unwrap(), PASSPHRASE).await);

        // Another key's record copied over this one: the associated data names the other key.
        let donor = create_key(&app, &token, key_body("donor")).await;
        let target = create_key(&app, &token, json!({"name": "target", "service": "s", "secret": "other secret value", "passphrase": "another passphrase"})).await;
        let cols = seal_columns(&app, uuid_of(&donor["id"])).await;
        write_seal(&app, uuid_of(&target["id"]), &cols).await;
        is_integrity(&reveal(&app, &token, target["id"].as_str().unwrap(), PASSPHRASE).await);

        // A record moved to another owner: the associated data names the first owner.
        let (_, other) = app.user_with_role("baraka", "user").await;
        let (other_id,): (Uuid,) = {
            const SQL: &str = "SELECT id FROM users WHERE username = $1";
            hakikisha::db_write!(&app.db, "test.user", SQL, |pool| {
                sqlx::query_as(SQL).bind("baraka").fetch_one(pool).await
            }).unwrap()
        };
        const MOVE: &str = "UPDATE api_keys SET owner_id = $1 WHERE id = $2";
        hakikisha::db_write!(&app.db, "test.move", MOVE, |pool| {
            sqlx::query(MOVE).bind(other_id).bind(uuid_of(&donor["id"])).execute(pool).await.map(drop)
        }).unwrap();
        is_integrity(&reveal(&app, &other, donor["id"].as_str().unwrap(), PASSPHRASE).await);
    }

    async fn rotation_replaces_the_secret_restarts_the_clock_and_can_change_the_passphrase(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let key = create_key(&app, &token, json!({"name": "k", "service": "s", "secret": SECRET, "passphrase": PASSPHRASE, "rotation_interval_days": 30})).await;
        let id = key["id"].as_str().unwrap().to_owned();
        let long_ago = vault_now() - Duration::days(45);
        backdate(&app, uuid_of(&key["id"]), long_ago, 30).await;
        let stale = app.get(&format!("/api/v1/keys/{id}"), Some(&token)).await;
        assert_eq!(stale.body["status"], "expired");

        let path = format!("/api/v1/keys/{id}/rotate");
        // The current passphrase must be proven; nothing changes otherwise.
        app.post(&path, Some(&token), json!({"secret": "sk_live_new_value_0000abcd", "passphrase": "not the passphrase"})).await.assert(403);
        assert_eq!(reveal(&app, &token, &id, PASSPHRASE).await.body["secret"], SECRET);

        let stale_nonce = seal_columns(&app, uuid_of(&key["id"])).await.1;
        let before = vault_now();
        let rotated = app.post(&path, Some(&token), json!({
            "secret": "sk_live_new_value_0000abcd", "passphrase": PASSPHRASE, "new_passphrase": "a brand new phrase"
        })).await;
        rotated.assert(200);
        assert!(!rotated.body.to_string().contains("sk_live_new_value"));
        assert_eq!(rotated.body["status"], "active");
        assert_eq!(rotated.body["preview"], "****abcd");
        let rotated_at = ts(&rotated.body["secret_rotated_at"]);
        assert!(rotated_at >= before, "the clock restarted");
        assert_eq!(ts(&rotated.body["expires_at"]) - rotated_at, Duration::days(30));

        reveal(&app, &token, &id, PASSPHRASE).await.assert(403);
        let now_open = reveal(&app, &token, &id, "a brand new phrase").await;
        now_open.assert(200);
        assert_eq!(now_open.body["secret"], "sk_live_new_value_0000abcd");

        // A rotation that read the record before this one cannot overwrite it (compare-and-swap
        // on the nonce): the API answers 409 for it.
        const OWNER: &str = "SELECT owner_id FROM api_keys WHERE id = $1";
        let (owner_id,): (Uuid,) = hakikisha::db_write!(&app.db, "test.owner", OWNER, |pool| {
            sqlx::query_as(OWNER).bind(uuid_of(&key["id"])).fetch_one(pool).await
        }).unwrap();
        let sealed = hakikisha::vault::crypto::seal(
            &"late-writer-secret".to_owned().into(), &"late passphrase".to_owned().into(),
            hakikisha::vault::crypto::KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 },
            owner_id, uuid_of(&key["id"]),
        ).unwrap();
        let applied = hakikisha::vault::store::rotate(&app.db, owner_id, uuid_of(&key["id"]),
            &stale_nonce, &sealed, "****", vault_now()).await.unwrap();
        assert!(!applied, "a stale rotation is refused");
        assert_eq!(reveal(&app, &token, &id, "a brand new phrase").await.body["secret"], "sk_live_new_value_0000abcd");

        // Without new_passphrase the current one keeps working.
        app.post(&path, Some(&token), json!({"secret": "third-secret-value-zzzz", "passphrase": "a brand new phrase"})).await.assert(200);
        assert_eq!(reveal(&app, &token, &id, "a brand new phrase").await.body["secret"], "third-secret-value-zzzz");
    }

    async fn editing_metadata_does_not_restart_the_rotation_clock(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let key = create_key(&app, &token, key_body("k")).await;
        let id = key["id"].as_str().unwrap();
        let rotated = vault_now() - Duration::days(10);
        backdate(&app, uuid_of(&key["id"]), rotated, 90).await;
        let res = app.request(Method::PATCH, &format!("/api/v1/keys/{id}"), Some(&token), Some(json!({
            "name": "Renamed", "environment": "staging", "tags": ["x"], "description": "", "rotation_interval_days": 30
        }))).await;
        res.assert(200);
        assert_eq!(res.body["name"], "Renamed");
        assert_eq!(res.body["environment"], "staging");
        assert_eq!(res.body["tags"], json!(["x"]));
        assert!(res.body["description"].is_null());
        assert_eq!(ts(&res.body["secret_rotated_at"]), rotated);
        assert_eq!(ts(&res.body["expires_at"]), rotated + Duration::days(30));
        // The secret is untouched.
        assert_eq!(reveal(&app, &token, id, PASSPHRASE).await.body["secret"], SECRET);
        // Shortening the interval below the key's age makes it read as expired at once.
        let res = app.request(Method::PATCH, &format!("/api/v1/keys/{id}"), Some(&token), Some(json!({"rotation_interval_days": 5}))).await;
        assert_eq!(res.body["status"], "expired");
    }

    async fn keys_expire_exactly_at_their_due_date_and_owners_are_notified(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let key = create_key(&app, &token, json!({"name": "soon", "service": "OpenAI", "secret": SECRET, "passphrase": PASSPHRASE, "rotation_interval_days": 1})).await;
        let due = ts(&key["expires_at"]);
        let just_before = due - Duration::microseconds(1);
        assert_eq!(hakikisha::vault::expire_due_keys(&app.state, just_before).await.unwrap(), 0);
        assert_eq!(app.get(&format!("/api/v1/keys/{}", key["id"].as_str().unwrap()), Some(&token)).await.body["status"], "active");
        assert_eq!(hakikisha::vault::expire_due_keys(&app.state, due).await.unwrap(), 1);
        assert_eq!(hakikisha::vault::expire_due_keys(&app.state, due).await.unwrap(), 0, "flipped once");
        let read = app.get(&format!("/api/v1/keys/{}", key["id"].as_str().unwrap()), Some(&token)).await;
        assert_eq!(read.body["status"], "expired");
        let notes = app.get("/api/v1/notifications", Some(&token)).await;
        notes.assert(200);
        assert_eq!(notes.body["items"][0]["kind"], "key_expired");
        assert!(notes.body["items"][0]["body"].as_str().unwrap().contains("soon"));
        assert!(!notes.body.to_string().contains(SECRET));

        // Past its date but before any job ran: reads and filters already say expired.
        let other = create_key(&app, &token, key_body("stale")).await;
        backdate(&app, uuid_of(&other["id"]), vault_now() - Duration::days(91), 90).await;
        let expired = app.get("/api/v1/keys?status=expired", Some(&token)).await;
        let names: Vec<&str> = expired.body["items"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["stale", "soon"]);
        let active = app.get("/api/v1/keys?status=active", Some(&token)).await;
        assert_eq!(active.body["items"].as_array().unwrap().len(), 0);
    }

    async fn lists_filter_and_page_with_cursors(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        for (name, service, env, tags) in [
            ("Stripe live", "Stripe", "production", json!(["payments"])),
            ("Stripe test", "Stripe", "development", json!(["payments", "test"])),
            ("OpenAI", "OpenAI", "production", json!(["ai"])),
            ("Twilio 100%", "Twilio", "staging", json!([])),
            ("Maps", "Google", "production", json!(["geo"])),
        ] {
            create_key(&app, &token, json!({"name": name, "service": service, "environment": env, "tags": tags,
                "secret": SECRET, "passphrase": PASSPHRASE})).await;
        }
        let names = |r: &Resp| -> Vec<String> {
            r.assert(200);
            r.body["items"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(names(&app.get("/api/v1/keys?environment=production", Some(&token)).await), ["Maps", "OpenAI", "Stripe live"]);
        assert_eq!(names(&app.get("/api/v1/keys?service=stripe", Some(&token)).await), ["Stripe test", "Stripe live"]);
        assert_eq!(names(&app.get("/api/v1/keys?tag=payments", Some(&token)).await), ["Stripe test", "Stripe live"]);
        assert_eq!(names(&app.get("/api/v1/keys?tag=payments&environment=development", Some(&token)).await), ["Stripe test"]);
        assert_eq!(names(&app.get("/api/v1/keys?search=STRIPE", Some(&token)).await), ["Stripe test", "Stripe live"]);
        // LIKE wildcards in the search are literal.
        assert_eq!(names(&app.get("/api/v1/keys?search=100%25", Some(&token)).await), ["Twilio 100%"]);
        assert_eq!(names(&app.get("/api/v1/keys?search=_", Some(&token)).await), Vec::<String>::new());
        assert_eq!(names(&app.get("/api/v1/keys?status=revoked", Some(&token)).await), Vec::<String>::new());

        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..5 {
            let path = match &cursor {
                Some(c) => format!("/api/v1/keys?limit=2&cursor={c}"),
                None => "/api/v1/keys?limit=2".into(),
            };
            let page = app.get(&path, Some(&token)).await;
            seen.extend(names(&page));
            match page.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, ["Maps", "Twilio 100%", "OpenAI", "Stripe test", "Stripe live"]);

        app.get("/api/v1/keys?environment=moon", Some(&token)).await.assert(422);
        app.get("/api/v1/keys?status=lost", Some(&token)).await.assert(422);
        app.get("/api/v1/keys?limit=101", Some(&token)).await.assert(422);
        app.get("/api/v1/keys?cursor=garbage", Some(&token)).await.assert(422);
    }

    async fn stats_count_keys_and_list_those_falling_due_within_a_week(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        create_key(&app, &token, key_body("a")).await;
        let soon = create_key(&app, &token, json!({"name": "soon", "service": "OpenAI", "environment": "staging",
            "secret": SECRET, "passphrase": PASSPHRASE, "rotation_interval_days": 5})).await;
        let stale = create_key(&app, &token, json!({"name": "stale", "service": "OpenAI",
            "secret": SECRET, "passphrase": PASSPHRASE})).await;
        backdate(&app, uuid_of(&stale["id"]), vault_now() - Duration::days(100), 90).await;
        let revoked = create_key(&app, &token, key_body("gone")).await;
        app.request(Method::PATCH, &format!("/api/v1/keys/{}", revoked["id"].as_str().unwrap()), Some(&token),
            Some(json!({"status": "revoked"}))).await.assert(200);

        let stats = app.get("/api/v1/keys/stats", Some(&token)).await;
        stats.assert(200);
        let b = &stats.body;
        assert_eq!(b["total"], 4);
        let counts = |field: &str| -> Vec<(String, i64)> {
            b[field].as_array().unwrap().iter().map(|c| (c["label"].as_str().unwrap().to_owned(), c["count"].as_i64().unwrap())).collect()
        };
        assert_eq!(counts("by_status"), [("active".to_owned(), 2), ("expired".to_owned(), 1), ("revoked".to_owned(), 1)]);
        assert_eq!(counts("by_environment"), [("development".to_owned(), 1), ("production".to_owned(), 2), ("staging".to_owned(), 1)]);
        assert_eq!(counts("by_service"), [("OpenAI".to_owned(), 2), ("Stripe".to_owned(), 2)]);
        assert_eq!(b["expiring_within_7_days"], 1);
        assert_eq!(b["expiring_soon"][0]["id"], soon["id"]);
    }

    async fn bulk_changes_are_bounded_and_all_or_nothing(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let (_, other) = app.user_with_role("baraka", "user").await;
        let mut mine = Vec::new();
        for i in 0..3 {
            mine.push(create_key(&app, &token, key_body(&format!("k{i}"))).await["id"].as_str().unwrap().to_owned());
        }
        let foreign = create_key(&app, &other, key_body("theirs")).await["id"].as_str().unwrap().to_owned();

        let fifty_one: Vec<String> = (0..51).map(|_| hakikisha::vault::public_id(Uuid::new_v4())).collect();
        let res = app.post("/api/v1/keys/bulk/delete", Some(&token), json!({"ids": fifty_one})).await;
        res.assert(422);
        assert_eq!(res.field_errors(), ["ids"]);
        app.post("/api/v1/keys/bulk/delete", Some(&token), json!({"ids": []})).await.assert(422);
        let hundred_one: Vec<String> = (0..101).map(|_| hakikisha::vault::public_id(Uuid::new_v4())).collect();
        app.post("/api/v1/keys/bulk/status", Some(&token), json!({"ids": hundred_one, "status": "inactive"})).await.assert(422);
        app.post("/api/v1/keys/bulk/status", Some(&token), json!({"ids": [mine[0]], "status": "expired"})).await.assert(422);

        // One foreign id: 404 and nothing deleted or changed.
        let mut with_foreign = mine.clone();
        with_foreign.push(foreign.clone());
        app.post("/api/v1/keys/bulk/delete", Some(&token), json!({"ids": with_foreign})).await.assert(404);
        assert_eq!(key_count(&app, &token).await, 3);
        assert_eq!(key_count(&app, &other).await, 1);
        let mut with_foreign = vec![foreign.clone()];
        with_foreign.extend(mine.clone());
        app.post("/api/v1/keys/bulk/status", Some(&token), json!({"ids": with_foreign, "status": "revoked"})).await.assert(404);
        assert_eq!(app.get("/api/v1/keys?status=active", Some(&token)).await.body["items"].as_array().unwrap().len(), 3);
        assert_eq!(app.get(&format!("/api/v1/keys/{foreign}"), Some(&other)).await.body["status"], "active");

        let res = app.post("/api/v1/keys/bulk/status", Some(&token), json!({"ids": [mine[0], mine[1], mine[0]], "status": "inactive"})).await;
        res.assert(200);
        assert_eq!(res.body["affected"], 2);
        assert_eq!(app.get("/api/v1/keys?status=inactive", Some(&token)).await.body["items"].as_array().unwrap().len(), 2);
        let res = app.post("/api/v1/keys/bulk/delete", Some(&token), json!({"ids": [mine[0], mine[2]]})).await;
        res.assert(200);
        assert_eq!(res.body["affected"], 2);
        assert_eq!(key_count(&app, &token).await, 1);
        app.request(Method::DELETE, &format!("/api/v1/keys/{}", mine[1]), Some(&token), None).await.assert(204);
        app.request(Method::DELETE, &format!("/api/v1/keys/{}", mine[1]), Some(&token), None).await.assert(404);
        assert_eq!(key_count(&app, &token).await, 0);
    }

    async fn another_users_key_is_not_found_on_every_endpoint(app) {
        let (_, owner) = app.user_with_role("amina", "user").await;
        let (_, intruder) = app.user_with_role("baraka", "user").await;
        let key = create_key(&app, &owner, key_body("mine")).await;
        let id = key["id"].as_str().unwrap().to_owned();
        app.post("/api/v1/usage", Some(&owner), json!({"key_id": id, "endpoint": "/v1/charges", "method": "POST", "status_code": 200, "latency_ms": 12})).await.assert(201);

        let cases: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, format!("/api/v1/keys/{id}"), None),
            (Method::PATCH, format!("/api/v1/keys/{id}"), Some(json!({"name": "stolen"}))),
            (Method::DELETE, format!("/api/v1/keys/{id}"), None),
            (Method::POST, format!("/api/v1/keys/{id}/reveal"), Some(json!({"passphrase": PASSPHRASE}))),
            (Method::POST, format!("/api/v1/keys/{id}/rotate"), Some(json!({"secret": "x-new-secret-x", "passphrase": PASSPHRASE}))),
            (Method::POST, "/api/v1/keys/bulk/delete".into(), Some(json!({"ids": [id]}))),
            (Method::POST, "/api/v1/keys/bulk/status".into(), Some(json!({"ids": [id], "status": "revoked"}))),
            (Method::POST, "/api/v1/usage".into(), Some(json!({"key_id": id, "endpoint": "/x", "method": "GET", "status_code": 200, "latency_ms": 1}))),
            (Method::GET, format!("/api/v1/usage/keys/{id}"), None),
        ];
        for (method, path, body) in cases {
            let res = app.request(method.clone(), &path, Some(&intruder), body).await;
            assert_eq!(res.status.as_u16(), 404, "{method} {path}: {}", res.body);
            assert!(res.is_problem());
            assert!(!res.body.to_string().contains(SECRET));
        }
        // Lists and aggregates do not include it either.
        assert_eq!(key_count(&app, &intruder).await, 0);
        assert_eq!(app.get("/api/v1/keys/stats", Some(&intruder)).await.body["total"], 0);
        assert_eq!(app.get("/api/v1/usage/stats", Some(&intruder)).await.body["windows"][2]["requests"], 0);
        let daily = app.get("/api/v1/usage/daily?days=1", Some(&intruder)).await;
        assert_eq!(daily.body["days"][0]["requests"], 0);
        let rt = app.get("/api/v1/usage/realtime", Some(&intruder)).await;
        assert!(rt.body["minutes"].as_array().unwrap().iter().all(|m| m["requests"] == 0));

        // And the owner's key is intact.
        let mine = app.get(&format!("/api/v1/keys/{id}"), Some(&owner)).await;
        assert_eq!(mine.body["name"], "mine");
        assert_eq!(mine.body["status"], "active");
        assert_eq!(reveal(&app, &owner, &id, PASSPHRASE).await.body["secret"], SECRET);
        // Unauthenticated: 401.
        app.get("/api/v1/keys", None).await.assert(401);
        app.post(&format!("/api/v1/keys/{id}/reveal"), None, json!({"passphrase": PASSPHRASE})).await.assert(401);
    }

    async fn bad_vault_input_is_a_4xx_problem(app) {
        let (_, token) = app.user_with_role("amina", "user").await;
        let base = || json!({"name": "k", "service": "s", "secret": SECRET, "passphrase": PASSPHRASE});
        let with = |field: &str, value: Value| {
            let mut b = base();
            b[field] = value;
            b
        };
        let without = |field: &str| {
            let mut b = base();
            b.as_object_mut().unwrap().remove(field);
            b
        };
        let cases: Vec<(Value, Option<&str>)> = vec![
            (with("environment", json!("moon")), Some("environment")),
            (with("rotation_interval_days", json!(0)), Some("rotation_interval_days")),
            (with("rotation_interval_days", json!(366)), Some("rotation_interval_days")),
            (with("secret", json!("")), Some("secret")),
            (with("secret", json!("   ")), Some("secret")),
            (with("secret", json!("x".repeat(4097))), Some("secret")),
            (with("passphrase", json!("short")), Some("passphrase")),
            (with("name", json!("n".repeat(101))), Some("name")),
            (with("name", json!("")), Some("name")),
            (with("service", json!("s".repeat(101))), Some("service")),
            (with("description", json!("d".repeat(1001))), Some("description")),
            (with("website_url", json!("javascript:alert(1)")), Some("website_url")),
            (with("tags", json!(["has space"])), Some("tags")),
            (with("tags", json!((0..21).map(|i| format!("t{i}")).collect::<Vec<_>>())), Some("tags")),
            (with("monthly_limit", json!(-1)), Some("monthly_limit")),
            (with("monthly_cost", json!(-0.5)), Some("monthly_cost")),
            (without("passphrase"), None),
            (without("secret"), None),
            (with("rotation_interval_days", json!("ninety")), None),
            (with("owner_id", json!("someone")), None),
            // Mistyped secrets are refused without being quoted back.
            (with("secret", json!(918_273_645_501_i64)), None),
            (with("passphrase", json!(7_766_554_433_i64)), None),
            (with("secret", json!(true)), None),
        ];
        for (body, field) in cases {
            let res = app.post("/api/v1/keys", Some(&token), body.clone()).await;
            assert_eq!(res.status.as_u16(), 422, "{body}: {}", res.body);
            assert!(res.is_problem(), "{}", res.body);
            if let Some(field) = field {
                assert_eq!(res.field_errors(), [field], "{body}");
            }
            assert!(!res.body.to_string().contains(SECRET), "the secret is never echoed");
            assert!(!res.body.to_string().contains(PASSPHRASE), "the passphrase is never echoed");
            for mistyped in ["918273645501", "7766554433"] {
                assert!(!res.body.to_string().contains(mistyped), "{}", res.body);
            }
        }
        assert_eq!(key_count(&app, &token).await, 0);

        let key = create_key(&app, &token, base()).await;
        let id = key["id"].as_str().unwrap();
        let key_path = format!("/api/v1/keys/{id}");
        let patch = |body: Value| app.request(Method::PATCH, &key_path, Some(&token), Some(body));
        patch(json!({"rotation_interval_days": 0})).await.assert(422);
        patch(json!({"status": "expired"})).await.assert(422);
        patch(json!({"environment": "prod"})).await.assert(422);
        app.post(&format!("/api/v1/keys/{id}/reveal"), Some(&token), json!({})).await.assert(422);
        app.post(&format!("/api/v1/keys/{id}/rotate"), Some(&token), json!({"secret": "", "passphrase": PASSPHRASE})).await.assert(422);
        app.post(&format!("/api/v1/keys/{id}/rotate"), Some(&token), json!({"secret": "fine-secret", "passphrase": PASSPHRASE, "new_passphrase": "short"})).await.assert(422);
        app.post(&format!("/api/v1/keys/{id}/rotate"), Some(&token), json!({"secret": "fine-secret"})).await.assert(422);
        let res = app.post(&format!("/api/v1/keys/{id}/rotate"), Some(&token), json!({"secret": "fine-secret", "passphrase": PASSPHRASE, "new_passphrase": 123_456_789_012_i64})).await;
        res.assert(422);
        assert!(!res.body.to_string().contains("123456789012"));
        let res = app.post(&format!("/api/v1/keys/{id}/reveal"), Some(&token), json!({"passphrase": 555_444_333_222_i64})).await;
        res.assert(422);
        assert!(!res.body.to_string().contains("555444333222"));
        // Malformed ids are simply not found.
        app.get("/api/v1/keys/not-a-key", Some(&token)).await.assert(404);
        app.get(&format!("/api/v1/keys/{}", Uuid::new_v4()), Some(&token)).await.assert(404);
        // The unchanged key still opens.
        assert_eq!(reveal(&app, &token, id, PASSPHRASE).await.body["secret"], SECRET);
    }
}

fn vault_now() -> DateTime<Utc> {
    hakikisha::vault::now()
}
